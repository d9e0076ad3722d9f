"""Errors for the person at the command line: ConfigError (one line, exit 2) and the one YAML-error formatter.
A leaf, stdlib only at run time, so config, review and kube share it without importing one another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import yaml


class ConfigError(Exception):
    """A configuration that cannot be used; the message is one line meant for the person who wrote it. The
    command line prints it and exits with status 2."""


def describe_yaml_error(err: yaml.YAMLError, what: str = "YAML") -> str:
    """One line: `not valid YAML (line 3): <problem>`. PyYAML's own text spans several lines and repeats the
    offending input; its problem and the line of its mark say the same in a few words."""
    mark = getattr(err, "problem_mark", None)
    line = f" (line {mark.line + 1})" if mark is not None else ""
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    return f"not valid {what}{line}: {problem}"
