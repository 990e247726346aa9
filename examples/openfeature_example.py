"""Evaluate a mabrouter experiment as an OpenFeature string flag, then track its reward.

    pip install 'mabrouter[openfeature]'
    python examples/openfeature_example.py --address 127.0.0.1:50051 --unit-id user-42 --reward 1

Prints the flag evaluation as a JSON line. In a service, register the provider once at start-up,
evaluate per request, track when the outcome is known, and call api.shutdown() when stopping (it
flushes the rewards still buffered).
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.track import TrackingEventDetails

from mabrouter.openfeature import MabrouterProvider


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="the router sidecar (host:port)")
    parser.add_argument("--experiment", default="ranker", help="the flag key")
    parser.add_argument("--unit-id", default=f"user-{uuid.uuid4().hex[:8]}", help="the targeting key")
    parser.add_argument("--default-arm", default="ranker-v1", help="served when the router cannot answer")
    parser.add_argument("--reward", type=float, default=1.0, help="the outcome, e.g. 1 for a click")
    parser.add_argument("--timeout", type=float, default=0.05, help="evaluation deadline in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # Blocks until the provider has connected (up to its ready_timeout, 1 s): with plain set_provider,
    # evaluations made before initialization finishes serve the default (PROVIDER_NOT_READY).
    api.set_provider_and_wait(MabrouterProvider(target=args.address, timeout=args.timeout))
    flags = api.get_client()
    try:
        context = EvaluationContext(
            targeting_key=args.unit_id, attributes={"country": "DE", "user": {"tier": "gold"}}
        )
        details = flags.get_string_details(args.experiment, args.default_arm, context)
        print(
            json.dumps(
                {
                    "event": "evaluate",
                    "arm": details.value,
                    "reason": str(details.reason),
                    "error_code": str(details.error_code) if details.error_code else None,
                    "metadata": dict(details.flag_metadata),
                }
            )
        )
        # ... serve the request with details.value / details.flag_metadata["payload.endpoint"] ...

        # Report the outcome: the decision id comes from the evaluation's flag metadata. A fallback
        # evaluation has an empty decision id, which the provider ignores.
        flags.track(
            "reward",
            context,
            TrackingEventDetails(
                value=args.reward, attributes={"decision_id": details.flag_metadata.get("decision_id", "")}
            ),
        )
    finally:
        api.shutdown()  # shuts the provider down: flushes the buffered rewards, closes the channel
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
