"""Static checks of the Dockerfile (no Docker engine runs here): hadolint, entrypoint, user, build context."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HADOLINT = Path(sys.executable).with_name("hadolint")


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped, numbered by stage."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    result = []
    stage = -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append(Instruction(stage, keyword.upper(), " ".join(arguments.split())))
    return result


def final_stage() -> list[Instruction]:
    steps = instructions()
    return [i for i in steps if i.stage == steps[-1].stage]


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rules: patterns in order, the last that matches wins, `!` re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        # A pattern that names a directory also covers everything below it.
        if re.fullmatch(f"{regex}(/.*)?", path):
            excluded = not negate
    return excluded


@pytest.mark.slow
def test_hadolint_finds_nothing():
    done = subprocess.run([str(HADOLINT), "--no-color", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_build_is_multi_stage_on_slim_python_311():
    bases = [i.arguments for i in instructions() if i.keyword == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        assert re.match(r"python:3\.11-slim(-\w+)?(\s|$)", base), base


def test_wheel_is_built_in_the_first_stage():
    runs = [i.arguments for i in instructions() if i.keyword == "RUN" and i.stage == 0]
    assert any("pip wheel" in run for run in runs)


def test_final_stage_only_copies_the_built_environment():
    # No RUN in the final stage: nothing is compiled or installed there, so no build tool can be left behind.
    keywords = {i.keyword for i in final_stage()}
    assert "RUN" not in keywords
    for step in final_stage():
        if step.keyword == "COPY":
            assert step.arguments.startswith("--from="), step.arguments


def test_entrypoint_is_the_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [json.loads(i.arguments) for i in final_stage() if i.keyword == "ENTRYPOINT"]
    assert isinstance(entrypoint, list)  # exec form, so SIGTERM reaches the server
    assert Path(entrypoint[0]).name in scripts
    assert scripts[Path(entrypoint[0]).name] == "webhook.cli:main"


def test_image_user_is_numeric_and_not_root():
    (user,) = [i.arguments for i in final_stage() if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_every_copied_file_exists_and_reaches_the_build_context():
    sources = []
    for step in instructions():
        if step.keyword == "COPY" and not step.arguments.startswith("--from="):
            *paths, _destination = step.arguments.split()
            sources += [p for p in paths if not p.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), f"{source} is excluded by .dockerignore"


def test_build_copies_what_the_package_build_reads():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {p for i in instructions() if i.keyword == "COPY" and not i.arguments.startswith("--from=")
              for p in i.arguments.split()[:-1]}
    assert {"pyproject.toml", project["project"]["readme"], "webhook"} <= copied


def test_key_material_and_local_state_stay_out_of_the_build_context():
    for path in ("certs/ca.key", "certs/tls.key", "manifests/overlays/self-managed/certs/ca.key", ".venv/bin/python",
                 ".git/config", "tests/test_dockerfile.py", "webhook/cli/__pycache__/common.cpython-311.pyc"):
        assert dockerignored(path), path
    assert not dockerignored("webhook/cli/common.py")
