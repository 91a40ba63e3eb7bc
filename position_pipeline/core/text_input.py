"""Text that comes from outside (flags, CSV cells, producers' items) and text shown to an operator: the two rules,
each written once, standard library only (the CLI's parser uses them).

- An integer is ASCII: an optional sign and the digits 0-9, with surrounding spaces or tabs allowed (` 12 ` is 12).
  No other script's digits (Arabic-Indic, full-width: U+0661, U+FF11), no underscores (`1_000`), whatever Python's
  `int()` accepts.
- A control character is C0 (U+0000 to U+001F: NUL, ESC, newline, tab, ...), DEL, C1 (U+0080 to U+009F), or a
  character that reorders or hides text (bidirectional overrides and isolates, zero-width marks, line and paragraph
  separators). Symbols and accounts holding one are refused; every value the CLI prints has them escaped, so a
  stored `ESC[2J` shows as `\\x1b[2J` instead of clearing the operator's terminal.
"""

from __future__ import annotations

import re

_ASCII_INTEGER = re.compile(r"[ \t]*([+-]?[0-9]+)[ \t]*", re.ASCII)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def parse_ascii_int(text: str) -> int:
    """The integer `text` writes in ASCII digits; ValueError saying so for anything else."""
    match = _ASCII_INTEGER.fullmatch(text)
    if match is None:
        raise ValueError(f"must be an integer written with the digits 0-9, got {text!r}")
    return int(match.group(1))


def control_characters(text: str) -> list[str]:
    """The control characters in `text`, each as U+XXXX, in order of first appearance."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in _CONTROL.findall(text)))


def printable(value: object) -> str:
    """`str(value)` with every control character escaped (\\x1b, \\x0a, \\u202e): safe to write to a terminal."""
    return _CONTROL.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
