"""The limits on a request's attributes and the refusals that name them: one set of rules for both ways
in, the gRPC Struct (service/convert.py) and the in-process router's Python mapping (mabrouter.embedded).

No protobuf here: the in-process router uses these without touching the wire.
"""

from __future__ import annotations

from mabrouter.errors import InvalidRequestError

MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_CHARS = 128
MAX_ATTRIBUTE_STRING_CHARS = 1024
MAX_ATTRIBUTE_LIST_ITEMS = 64


def too_many_attributes(count: int) -> InvalidRequestError:
    return InvalidRequestError(f"{count} attributes sent; the limit is {MAX_ATTRIBUTES}")


def name_too_long(key: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"attribute name {key[:40]!r}... is longer than {MAX_ATTRIBUTE_KEY_CHARS} characters"
    )


def string_too_long(key: str, length: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"attribute {key!r} is {length} characters; the limit is {MAX_ATTRIBUTE_STRING_CHARS}"
    )


def list_too_long(key: str, length: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"attribute {key!r} has {length} items; the limit is {MAX_ATTRIBUTE_LIST_ITEMS}"
    )


def list_not_strings(key: str) -> InvalidRequestError:
    return InvalidRequestError(f"attribute {key!r}: lists may only hold strings")


def nested_object(key: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"attribute {key!r}: nested objects are not supported; flatten them (e.g. 'user.tier')"
    )
