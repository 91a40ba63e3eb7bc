"""The argparse types of the commands' numeric flags: ASCII integers (the queue's own rule, `text_input`) and
durations in seconds that are finite and positive. argparse names the flag when one refuses a value (exit 2)."""

from __future__ import annotations

import argparse
import math

from position_pipeline.core.text_input import parse_ascii_int


def integer_argument(text: str) -> int:
    """An integer in ASCII digits (`1_000` and other scripts' digits are refused, unlike `int()`)."""
    try:
        return parse_ascii_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds_argument(text: str) -> float:
    """A finite, positive number of seconds (`nan`, `inf`, 0 and negatives are refused: they wait forever or never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text!r}")
    return value
