"""Request bytes -> messages, without letting a parse failure reach grpc's own error path.

grpc turns an exception from a deserializer into UNKNOWN with the exception's class name, and logs a traceback
for every such call. Parsing here instead yields a `MalformedRequest` value for anything protobuf refuses, and
names the field at fault where the bytes allow it (invalid UTF-8 in a string field, a truncated field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

_NESTING_LIMIT = 32  # deeper than any message of this API; protobuf's own limit is 100


@dataclass(frozen=True)
class MalformedRequest:
    """What a request's bytes became when they are not a valid message."""

    message: str
    field: str | None = None


class _Broken(Exception):
    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def deserializer(message_type: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    """A grpc request deserializer that never raises."""

    def parse(data: bytes) -> Message | MalformedRequest:
        message = message_type()
        try:
            message.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError):
            return diagnose(message_type.DESCRIPTOR, data)
        return message

    return parse


def diagnose(descriptor: Descriptor, data: bytes) -> MalformedRequest:
    """Why `data` is not a valid `descriptor` message, naming the field (dotted path) when it can be found."""
    try:
        _walk(descriptor, data, "", 0)
    except _Broken as broken:
        return MalformedRequest(broken.message, broken.field)
    return MalformedRequest(f"is not a valid {descriptor.name} message")


def _varint(data: bytes, pos: int, field: str | None) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Broken("is truncated or malformed protobuf", field)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _walk(descriptor: Descriptor, data: bytes, prefix: str, depth: int) -> None:
    """Raises `_Broken` at the first field that makes `data` invalid."""
    if depth > _NESTING_LIMIT:
        raise _Broken("nests too deeply", prefix.rstrip(".") or None)
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, prefix.rstrip(".") or None)
        number, wire_type = key >> 3, key & 7
        known = descriptor.fields_by_number.get(number)
        name = prefix + known.name if known is not None else (prefix.rstrip(".") or None)
        if number == 0:
            raise _Broken("has a field numbered 0 (not valid protobuf)", name)
        if wire_type == 0:
            _, pos = _varint(data, pos, name)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(data, pos, name)
            chunk = data[pos:pos + length]
            if len(chunk) < length:
                raise _Broken("is truncated", name)
            pos += length
            if known is not None and known.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Broken("is not valid UTF-8", name) from None
            elif known is not None and known.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(known.message_type, chunk, f"{name}.", depth + 1)
        else:  # groups (3, 4) are not used by this API; 6 and 7 do not exist
            raise _Broken("is malformed protobuf (unexpected wire type)", name)
        if pos > len(data):
            raise _Broken("is truncated", name)
