"""The wire format byte for byte: length-prefixed NUL-terminated fields, the frame decoder fed in any slicing, and the
`API\\0 v{min}..{max}` handshake with version negotiation. Pure functions, no sockets."""

from __future__ import annotations

import struct

import pytest

from position_pipeline.ib_gateway_sim.framing import (
    HANDSHAKE_PREFIX,
    MAX_FRAME_BYTES,
    Field,
    FrameDecoder,
    Handshake,
    ProtocolError,
    encode_frame,
    encode_raw,
    format_field,
    negotiate_version,
    parse_handshake,
    split_fields,
)

# --- encoding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (True, "1"),
        (False, "0"),
        (None, ""),
        (0, "0"),
        (7, "7"),
        (-3, "-3"),
        (265598, "265598"),
        ("DU1000001", "DU1000001"),
        ("", ""),
        (150.25, "150.25"),
        (100.0, "100"),
        (-100.0, "-100"),
        (0.0, "0"),
        (-0.5, "-0.5"),
        (1.0572, "1.0572"),
        (float("nan"), ""),
    ],
)
def test_format_field(value: Field, wire: str) -> None:
    assert format_field(value) == wire


def test_encode_frame_exact_bytes() -> None:
    frame = encode_frame([61, 3, "DU1", True, False, None, 150.25, 100.0])
    payload = b"61\x003\x00DU1\x001\x000\x00\x00150.25\x00100\x00"
    assert frame == b"\x00\x00\x00\x19" + payload
    assert len(payload) == 25


def test_encode_frame_length_is_big_endian_and_counts_bytes_not_characters() -> None:
    long_field = "x" * 257
    frame = encode_frame([long_field])
    assert frame[:4] == b"\x00\x00\x01\x02"  # 258 = 0x0102, most significant byte first
    assert frame[4:] == long_field.encode() + b"\x00"

    accented = encode_frame(["é"])  # two bytes in UTF-8
    assert accented == b"\x00\x00\x00\x03\xc3\xa9\x00"


def test_encode_frame_every_field_is_nul_terminated() -> None:
    assert encode_frame([]) == b"\x00\x00\x00\x00"
    assert encode_frame([""]) == b"\x00\x00\x00\x01\x00"
    assert encode_frame(["", ""]) == b"\x00\x00\x00\x02\x00\x00"


def test_encode_raw_adds_only_the_length_prefix() -> None:
    assert encode_raw(b"v157..178") == b"\x00\x00\x00\x09v157..178"
    assert encode_raw(b"") == b"\x00\x00\x00\x00"


# --- splitting fields ---------------------------------------------------------------------------------------------


def test_split_fields_round_trips_encode_frame() -> None:
    frame = encode_frame([7, 8, "DU1", "", 151.5, None, True])
    assert split_fields(frame[4:]) == ["7", "8", "DU1", "", "151.5", "", "1"]


def test_split_fields_of_empty_payload_is_no_fields() -> None:
    assert split_fields(b"") == []


def test_split_fields_keeps_empty_fields_in_place() -> None:
    assert split_fields(b"\x00\x00") == ["", ""]
    assert split_fields(b"a\x00\x00b\x00") == ["a", "", "b"]


@pytest.mark.parametrize("payload", [b"49\x001", b"x", b"\x00a"])
def test_split_fields_missing_trailing_nul_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="NUL"):
        split_fields(payload)


@pytest.mark.parametrize("payload", [b"\xff\x00", b"6\x00\xc3\x00", b"\xed\xa0\x80\x00"])
def test_split_fields_invalid_utf8_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        split_fields(payload)


def test_split_fields_accepts_valid_utf8() -> None:
    assert split_fields("Zürich\x00".encode()) == ["Zürich"]


# --- the frame decoder --------------------------------------------------------------------------------------------


def test_decoder_fed_byte_by_byte_yields_each_frame_once_complete() -> None:
    stream = encode_frame([15, 1, "DU1,DU2"]) + encode_frame([9, 1, 1])
    decoder = FrameDecoder()
    got: list[bytes] = []
    first_end = len(encode_frame([15, 1, "DU1,DU2"]))
    for i in range(len(stream)):
        frames = decoder.feed(stream[i : i + 1])
        if i + 1 in (first_end, len(stream)):
            assert len(frames) == 1
        else:
            assert frames == []
        got += frames
    assert got == [b"15\x001\x00DU1,DU2\x00", b"9\x001\x001\x00"]
    assert decoder.pending_bytes == 0


def test_decoder_returns_several_frames_from_one_chunk() -> None:
    frames: list[list[Field]] = [[61, 1], [49, 1], [6, 2, 1, "DU1"]]
    decoder = FrameDecoder()
    got = decoder.feed(b"".join(encode_frame(f) for f in frames))
    assert [split_fields(p) for p in got] == [[str(x) for x in f] for f in frames]
    assert decoder.pending_bytes == 0


def test_decoder_holds_a_frame_split_across_chunks() -> None:
    first, second = encode_frame([61, 1]), encode_frame([64, 1])
    stream = first + second
    decoder = FrameDecoder()
    assert decoder.feed(stream[:2]) == []  # inside the length prefix
    assert decoder.pending_bytes == 2
    assert decoder.feed(stream[2:6]) == []  # inside the payload
    assert decoder.feed(stream[6 : len(first) + 3]) == [b"61\x001\x00"]
    assert decoder.pending_bytes == 3
    assert decoder.feed(stream[len(first) + 3 :]) == [b"64\x001\x00"]
    assert decoder.pending_bytes == 0


def test_decoder_yields_an_empty_frame_for_zero_length() -> None:
    assert FrameDecoder().feed(b"\x00\x00\x00\x00") == [b""]


def test_decoder_refuses_oversize_length_before_the_payload_arrives() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME_BYTES + 1))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_decoder_limit_is_inclusive() -> None:
    decoder = FrameDecoder(max_frame_bytes=8)
    assert decoder.feed(struct.pack(">I", 8) + b"1234567\x00") == [b"1234567\x00"]
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", 9))


# --- the handshake --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"v157..178", Handshake(157, 178, "")),
        (b"v100..157", Handshake(100, 157, "")),
        (b"v157..178 +PACEAPI", Handshake(157, 178, "+PACEAPI")),
        (b"v100..176  +PACEAPI ", Handshake(100, 176, "+PACEAPI")),
        (b"v176", Handshake(176, 176, "")),
        (b"v157..178\x00", Handshake(157, 178, "")),
    ],
)
def test_parse_handshake(payload: bytes, expected: Handshake) -> None:
    assert parse_handshake(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [b"", b"hello", b"v", b"157..178", b"vabc", b"v157..", b"v157..178..200", b"V157..178", b"GET / HTTP/1.1"],
)
def test_parse_handshake_garbage_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="not understood"):
        parse_handshake(payload)


def test_parse_handshake_empty_range_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        parse_handshake(b"v178..157")


def test_parse_handshake_non_ascii_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="ASCII"):
        parse_handshake("v157..178 é".encode())


def test_handshake_prefix() -> None:
    assert HANDSHAKE_PREFIX == b"API\x00"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (157, 178, 178),
        (100, 157, 157),  # overlap of one version at the server's low end
        (178, 200, 178),  # overlap of one version at the server's high end
        (100, 200, 178),
        (160, 170, 170),
        (176, 176, 176),
        (100, 156, None),  # entirely below
        (179, 200, None),  # entirely above
    ],
)
def test_negotiate_version(low: int, high: int, expected: int | None) -> None:
    assert negotiate_version(Handshake(low, high), 157, 178) == expected


def test_infinity_is_spelled_as_ibs_encoder_does() -> None:
    assert format_field(float("inf")) == "Infinite"
    assert format_field(float("-inf")) == "-Infinite"
