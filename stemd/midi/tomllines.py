"""Where a table or key is in TOML text: tomllib gives lines only for syntax errors, and a map's checker
names the line of every mistake."""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(#.*)?$")


def _norm(name: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in name.split("."))


class SourceLines:
    """Finds the line of a table or key in TOML text (tomllib gives lines only for syntax errors)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers: list[tuple[int, bool, str]] = []  # (line, is_array, name)
        for i, line in enumerate(self.lines, 1):
            m = _HEADER.match(line)
            if m:
                self.headers.append((i, m.group(1) == "[[", _norm(m.group(2))))

    def array_item(self, name: str, index: int) -> int:
        """Line of the ``index``-th ``[[name]]`` header (0 when there is none)."""
        found = [line for line, arr, n in self.headers if arr and n == name]
        return found[index] if index < len(found) else 0

    def block_end(self, header_line: int) -> int:
        """The last line of the table that starts at ``header_line``."""
        later = [line for line, _a, _n in self.headers if line > header_line]
        return (later[0] - 1) if later else len(self.lines)

    def key(self, header_line: int, key: str) -> int:
        """Line of ``key = ...`` in the table at ``header_line`` (0: top level); the header if absent."""
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(header_line + 1, self.block_end(header_line) + 1 if header_line else len(self.lines) + 1):
            if header_line == 0 and any(h == i for h, _a, _n in self.headers):
                break
            if pattern.match(self.lines[i - 1]):
                return i
        return header_line or 1

    def path(self, *parts: str) -> int:
        """Line of the table or key at ``parts`` (e.g. "slots", "drums", "bars"), as near as it gets."""
        for cut in range(len(parts), 0, -1):
            header = [line for line, arr, n in self.headers if not arr and n == ".".join(parts[:cut])]
            if header:
                return self.key(header[0], parts[cut]) if cut < len(parts) else header[0]
        return self.key(0, parts[0]) if parts else 1
