"""Report output shared by review and audit: aligned columns and indented JSON."""

from __future__ import annotations

import json

from webhook.report import dump_json, format_columns


def test_columns_are_aligned_two_spaces_apart_and_the_last_is_not_padded():
    assert format_columns([("NAME", "RESULT", "DETAIL"), ("kube-system/a-long-name", "ok", ""),
                           ("x/y", "finding", "a long detail")]) == [
        "NAME                     RESULT   DETAIL",
        "kube-system/a-long-name  ok",
        "x/y                      finding  a long detail",
    ]


def test_json_is_indented_and_ends_with_a_newline():
    text = dump_json({"a": [1, None]})
    assert text.endswith("}\n") and "\n  " in text
    assert json.loads(text) == {"a": [1, None]}
