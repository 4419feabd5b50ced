"""A top-level scan of a serialised ModelInferRequest.

Parsing the whole request copies every tensor's bytes (and each access to
`raw_input_contents[i]` copies them again). Validation only needs their lengths, so the scan
keeps everything but field 7 (raw_input_contents) for the protobuf parser and records the
lengths of the field 7 entries; the bytes themselves are forwarded untouched.
"""

from __future__ import annotations

RAW_INPUT_CONTENTS = 7
_LENGTH_DELIMITED = 2


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message at the top level."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def split_raw_contents(data: bytes) -> tuple[bytes, list[int]]:
    """(the message without its raw_input_contents, the length of each of them)."""
    view = memoryview(data)
    end = len(data)
    pos = kept_from = 0
    parts: list[memoryview] = []
    sizes: list[int] = []
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            pos += length
            if field == RAW_INPUT_CONTENTS and pos <= end:
                parts.append(view[kept_from:field_start])
                sizes.append(length)
                kept_from = pos
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise WireError("a field runs past the end of the message")
    if not sizes:
        return data, sizes
    parts.append(view[kept_from:end])
    return b"".join(parts), sizes
