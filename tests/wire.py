"""Hand-encoded protobuf for hostile-input tests: bytes no client library will encode (invalid UTF-8 in
a string field, messages nested beyond protobuf's limit)."""

from __future__ import annotations

from mabrouter.v1 import router_pb2 as pb

# The request message of each RPC, by method name.
METHODS = {
    "Route": pb.RouteRequest,
    "RouteBatch": pb.RouteBatchRequest,
    "ReportOutcome": pb.OutcomeRequest,
    "ReportOutcomes": pb.ReportOutcomesRequest,
}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_struct(depth: int) -> bytes:
    """A google.protobuf.Struct {"a": {"a": ... }} `depth` levels deep (3 protobuf levels each)."""
    struct = b""
    for _ in range(depth):
        value = field(5, struct)  # Value.struct_value
        struct = field(1, field(1, b"a") + field(2, value))  # Struct.fields entry {key, value}
    return struct
