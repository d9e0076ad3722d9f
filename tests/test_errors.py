"""The one YAML-error formatter: a line number and PyYAML's problem, on one line."""

from __future__ import annotations

import pytest
import yaml

from webhook.errors import describe_yaml_error


def yaml_error(text: str) -> yaml.YAMLError:
    with pytest.raises(yaml.YAMLError) as caught:
        yaml.safe_load(text)
    return caught.value


def test_a_syntax_error_names_its_line_and_problem_on_one_line() -> None:
    text = describe_yaml_error(yaml_error("a: 1\nb: [\n"))
    assert text.startswith("not valid YAML (line 3): ")
    assert "\n" not in text


def test_the_kind_of_input_is_named_by_the_caller() -> None:
    assert describe_yaml_error(yaml_error("kind: ["), "YAML or JSON").startswith("not valid YAML or JSON (line ")


def test_an_error_without_a_mark_is_still_one_line() -> None:
    assert describe_yaml_error(yaml.YAMLError("first\nsecond")) == "not valid YAML: first second"
