"""An OpenFeature provider: evaluate a mabrouter experiment as a string flag, report rewards with ``track``.

Needs ``openfeature-sdk>=0.10`` (0.9 brought the tracking API, 0.10 ``set_provider_and_wait``; the provider
itself also works with 0.9). Routing fails open exactly like
:class:`~mabrouter.client.RouterClient`: a slow, missing or misbehaving router yields the flag's default
value with reason ``ERROR`` within the deadline, never an exception.

Evaluation: the flag key is the experiment, ``EvaluationContext.targeting_key`` the unit id, the default
value the ``default_arm``, and the resolved value (and variant) the arm to serve::

    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.track import TrackingEventDetails
    from mabrouter.openfeature import MabrouterProvider

    api.set_provider_and_wait(MabrouterProvider(target="127.0.0.1:50051"))  # at start-up
    flags = api.get_client()
    context = EvaluationContext(targeting_key=user_id, attributes={"country": "DE"})
    details = flags.get_string_details("ranker", "ranker-v1", context)
    serve(details.value, details.flag_metadata.get("payload.endpoint"))
    ...
    flags.track("reward", context, TrackingEventDetails(
        value=1.0, attributes={"decision_id": details.flag_metadata["decision_id"]}))

In-process, as flagd's in-process resolver: ``MabrouterProvider.in_process()`` decides in this process with
an :class:`~mabrouter.embedded.EmbeddedRouter` of its own (``MABROUTER_*`` settings, the same Redis as the
sidecars; started by ``initialize``, flushed and closed by ``shutdown``), or pass a started one as
``MabrouterProvider(router)``. Same mapping, same metadata, no gRPC call per evaluation; asynchronous
evaluations do not use a worker thread. Register it after a pre-forking server forks.

``flag_metadata`` holds ``decision_id`` (str, ``""`` when nothing was decided), ``propensity`` (float),
``config_version`` (int), ``mabrouter_reason`` (the router's reason, or ``CLIENT_FALLBACK``) and one
``payload.<key>`` (str) entry per payload entry of the arm.

Reasons (the exact mabrouter reason is always in ``flag_metadata["mabrouter_reason"]``):

=======================================  ===================  ==================================
mabrouter                                OpenFeature reason   error code
=======================================  ===================  ==================================
SAMPLED, STICKY                          SPLIT
FORCED (allow-list)                      TARGETING_MATCH
NOT_TARGETED, NOT_EXPOSED, DENIED        DEFAULT              (the control arm is served)
KILLED                                   DISABLED             (the control arm is served)
STALE_CONTROL                            STALE                (the control arm is served)
FALLBACK_DEFAULT (router not loaded)     ERROR                PROVIDER_NOT_READY
client fallback: NOT_FOUND / bad name    ERROR                FLAG_NOT_FOUND
client fallback: INVALID_ARGUMENT        ERROR                INVALID_CONTEXT
client fallback: anything else           ERROR                GENERAL (deadline, router down...)
a reason newer than this module          UNKNOWN
=======================================  ===================  ==================================

STICKY maps to SPLIT, not CACHED: the arm is the unit's persisted share of the split, not a cached
evaluation. A missing or empty targeting key gives the default with ``TARGETING_KEY_MISSING``. An
experiment is a string flag: boolean, integer, float and object evaluations give the default with
``TYPE_MISMATCH`` (read the arm's payload from ``flag_metadata`` instead).

Attributes: str, bool, finite int/float and lists of str are sent as they are; nested mappings are
flattened to dotted names (``{"user": {"tier": "gold"}}`` -> ``user.tier``); anything else (datetime,
lists of non-strings, NaN...) is **dropped** with a WARNING once per attribute name, so an unrelated
attribute in a global context never makes an experiment fall back.

Tracking convention: ``track(name, context, TrackingEventDetails(value=reward, attributes={"decision_id":
id}))`` reports ``reward`` for ``id`` through an :class:`~mabrouter.client.OutcomeReporter` (buffered,
retried until acknowledged, counted once). ``value`` omitted means 1.0 (a conversion; report only
successes if you like). A missing or non-string ``decision_id`` is logged as a WARNING (once per event
name) and ignored; an empty one (a fallback evaluation) is ignored silently. With ``tracking_events``
set, only those event names are reported. ``shutdown()`` flushes the reporter, then closes what the
provider created; asynchronous evaluations run the blocking client in a worker thread.
"""

from __future__ import annotations

from mabrouter.openfeature._mapping import DECISION_ID, PAYLOAD_PREFIX
from mabrouter.openfeature._provider import MabrouterProvider

__all__ = ["DECISION_ID", "PAYLOAD_PREFIX", "MabrouterProvider"]
