"""Renders the kustomize trees under manifests/ for the tests.

`kubectl kustomize` when kubectl is installed; otherwise `build`, a small loader for exactly the kustomize
features this repository uses (resources, components, JSON 6902 patches with a target, secretGenerator from
files without a name hash). Anything else raises, so the loader can never silently render something
different; test_manifests.py checks it against kubectl wherever kubectl exists.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch

from tests import yamltext
from webhook import cli

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ("cert-manager", "self-managed", "self-managed-job", "strict")
KUBECTL = shutil.which("kubectl")
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "secretGenerator"}
TARGET_KEYS = {"group", "version", "kind", "name", "namespace"}
GENERATOR_KEYS = {"name", "namespace", "type", "files", "options"}

Object = dict[str, Any]


class UnsupportedKustomization(Exception):
    """The kustomization uses a feature `build` does not implement."""


def prepare(workdir: Path) -> Path:
    """A copy of manifests/ with the self-managed overlay's certificates made, as docs/install.md says."""
    target = workdir / "manifests"
    shutil.copytree(ROOT / "manifests", target, ignore=shutil.ignore_patterns("certs"))
    status = cli.main(["certs", "--kustomize", "--out-dir", str(target / "overlays" / "self-managed" / "certs")])
    if status != 0:
        raise RuntimeError(f"cilium-startup-guard certs --kustomize exited {status}")
    return target


def render(path: Path) -> list[Object]:
    return render_kubectl(path) if KUBECTL else build(path)


def render_kubectl(path: Path) -> list[Object]:
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {done.stderr.strip()}")
    return [doc for doc in yamltext.load_all(done.stdout) if doc]


def build(path: Path) -> list[Object]:
    return _accumulate(path, [])


def key(obj: Object) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def normalized(objects: list[Object]) -> dict[tuple[str, str, str, str], Object]:
    """Objects by identity, with Secret data unfolded (kubectl wraps long base64 values over lines)."""
    result = {}
    for obj in objects:
        if obj["kind"] == "Secret":
            obj = {**obj, "data": {k: "".join(v.split()) for k, v in obj.get("data", {}).items()}}
        result[key(obj)] = obj
    return result


def _accumulate(directory: Path, objects: list[Object]) -> list[Object]:
    # kustomize's order: resources, then components, then this level's generators, then its patches.
    kustomization = _read_kustomization(directory)
    for entry in kustomization.get("resources", []):
        source = directory / entry
        if source.is_dir():
            objects = objects + build(source)
        else:
            objects = objects + [doc for doc in yamltext.load_all(source.read_text()) if doc]
    for entry in kustomization.get("components", []):
        objects = _accumulate(directory / entry, objects)
    for generator in kustomization.get("secretGenerator", []):
        objects = [*objects, _secret(directory, generator)]
    for patch in kustomization.get("patches", []):
        objects = _patch(directory, patch, objects)
    _check_unique(objects, directory)
    return objects


def _read_kustomization(directory: Path) -> Object:
    document = yamltext.load((directory / "kustomization.yaml").read_text())
    unknown = set(document) - KUSTOMIZATION_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: {sorted(unknown)}")
    return dict(document)


def _secret(directory: Path, generator: Object) -> Object:
    unknown = set(generator) - GENERATOR_KEYS
    if unknown or generator.get("options") != {"disableNameSuffixHash": True}:
        raise UnsupportedKustomization(f"{directory}: secretGenerator {sorted(unknown)} {generator.get('options')}")
    data = {}
    for entry in generator["files"]:
        name, _, file = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[name] = base64.b64encode((directory / file).read_bytes()).decode("ascii")
    metadata = {"name": generator["name"]}
    if "namespace" in generator:
        metadata["namespace"] = generator["namespace"]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
            "type": generator.get("type", "Opaque"), "data": data}


def _patch(directory: Path, patch: Object, objects: list[Object]) -> list[Object]:
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    operations = yamltext.load(text)
    target = patch.get("target")
    if not isinstance(operations, list) or not target or set(target) - TARGET_KEYS:
        raise UnsupportedKustomization(f"{directory}: only JSON 6902 patches with a target are supported")
    matched = 0
    result = []
    for obj in objects:
        if _matches(obj, target):
            obj = jsonpatch.apply_patch(obj, operations)
            matched += 1
        result.append(obj)
    if not matched:
        raise RuntimeError(f"{directory}: patch target {target} matches nothing")
    return result


def _matches(obj: Object, target: Object) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    meta = obj.get("metadata", {})
    actual = {"group": group, "version": version, "kind": obj["kind"], "name": meta.get("name"),
              "namespace": meta.get("namespace")}
    return all(actual[field] == wanted for field, wanted in target.items())


def _check_unique(objects: list[Object], directory: Path) -> None:
    keys = [key(obj) for obj in objects]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise RuntimeError(f"{directory}: duplicate objects {sorted(duplicates)}")
