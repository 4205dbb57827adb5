"""Where each key of a TOML document is written: key paths to line numbers, for error messages.

tomllib returns plain values with no positions, and tomlkit keeps the text but no line
numbers, so this module reads the text once more. It runs only on text that tomllib has
already accepted, which keeps it small: it follows strings, comments, arrays and inline
tables only far enough to know which line each key, table header and array item starts on.
"""

from __future__ import annotations

import json
import re
import tomllib

KeyPath = tuple[str | int, ...]

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = frozenset(",]}\n#")


def format_path(path: KeyPath) -> str:
    """`output.metrics[1].pattern`: dots between keys, brackets for array items, quotes
    around keys that are not bare TOML keys."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = part if BARE_KEY.fullmatch(part) else json.dumps(part)
        out += f".{name}" if out else name
    return out


def key_lines(text: str) -> dict[KeyPath, int]:
    """Each key path of a valid TOML document mapped to the line (1-based) it starts on.

    Tables of arrays get their index (`("data", "sources", 0)` is the first
    `[[data.sources]]`), array items theirs, and a table only implied by a longer header
    (`[info.labels]` implies `info`) the line of that header.
    """
    return _Scanner(text).scan()


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, or of its nearest written ancestor (a missing key is reported
    where the table that lacks it starts); None for the document itself."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


class _Scanner:
    """A reader that walks TOML text once, recording where keys start."""

    def __init__(self, text: str) -> None:
        self.text = text.removeprefix("\ufeff")
        self.i = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        # Each array of tables seen so far and how many tables it holds.
        self.arrays: dict[KeyPath, int] = {}

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self._skip_blank()
            if self.i >= len(self.text):
                return self.lines
            if self.text.startswith("[[", self.i):
                table = self._array_table_header()
            elif self._peek() == "[":
                table = self._table_header()
            else:
                self._key_value(table)

    # Headers and key/value pairs.

    def _table_header(self) -> KeyPath:
        line = self.line
        self._advance(1)
        keys = self._key()
        self._skip_spaces()
        self._advance(1)  # ]
        path = self._resolve(keys)
        self._record(path, line, since=0)
        return path

    def _array_table_header(self) -> KeyPath:
        line = self.line
        self._advance(2)
        keys = self._key()
        self._skip_spaces()
        self._advance(2)  # ]]
        path = self._resolve(keys)
        index = self.arrays.get(path, 0)
        self.arrays[path] = index + 1
        self._record((*path, index), line, since=0)
        return (*path, index)

    def _resolve(self, keys: list[str]) -> KeyPath:
        """A header's path, with the latest index put after each array of tables it
        passes through (`[[a]]` then `[a.b]` means the last `a`'s `b`)."""
        path: KeyPath = ()
        for key in keys[:-1]:
            path = (*path, key)
            if path in self.arrays:
                path = (*path, self.arrays[path] - 1)
        return (*path, keys[-1])

    def _key_value(self, base: KeyPath) -> None:
        line = self.line
        path = (*base, *self._key())
        self._record(path, line, since=len(base))
        self._skip_spaces()
        self._advance(1)  # =
        self._skip_spaces()
        self._value(path)

    def _record(self, path: KeyPath, line: int, *, since: int) -> None:
        for end in range(max(since, 1), len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def _key(self) -> list[str]:
        keys: list[str] = []
        while True:
            self._skip_spaces()
            char = self._peek()
            if char in ('"', "'"):
                start = self.i
                self._string()
                keys.append(tomllib.loads(f"k = {self.text[start : self.i]}")["k"])
            else:
                match = BARE_KEY.match(self.text, self.i)
                if match is None:  # not TOML tomllib accepted; stop rather than loop
                    self.i = len(self.text)
                    return keys or [""]
                keys.append(match.group())
                self._advance(match.end() - self.i)
            self._skip_spaces()
            if self._peek() != ".":
                return keys
            self._advance(1)

    # Values.

    def _value(self, path: KeyPath) -> None:
        char = self._peek()
        if char in ('"', "'"):
            self._string()
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            while self.i < len(self.text) and self.text[self.i] not in _SCALAR_END:
                self._advance(1)

    def _array(self, path: KeyPath) -> None:
        self._advance(1)
        index = 0
        while True:
            self._skip_blank()
            if self.i >= len(self.text) or self._peek() == "]":
                self._advance(1)
                return
            self._record((*path, index), self.line, since=len(path))
            self._value((*path, index))
            self._skip_blank()
            if self._peek() == ",":
                self._advance(1)
            index += 1

    def _inline_table(self, path: KeyPath) -> None:
        self._advance(1)
        while True:
            self._skip_blank()
            if self.i >= len(self.text) or self._peek() == "}":
                self._advance(1)
                return
            self._key_value(path)
            self._skip_blank()
            if self._peek() == ",":
                self._advance(1)

    def _string(self) -> None:
        quote = self._peek()
        triple = quote * 3
        if self.text.startswith(triple, self.i):
            self._advance(3)
            while self.i < len(self.text) and not self.text.startswith(triple, self.i):
                self._advance(2 if quote == '"' and self._peek() == "\\" else 1)
            self._advance(3)
            # Up to two quotes may end the content just before the closing delimiter.
            for _ in range(2):
                if self._peek() == quote:
                    self._advance(1)
            return
        self._advance(1)
        while self.i < len(self.text) and self._peek() not in (quote, "\n"):
            self._advance(2 if quote == '"' and self._peek() == "\\" else 1)
        self._advance(1)

    # Characters.

    def _peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def _advance(self, n: int) -> None:
        end = min(self.i + n, len(self.text))
        self.line += self.text.count("\n", self.i, end)
        self.i = end

    def _skip_spaces(self) -> None:
        while self._peek() in (" ", "\t") and self._peek():
            self._advance(1)

    def _skip_blank(self) -> None:
        """Spaces, newlines and comments."""
        while self.i < len(self.text):
            char = self.text[self.i]
            if char in " \t\r\n":
                self._advance(1)
            elif char == "#":
                end = self.text.find("\n", self.i)
                self._advance((len(self.text) if end < 0 else end) - self.i)
            else:
                return
