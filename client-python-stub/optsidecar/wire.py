"""Protocol-buffer wire encoding of the bulk-data messages, by hand.

Chunks carry up to 1 MiB of float32 bytes. Building them through the generated message classes
would copy those bytes three times (into a ``bytes`` object, into the message, and out again when
serialising); here the header is encoded by hand and joined with a memoryview of the tensor, so
each chunk's payload is copied exactly once, straight from the tensor into the outgoing message.
Received chunks are parsed the same way: the payload stays a memoryview of the message until it
is copied into its destination. Everything else (specs, commits, results) goes through the
generated classes. The encodings are the canonical ones protobuf itself produces (fields in number
order, zero-valued fields omitted); tests check them against the generated classes.
"""

from __future__ import annotations

from typing import Union

from google.protobuf.message import Message

from .errors import ProtocolError
from .v1 import optimizer_pb2 as pb

__all__ = [
    "Encoded",
    "ReceivedChunk",
    "serialize",
    "gradient_chunk",
    "register_weights_chunk",
    "register_state_chunk",
    "parse_weights_chunk",
    "parse_step_response",
]

# Wire types.
_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5


def _tag(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _uint_field(field: int, value: int) -> bytes:
    # proto3 leaves zero-valued scalars out of the encoding.
    return _tag(field, _VARINT) + _varint(value) if value else b""


class Encoded:
    """A request already in wire format; :func:`serialize` passes it through untouched."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


def serialize(request: Union[Encoded, Message]) -> bytes:
    """Request serializer for the channel: pre-encoded chunks as they are, messages via protobuf."""
    if type(request) is Encoded:
        return request.data
    return request.SerializeToString()


_STEP_REQUEST_CHUNK = _tag(2, _LEN)  # StepRequest.chunk
_REGISTER_WEIGHTS = _tag(2, _LEN)  # RegisterRequest.weights
_REGISTER_STATE = _tag(3, _LEN)  # RegisterRequest.state
_DATA = _tag(15, _LEN)  # the bytes field of every chunk message


def _wrap(outer_tag: bytes, header: bytes, data: memoryview) -> Encoded:
    """Outer field holding a chunk message: header fields, then the data field, last."""
    data_prefix = _DATA + _varint(data.nbytes)
    inner_length = len(header) + len(data_prefix) + data.nbytes
    return Encoded(b"".join((outer_tag, _varint(inner_length), header, data_prefix, data)))


def gradient_chunk(step_id: int, tensor: int, offset: int, data: memoryview) -> Encoded:
    """``StepRequest{chunk: GradientChunk{step_id, tensor, offset, data}}``."""
    header = _uint_field(1, step_id) + _uint_field(2, tensor) + _uint_field(3, offset)
    return _wrap(_STEP_REQUEST_CHUNK, header, data)


def register_weights_chunk(tensor: int, offset: int, data: memoryview) -> Encoded:
    """``RegisterRequest{weights: WeightsChunk{tensor, offset, data}}`` (view and version unused)."""
    header = _uint_field(3, tensor) + _uint_field(4, offset)
    return _wrap(_REGISTER_WEIGHTS, header, data)


def register_state_chunk(tensor: int, slot: str, offset: int, data: memoryview) -> Encoded:
    """``RegisterRequest{state: StateChunk{tensor, slot, offset, data}}``."""
    slot_bytes = slot.encode("utf-8")
    header = _uint_field(1, tensor)
    if slot_bytes:
        header += _tag(2, _LEN) + _varint(len(slot_bytes)) + slot_bytes
    header += _uint_field(3, offset)
    return _wrap(_REGISTER_STATE, header, data)


# ---------------------------------------------------------------------------------------------
# Decoding


class ReceivedChunk:
    """A received ``WeightsChunk`` whose payload is still a memoryview of the message bytes."""

    __slots__ = ("view", "version", "tensor", "offset", "data")

    def __init__(self, view: pb.View, version: int, tensor: int, offset: int, data: memoryview):
        self.view = view
        self.version = version
        self.tensor = tensor
        self.offset = offset
        self.data = data


def _read_varint(buf: memoryview, pos: int, end: int) -> "tuple[int, int]":
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError("truncated varint in a message from the server")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("over-long varint in a message from the server")


def _skip(buf: memoryview, pos: int, end: int, wire_type: int) -> int:
    if wire_type == _VARINT:
        return _read_varint(buf, pos, end)[1]
    if wire_type == _I64:
        return pos + 8
    if wire_type == _LEN:
        length, pos = _read_varint(buf, pos, end)
        return pos + length
    if wire_type == _I32:
        return pos + 4
    raise ProtocolError(f"unsupported wire type {wire_type} in a message from the server")


def _parse_chunk(buf: memoryview, pos: int, end: int) -> ReceivedChunk:
    view = pb.View()
    version = tensor = offset = 0
    data = buf[0:0]
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if wire_type == _LEN:
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise ProtocolError("truncated WeightsChunk from the server")
            if field == 1:
                view = pb.View.FromString(bytes(buf[pos:pos + length]))
            elif field == 15:
                data = buf[pos:pos + length]
            pos += length
        elif wire_type == _VARINT and field in (2, 3, 4):
            value, pos = _read_varint(buf, pos, end)
            if field == 2:
                version = value
            elif field == 3:
                tensor = value
            else:
                offset = value
        else:
            pos = _skip(buf, pos, end, wire_type)
    if pos != end:
        raise ProtocolError("truncated WeightsChunk from the server")
    return ReceivedChunk(view, version, tensor, offset, data)


def parse_weights_chunk(message: bytes) -> ReceivedChunk:
    """Response deserializer for Pull: one ``WeightsChunk``."""
    buf = memoryview(message)
    return _parse_chunk(buf, 0, len(buf))


def parse_step_response(message: bytes) -> Union[ReceivedChunk, pb.StepResult]:
    """Response deserializer for Step: a weights chunk, or the ``StepResult`` that closes a step."""
    buf = memoryview(message)
    end = len(buf)
    pos = 0
    parsed: Union[ReceivedChunk, pb.StepResult, None] = None
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if wire_type != _LEN:
            pos = _skip(buf, pos, end, wire_type)
            continue
        length, pos = _read_varint(buf, pos, end)
        if pos + length > end:
            raise ProtocolError("truncated StepResponse from the server")
        if field == 1:
            parsed = _parse_chunk(buf, pos, pos + length)
        elif field == 2:
            parsed = pb.StepResult.FromString(bytes(buf[pos:pos + length]))
        pos += length
    if pos != end:
        raise ProtocolError("truncated StepResponse from the server")
    if parsed is None:
        raise ProtocolError("empty StepResponse from the server")
    return parsed
