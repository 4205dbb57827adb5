"""Key paths to lines in TOML text: tables, arrays of tables, inline tables, strings."""

from __future__ import annotations

import tomllib

from core.tomlpositions import format_path, key_lines, line_of

TEXT = '''\
# a comment with [brackets] and key = "value"
title = "x"
[info]
description = """
a = 1
[not.a.table]
"""
[info.labels]
task_name = "t"
"dotted.key" = 'y'
[hardware]
distributed = { num_instances = 2, processes_per_instance = "gpus" }
[[data.sources]]
src = "a"
[[data.sources]]
src = "b" # trailing comment
ports = [
  1,
  [2, 3],
]
[data.sources.extra]
nested.key = 1
'''


def test_each_key_is_found_on_its_line() -> None:
    tomllib.loads(TEXT)  # the scanner reads only valid TOML
    lines = key_lines(TEXT)
    assert lines[("title",)] == 2
    assert lines[("info",)] == 3 and lines[("info", "description")] == 4
    assert ("a",) not in lines and ("not", "a", "table") not in lines  # inside a string
    assert lines[("info", "labels", "task_name")] == 9
    assert lines[("info", "labels", "dotted.key")] == 10
    assert lines[("hardware", "distributed", "processes_per_instance")] == 12
    assert lines[("data", "sources", 0)] == 13 and lines[("data", "sources", 1)] == 15
    assert lines[("data", "sources", 1, "src")] == 16
    assert lines[("data", "sources", 1, "ports", 1)] == 19
    assert lines[("data", "sources", 1, "ports", 1, 1)] == 19
    # A sub-table after an array of tables belongs to its last table.
    assert lines[("data", "sources", 1, "extra", "nested", "key")] == 22
    assert lines[("data", "sources")] == 13


def test_a_missing_key_is_placed_at_its_nearest_table() -> None:
    lines = key_lines(TEXT)
    assert line_of(lines, ("hardware", "instance_type")) == 11
    assert line_of(lines, ("data", "sources", 0, "path")) == 13
    assert line_of(lines, ("spec_version",)) is None


def test_paths_are_written_as_a_person_reads_them() -> None:
    assert format_path(("output", "metrics", 1, "pattern")) == "output.metrics[1].pattern"
    assert format_path(("env", "vars", "A.B")) == 'env.vars."A.B"'
    assert format_path(()) == ""
