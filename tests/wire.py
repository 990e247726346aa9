"""The wire by hand: protobuf bytes no client library will encode (invalid UTF-8 in a string field,
messages nested beyond protobuf's limit), the request message of each RPC, and the unpadded base64url of
decision ids (docs/contract.md "Decision ids")."""

from __future__ import annotations

import base64
import hmac

from mabrouter.core.decision_id import MAC_BYTES
from mabrouter.v1 import router_pb2 as pb

from support import DECISION_SECRET

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


def b64(data: bytes) -> str:
    """Unpadded base64url, as decision ids spell their payload and MAC."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def nonce_of(decision_id: str) -> str:
    """The nonce inside a decision id (docs/contract.md "Decision ids": payload field 6)."""
    return unb64(decision_id.partition(".")[0]).decode().split("|")[5]


def sign(payload: bytes, key: bytes = DECISION_SECRET.encode()) -> str:
    """An id for any payload, signed with `key` (default: the test routers' secret):
    base64url(payload) "." base64url(truncated HMAC-SHA256)."""
    return f"{b64(payload)}.{b64(hmac.digest(key, payload, 'sha256')[:MAC_BYTES])}"


def resign(decision_id: str, replacements: list[bytes | None]) -> str:
    """`decision_id` with payload field i replaced by replacements[i] (None keeps it; fields past the end
    are appended), signed again with the routers' secret: its signature verifies, its fields must not.
    What a holder of a leaked secret (or a buggy router) could send."""
    fields = unb64(decision_id.partition(".")[0]).split(b"|")
    for index, value in enumerate(replacements):
        if value is None:
            continue
        if index < len(fields):
            fields[index] = value
        else:
            fields.append(value)
    return sign(b"|".join(fields))
