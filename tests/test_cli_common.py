"""What the verbs share: one definition of the cluster flags, the kubeconfig lookup each verb documents, and the
argument types."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from webhook import cli
from webhook.cli.common import KubeconfigLookup, kubeconfig_of, non_negative, port, positive

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_VERBS = ("certs", "controller", "audit")
SHARED = ("--context", "--config", "--cilium-namespace", "--cilium-agent-selector")


def verb(name: str) -> argparse.ArgumentParser:
    [commands] = [a for a in cli.build_parser()._actions if a.dest == "command"]
    parser: argparse.ArgumentParser = commands.choices[name]
    return parser


def help_of(name: str, flag: str) -> str | None:
    return next((a.help for a in verb(name)._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("flag", SHARED)
def test_a_shared_flag_has_one_help_text_in_every_verb(flag):
    texts = {help_of(name, flag) for name in (*CLUSTER_VERBS, "serve", "review")} - {None}
    assert len(texts) == 1


@pytest.mark.parametrize("name, lookup", [
    pytest.param("certs", KubeconfigLookup.IN_CLUSTER, id="certs"),
    pytest.param("controller", KubeconfigLookup.IN_CLUSTER, id="controller"),
    pytest.param("audit", KubeconfigLookup.LIKE_KUBECTL, id="audit"),
])
def test_each_verb_documents_the_kubeconfig_lookup_it_does(name, lookup):
    assert help_of(name, "--kubeconfig") == f"kubeconfig file (default: {lookup})"
    assert verb(name).get_default("kubeconfig_lookup") is lookup


def test_an_explicit_kubeconfig_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "from-env"))
    given = tmp_path / "given"
    for name in CLUSTER_VERBS:
        extra = ["--in-cluster"] if name == "certs" else []
        args = cli.build_parser().parse_args([name, *extra, "--kubeconfig", str(given)])
        assert kubeconfig_of(args) == given


def test_in_cluster_verbs_ignore_the_kubeconfig_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "from-env"))
    assert kubeconfig_of(cli.build_parser().parse_args(["controller"])) is None
    assert kubeconfig_of(cli.build_parser().parse_args(["certs", "--in-cluster"])) is None


def test_audit_looks_where_kubectl_does(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "from-env"))
    assert kubeconfig_of(cli.build_parser().parse_args(["audit"])) == Path(tmp_path / "from-env")
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kubeconfig_of(cli.build_parser().parse_args(["audit"])) is None  # no ~/.kube/config: in-cluster
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}")
    assert kubeconfig_of(cli.build_parser().parse_args(["audit"])) == tmp_path / ".kube" / "config"


@pytest.mark.parametrize("convert, text, value", [
    pytest.param(non_negative, "0", 0.0, id="zero-is-not-negative"),
    pytest.param(non_negative, "2.5", 2.5, id="fraction"),
    pytest.param(positive, "0.1", 0.1, id="positive"),
    pytest.param(port, "0", 0, id="port-zero-picks-one"),
    pytest.param(port, "65535", 65535, id="highest-port"),
])
def test_argument_types_accept(convert, text, value):
    assert convert(text) == value


@pytest.mark.parametrize("convert, text", [
    pytest.param(non_negative, "-1", id="negative"),
    pytest.param(non_negative, "inf", id="infinite"),
    pytest.param(non_negative, "nan", id="nan-compares-false-with-every-bound"),
    pytest.param(non_negative, "lots", id="not-a-number"),
    pytest.param(positive, "0", id="zero-is-not-positive"),
    pytest.param(positive, "inf", id="an-infinite-rate-is-none"),
    pytest.param(positive, "nan", id="nan-is-not-positive"),
    pytest.param(port, "65536", id="port-too-high"),
    pytest.param(port, "-1", id="negative-port"),
])
def test_argument_types_refuse_with_a_message(convert, text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        convert(text)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["policy", "export", "--format", "vap"],
    ["review", "tests/fixtures/manifests/helm_template_output.yaml"],
])
def test_a_reader_that_goes_away_stops_the_command_quietly_with_the_status_of_a_closed_pipe(args):
    # `... | head`: the read end is closed before the command writes its first byte.
    process = subprocess.Popen([sys.executable, "-m", "webhook", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    try:
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == cli.EXIT_BROKEN_PIPE == 141
    finally:
        process.kill()
        process.stderr.close()
    assert stderr == b""
