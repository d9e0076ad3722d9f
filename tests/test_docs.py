"""docs/ against the code: the documented patch, configuration keys, flags, metrics, RBAC and examples are the
ones the code has, every link resolves, and the docs speak of the repository only."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from pydantic import BaseModel

from tests.docs_text import DOCS, ROOT, block_with, broken_links, code_blocks, doc, paths_in_code, section, table_rows
from tests.objects import CONTROLLER_RBAC, CONTROLLER_RBAC_ALL_RECYCLE
from tests.support import FIXTURES
from webhook import cli
from webhook.admission import build_response, decide, parse_review
from webhook.config import ConfigFile, parse_config
from webhook.controller.metrics import ControllerMetrics
from webhook.enums import Endpoint, Mode
from webhook.metrics import Metrics
from webhook.policy import DEFAULT_GATE_CONDITION, DEFAULT_GATE_LABEL, PolicyConfig

PAGES = sorted(DOCS.glob("*.md"))
# Where each command's flags are documented.
FLAG_PAGES = {"serve": "configuration.md", "controller": "controller.md", "review": "review-and-audit.md",
              "audit": "review-and-audit.md", "recycle": "review-and-audit.md", "certs": "install.md"}


# --- links and paths ---


@pytest.mark.parametrize("page", [*PAGES, ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_named_in_the_docs_exist(page: Path) -> None:
    missing = [p for p in paths_in_code(page.read_text(encoding="utf-8")) if not (ROOT / p).exists()]
    assert missing == []


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md", ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_docs_speak_of_the_repository_only(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert re.findall(r"\bissues? #?\d+|/work/|DESIGN\.md", text, flags=re.IGNORECASE) == []


# --- policy.md ---


def test_documented_ebs_csi_patch_is_what_strip_mode_returns() -> None:
    documented = json.loads(block_with(doc("policy.md"), '"/spec/template/spec/tolerations"', "json"))
    review = parse_review((FIXTURES / "daemonset_ebs_csi_node.json").read_bytes())
    response = build_response(review.uid, decide(review, PolicyConfig(mode=Mode.STRIP), Endpoint.MUTATE),
                              Endpoint.MUTATE)["response"]
    assert json.loads(base64.b64decode(response["patch"])) == documented


def test_documented_warning_is_what_validate_returns() -> None:
    documented = block_with(doc("policy.md"), "give it a key").strip()
    review = parse_review((FIXTURES / "daemonset_ebs_csi_node.json").read_bytes())
    assert decide(review, PolicyConfig(), Endpoint.VALIDATE).warnings == tuple(documented.splitlines())


# --- configuration.md ---


def config_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every key of the configuration file, nested mappings spelled with dots, with its default."""
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            keys |= config_keys(nested, key + ".")
        else:
            keys[key] = field.get_default(call_default_factory=True)
    return keys


def documented_keys() -> dict[str, list[str]]:
    """The key table of configuration.md: key -> its cells."""
    rows = table_rows(section(doc("configuration.md"), "## Keys"))
    header, *body = rows
    assert header[:3] == ["Key", "Type", "Default"]
    return {row[0].strip("`"): row for row in body}


def test_every_configuration_key_is_in_the_table_once() -> None:
    rows = table_rows(section(doc("configuration.md"), "## Keys"))[1:]
    assert sorted(row[0].strip("`") for row in rows) == sorted(config_keys(ConfigFile))


@pytest.mark.parametrize("key", [k for k, v in config_keys(ConfigFile).items() if not isinstance(v, list | None)])
def test_documented_default_is_the_code_default(key: str) -> None:
    default_cell = documented_keys()[key][2]
    first_value = re.match(r"`([^`]*)`", default_cell)
    assert first_value, default_cell
    assert yaml.safe_load(first_value.group(1)) == config_keys(ConfigFile)[key]


def test_built_in_exemptions_are_the_documented_ones() -> None:
    default_cell = documented_keys()["exemptions"][2]
    documented = set(re.findall(r"`([\w-]+)`", default_cell)) - {"k8s-app"}
    assert documented == {dict(e.labels)["k8s-app"] for e in PolicyConfig().exemptions}


def test_the_config_map_writes_out_every_documented_key() -> None:
    config_map = yaml.safe_load((ROOT / "manifests" / "base" / "config.yaml").read_text())
    written = yaml.safe_load(config_map["data"]["config.yaml"])

    def is_written(key: str) -> bool:
        node: Any = written
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    assert [key for key in documented_keys() if not is_written(key)] == []


@pytest.mark.parametrize("example", [b for b in code_blocks(doc("configuration.md"), "yaml")
                                     if not b.startswith("patches:")])  # the kustomize patch of "Kinds" is not one
def test_configuration_examples_are_valid(example: str) -> None:
    parse_config(example, "example")


def test_documented_config_error_is_what_a_bad_file_gives(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    documented = block_with(doc("configuration.md"), "error: config file").strip()
    monkeypatch.chdir(tmp_path)
    Path("policy.yaml").write_text("mode: loud\n")
    assert cli.main(["review", "--config", "policy.yaml", str(FIXTURES / "daemonset_ebs_csi_node.json")]) == 2
    assert capsys.readouterr().err.strip() == documented


# --- flags ---


def flags_of(command: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The flags `command --help` lists, read from a help text too wide to wrap."""
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit):
        patch.setenv("COLUMNS", "1000")
        cli.main([command, "--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", capsys.readouterr().out)) - {"--help"}


@pytest.mark.parametrize(("command", "page"), FLAG_PAGES.items())
def test_every_flag_is_documented(command: str, page: str, capsys: pytest.CaptureFixture[str]) -> None:
    flags = flags_of(command, capsys)
    assert flags
    text = doc(page)
    assert sorted(f for f in flags if not re.search(rf"(?<![\w-]){f}(?![\w-])", text)) == []


def test_every_serve_limit_flag_is_its_keys_flag(capsys: pytest.CaptureFixture[str]) -> None:
    keys = documented_keys()
    documented = {re.match(r"`(--[\w-]+)`", row[3]).group(1): key  # type: ignore[union-attr]
                  for key, row in keys.items() if key.startswith("server.")}
    assert set(documented) <= flags_of("serve", capsys)
    assert sorted(documented.values()) == sorted(k for k in config_keys(ConfigFile) if k.startswith("server."))


# --- controller.md ---


def test_controller_rbac_is_the_calls_the_controller_makes() -> None:
    roles = list(yaml.safe_load_all(block_with(doc("controller.md"), "name: cilium-startup-guard-controller", "yaml")))
    assert [r["kind"] for r in roles] == ["ClusterRole", "Role"]
    granted = {(group, resource, verb) for role in roles for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == CONTROLLER_RBAC


def test_the_scope_all_rbac_is_what_that_scope_adds_to_the_calls() -> None:
    block = block_with(doc("controller.md"), "name: cilium-startup-guard-controller-cilium-config", "yaml")
    documents = list(yaml.safe_load_all(block))
    granted = {(group, resource, verb) for document in documents for rule in document["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == CONTROLLER_RBAC_ALL_RECYCLE - CONTROLLER_RBAC


# --- operations.md ---


def registered_metrics(exposition: bytes) -> dict[str, str]:
    """name -> type of the project's own series, counters spelled with _total as exposed."""
    return dict(re.findall(r"^# TYPE (cilium_startup_guard_\w+) (\w+)$", exposition.decode(), flags=re.MULTILINE))


@pytest.mark.parametrize(("heading", "exposition"), [
    pytest.param("### Webhook metrics", lambda: Metrics().exposition(), id="webhook"),
    pytest.param("### Gate controller metrics", lambda: generate_latest(ControllerMetrics().registry),
                 id="controller"),
])
def test_documented_metrics_are_the_registered_ones(heading: str, exposition: Any) -> None:
    rows = table_rows(section(doc("operations.md"), heading))[1:]
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert documented == registered_metrics(exposition())


# --- review-and-audit.md ---


def test_review_example_is_what_review_prints(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    text = doc("review-and-audit.md")
    command = block_with(text, "review tests/", "sh").strip()
    monkeypatch.chdir(ROOT)
    assert cli.main(command.split()[1:]) == 1
    assert capsys.readouterr().out == block_with(text, "reviewed in mode")


def test_review_json_fields_are_documented(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    cli.main(["review", "--output", "json", "tests/fixtures/manifests/helm_template_output.yaml"])
    report = json.loads(capsys.readouterr().out)
    documented = json.loads(block_with(doc("review-and-audit.md"), '"summary"', "json"))
    assert list(documented) == list(report)
    assert list(documented["daemonsets"][0]) == list(report["daemonsets"][0])
    assert list(documented["summary"]) == list(report["summary"])


# --- install.md ---


def uninstall_jq_filter() -> str:
    uninstall = section(doc("install.md"), "## Uninstall")
    return re.search(r"jq -c '(.*?)' \|", uninstall, flags=re.DOTALL).group(1)  # type: ignore[union-attr]


def test_uninstall_filter_names_the_default_gate_and_label() -> None:
    jq_filter = uninstall_jq_filter()
    assert jq_filter.count(f'"{DEFAULT_GATE_CONDITION}"') == 2
    assert f'"{DEFAULT_GATE_LABEL}": null' in jq_filter


@pytest.mark.slow  # starts jq
@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_uninstall_filter_removes_only_our_gate(tmp_path: Path) -> None:
    ours, other = {"conditionType": DEFAULT_GATE_CONDITION}, {"conditionType": "example.com/ready"}
    daemonsets = []
    for name, gates in (("both", [other, ours]), ("ours", [ours]), ("untouched", [other])):
        obj = json.loads((FIXTURES / "daemonset_ebs_csi_node.json").read_text())["request"]["object"]
        obj["metadata"]["name"] = name
        obj["spec"]["template"]["spec"]["readinessGates"] = gates
        daemonsets.append(obj)
    listing = tmp_path / "daemonsets.json"
    listing.write_text(json.dumps({"items": daemonsets}))
    out = subprocess.run(["jq", "-c", uninstall_jq_filter(), str(listing)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    patches = {item["name"]: item["patch"] for item in map(json.loads, out.splitlines())}
    assert set(patches) == {"both", "ours"}
    assert patches["both"]["spec"]["template"]["spec"]["readinessGates"] == [other]
    assert patches["ours"]["spec"]["template"]["spec"]["readinessGates"] == []
    assert patches["ours"]["spec"]["template"]["metadata"]["labels"] == {DEFAULT_GATE_LABEL: None}


def test_uninstall_releases_gates_with_the_config_the_controller_mounts() -> None:
    uninstall = section(doc("install.md"), "## Uninstall")
    release = re.search(r"controller --release-all --config (\S+)", uninstall)
    assert release
    deployment = next(d for d in yaml.safe_load_all((ROOT / "manifests" / "base" / "controller.yaml").read_text())
                      if d["kind"] == "Deployment")
    assert f"--config={release.group(1)}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


# --- architecture.md ---


def documented_modules() -> set[str]:
    rows = table_rows(section(doc("architecture.md"), "## Module map"))[1:]
    return {module for row in rows for module in re.findall(r"`([\w/]+\.py)`", row[0])}


def test_every_module_in_the_map_exists() -> None:
    assert sorted(m for m in documented_modules() if not (ROOT / "webhook" / m).is_file()) == []


def test_every_module_with_code_is_in_the_map() -> None:
    package = ROOT / "webhook"
    with_code = {str(path.relative_to(package)) for path in package.rglob("*.py")
                 if re.search(r"^(def|class|async def) ", path.read_text(encoding="utf-8"), flags=re.MULTILINE)}
    assert sorted(with_code - documented_modules() - {"__main__.py"}) == []
