"""Route one request through the mabrouter sidecar, then report its outcome.

    python examples/python_client.py --address 127.0.0.1:50051 --unit-id user-42 --reward 1

Prints the assignment and the reporter's counters as JSON lines. In a service, create the client and
the reporter once at start-up, call route() per request and report() when the outcome is known.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import uuid

from mabrouter.client import OutcomeReporter, RouterClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="the router sidecar (host:port)")
    parser.add_argument("--experiment", default="ranker")
    parser.add_argument("--unit-id", default=f"user-{uuid.uuid4().hex[:8]}", help="user/session being routed")
    parser.add_argument("--default-arm", default="ranker-v1", help="served when the router cannot answer")
    parser.add_argument("--reward", type=float, default=1.0, help="the outcome, e.g. 1 for a click")
    parser.add_argument("--timeout", type=float, default=0.05, help="route() deadline in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with RouterClient(args.address, timeout=args.timeout) as client:
        client.wait_ready(1.0)  # at start-up: connect before the first request
        assignment = client.route(
            args.experiment,
            args.unit_id,
            attributes={"country": "DE", "premium": True},
            default_arm=args.default_arm,
        )
        print(json.dumps({"event": "route", **dataclasses.asdict(assignment)}))
        # ... serve the request with assignment.arm / assignment.payload["endpoint"] ...

        with OutcomeReporter(client) as reporter:  # leaving the block flushes (close), up to 5 s
            reporter.report(assignment.decision_id, args.reward)  # non-blocking; "" is ignored
        print(json.dumps({"event": "outcomes", **dataclasses.asdict(reporter.stats())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
