"""Datum: Caffe's Datum and BlobProto messages, written and read in protobuf wire format by hand.

Hand-written so the hot path needs no protobuf runtime; the tests check the bytes against the
protobuf runtime compiled from tests/caffe.proto (field numbers from Caffe's caffe.proto).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

_VARINT, _LEN, _FIXED32 = 0, 2, 5


class Datum(NamedTuple):
    channels: int
    height: int
    width: int
    data: bytes
    label: int
    encoded: bool
    float_data: tuple[float, ...] = ()


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # proto int32/int64: negatives are ten-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def encode_datum(channels: int, height: int, width: int, data: bytes, label: int, encoded: bool) -> bytes:
    """Serialize a Datum exactly as protobuf's SerializeToString does (fields in number order)."""
    parts = [
        b"\x08", _varint(channels), b"\x10", _varint(height), b"\x18", _varint(width),
        b"\x22", _varint(len(data)), data, b"\x28", _varint(label),
    ]
    if encoded:
        parts.append(b"\x38\x01")
    return b"".join(parts)


def encode_caffe_datum(data: bytes, label: int, dims: tuple[int, int, int] | None) -> bytes:
    """A Datum as Caffe serializes it: encoded (dims None): data, label, encoded=true (ReadFileToDatum and
    imencode set no size); raw: channels, height, width, data, label and an explicit encoded=false
    (CVMatToDatum sets it)."""
    head = b"" if dims is None else b"".join(tag + _varint(n) for tag, n in zip((b"\x08", b"\x10", b"\x18"), dims,
                                                                                   strict=True))
    return b"".join((head, b"\x22", _varint(len(data)), data, b"\x28", _varint(label),
                     b"\x38\x00" if dims is not None else b"\x38\x01"))


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos: pos + size], pos + size
        elif wire == _FIXED32:
            value, pos = buf[pos: pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos: pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def _int32(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_datum(buf: bytes) -> Datum:
    """Parse a serialized Datum; raises ValueError on malformed bytes."""
    ints = {1: 0, 2: 0, 3: 0, 5: 0, 7: 0}
    data = b""
    floats: list[float] = []
    for field, wire, value in _fields(buf):
        if field in ints and wire == _VARINT:
            ints[field] = _int32(value)
        elif field == 4 and wire == _LEN:
            data = bytes(value)
        elif field == 6:
            floats.extend(_floats(value, wire))
    return Datum(ints[1], ints[2], ints[3], data, ints[5], bool(ints[7]), tuple(floats))


def _floats(value: bytes, wire: int) -> list[float]:
    return list(struct.unpack(f"<{len(value) // 4}f", value)) if wire in (_LEN, _FIXED32) else []


def encode_blobproto(mean_chw: np.ndarray) -> bytes:
    """A BlobProto with num=1, channels, height, width and packed float data (CHW)."""
    channels, height, width = mean_chw.shape
    payload = np.ascontiguousarray(mean_chw, dtype="<f4").tobytes()
    return b"".join([
        _tag(1, _VARINT), _varint(1), _tag(2, _VARINT), _varint(channels),
        _tag(3, _VARINT), _varint(height), _tag(4, _VARINT), _varint(width),
        _tag(5, _LEN), _varint(len(payload)), payload,
    ])


def decode_blobproto(buf: bytes) -> np.ndarray:
    """Parse a BlobProto into a (num*channels, height, width) float32 array."""
    dims = {1: 1, 2: 1, 3: 1, 4: 1}
    chunks: list[bytes] = []
    for field, wire, value in _fields(buf):
        if field in dims and wire == _VARINT:
            dims[field] = value
        elif field == 5 and wire == _LEN:
            chunks.append(bytes(value))
        elif field == 5 and wire == _FIXED32:
            chunks.append(bytes(value))
    data = np.frombuffer(b"".join(chunks), dtype="<f4")
    shape = (dims[1] * dims[2], dims[3], dims[4])
    if data.size != int(np.prod(shape)):
        raise ValueError(f"BlobProto holds {data.size} floats, its shape {shape} needs {int(np.prod(shape))}")
    return data.reshape(shape)
