"""The TWS API wire format: 4-byte big-endian length prefix, then NUL-terminated ASCII/UTF-8 fields.

Pure functions and a sans-I/O decoder, so every byte the simulator reads or writes can be tested without a socket.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

HANDSHAKE_PREFIX = b"API\0"
# IB's own clients refuse frames above 16 MiB (ibapi comm.py); a bigger length means a desynchronised stream.
MAX_FRAME_BYTES = 0xFFFFFF
_LENGTH = struct.Struct(">I")
_VERSION_RANGE = re.compile(r"^v(\d+)(?:\.\.(\d+))?(?:\s+(.*))?$")

Field = str | int | float | bool | None


class ProtocolError(Exception):
    """The peer sent bytes that do not follow the protocol; the connection cannot continue."""


def format_field(value: Field) -> str:
    """Render one field the way IB's encoders do: bools as 1/0, None as empty, integral floats as ints."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if value != value:  # NaN has no wire form; IB sends an empty field for "unset"
            return ""
        if value in (float("inf"), float("-inf")):
            return "Infinite" if value > 0 else "-Infinite"  # IB's encoder spells infinity this way
        return repr(value) if value != int(value) or abs(value) >= 1e16 else str(int(value))
    return str(value)


def encode_frame(fields: Iterable[Field]) -> bytes:
    """One length-prefixed message: each field followed by NUL."""
    payload = b"".join(format_field(f).encode() + b"\0" for f in fields)
    return _LENGTH.pack(len(payload)) + payload


def encode_raw(payload: bytes) -> bytes:
    """Length-prefix an already encoded payload (the handshake's version string has no trailing NUL)."""
    return _LENGTH.pack(len(payload)) + payload


def split_fields(payload: bytes) -> list[str]:
    """Fields of one frame; a payload that does not end in NUL was cut or corrupted."""
    if not payload:
        return []
    if not payload.endswith(b"\0"):
        raise ProtocolError(f"frame does not end with a NUL field terminator: {payload[:40]!r}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame is not valid UTF-8: {payload[:40]!r}") from exc
    return text.split("\0")[:-1]


class FrameDecoder:
    """Accumulates bytes and yields complete frames; partial frames wait for more data."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add data; return the payloads of every frame now complete (without their length prefix)."""
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self._max:
                raise ProtocolError(f"frame length {length} exceeds the {self._max}-byte limit")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return frames


@dataclass(frozen=True)
class Handshake:
    """What a client offers before the API starts: the range of server versions it can read."""

    min_version: int
    max_version: int
    options: str = ""


def parse_handshake(payload: bytes) -> Handshake:
    """Parse the `v{min}..{max}[ options]` payload that follows `API\\0`."""
    try:
        text = payload.decode("ascii").rstrip("\0")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"handshake is not ASCII: {payload[:40]!r}") from exc
    match = _VERSION_RANGE.match(text)
    if not match:
        raise ProtocolError(f"handshake version range not understood: {text[:40]!r}")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if low > high:
        raise ProtocolError(f"handshake version range is empty: {text!r}")
    return Handshake(low, high, (match.group(3) or "").strip())


def negotiate_version(offer: Handshake, server_min: int, server_max: int) -> int | None:
    """Highest version both sides support, or None when the ranges do not overlap."""
    version = min(offer.max_version, server_max)
    if version < max(offer.min_version, server_min):
        return None
    return version
