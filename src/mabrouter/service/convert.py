"""proto <-> core conversion, with the limits that keep one request from costing too much."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import struct_pb2

from mabrouter.core.decide import AttributeValue, RouteInput
from mabrouter.runtime.engine import Routed
from mabrouter.service.attributes import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_LIST_ITEMS,
    MAX_ATTRIBUTE_STRING_CHARS,
    MAX_ATTRIBUTES,
    list_not_strings,
    list_too_long,
    name_too_long,
    nested_object,
    string_too_long,
    too_many_attributes,
)
from mabrouter.v1 import router_pb2


def _attribute(key: str, value: struct_pb2.Value) -> AttributeValue | None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if len(text) > MAX_ATTRIBUTE_STRING_CHARS:
            raise string_too_long(key, len(text))
        return text
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        items = value.list_value.values
        if len(items) > MAX_ATTRIBUTE_LIST_ITEMS:
            raise list_too_long(key, len(items))
        if any(item.WhichOneof("kind") != "string_value" for item in items):
            raise list_not_strings(key)
        return tuple(item.string_value for item in items)
    if kind == "null_value" or kind is None:
        return None
    raise nested_object(key)


def attributes_from_struct(struct: struct_pb2.Struct) -> dict[str, AttributeValue]:
    fields = struct.fields
    if not fields:
        return {}
    if len(fields) > MAX_ATTRIBUTES:
        raise too_many_attributes(len(fields))
    result: dict[str, AttributeValue] = {}
    for key, value in fields.items():
        if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            raise name_too_long(key)
        kind = value.WhichOneof("kind")
        # Short strings and booleans, the common cases, inline; everything else (and errors) in _attribute.
        if kind == "string_value":
            text = value.string_value
            if len(text) <= MAX_ATTRIBUTE_STRING_CHARS:
                result[key] = text
                continue
        elif kind == "bool_value":
            result[key] = value.bool_value
            continue
        converted = _attribute(key, value)
        if converted is not None:
            result[key] = converted
    return result


def route_input(request: router_pb2.RouteRequest) -> RouteInput:
    return RouteInput(
        request.experiment,
        request.unit_id,
        attributes_from_struct(request.attributes),
        request.default_arm,
    )


class ResponseBuilder:
    """Builds RouteResponses. An arm's payload is the same map for every decision of a snapshot, so it
    is converted to a proto once (per payload mapping, kept while the snapshot is in use) and merged
    into each response, instead of being copied entry by entry every time."""

    __slots__ = ("_payloads",)

    MAX_CACHED = 1024  # payload maps: arms x experiments x live snapshots, bounded anyway

    def __init__(self) -> None:
        # id(payload mapping) -> (the mapping, kept alive so its id stays unique; a response with it)
        self._payloads: dict[int, tuple[Mapping[str, str], router_pb2.RouteResponse]] = {}

    def _payload(self, payload: Mapping[str, str]) -> router_pb2.RouteResponse:
        cached = self._payloads.get(id(payload))
        if cached is not None and cached[0] is payload:
            return cached[1]
        if len(self._payloads) >= self.MAX_CACHED:
            self._payloads.clear()  # older snapshots' maps: rebuilt on demand
        template = router_pb2.RouteResponse(payload=payload)
        self._payloads[id(payload)] = (payload, template)
        return template

    def response(self, routed: Routed) -> router_pb2.RouteResponse:
        response = router_pb2.RouteResponse()
        self.fill(response, routed)
        return response

    def fill(self, response: router_pb2.RouteResponse, routed: Routed) -> None:
        """Write `routed` into an empty response. RouteBatch fills its results in place: half the cost
        of building each response and copying it into the list. (Setting the fields one by one is also
        faster than passing them to the constructor.)"""
        decision = routed.decision
        response.arm = decision.arm
        response.decision_id = routed.decision_id
        response.reason = router_pb2.Reason.ValueType(decision.reason.value)
        response.propensity = decision.propensity
        response.config_version = decision.config_version
        if routed.stale:
            response.stale = True
        if decision.shadow_arm:
            response.shadow_arm = decision.shadow_arm
        if decision.payload:
            response.MergeFrom(self._payload(decision.payload))
