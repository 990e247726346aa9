"""A contextual model's sums in a real redis-server: the trial flush adds x x^T and the outcome script
r x and r^2, each exactly once and all or nothing, and the one decoder reads them back (issue 16)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest

from mabrouter.core.features import encode_context, signature
from mabrouter.core.linear import LinearSums, linear_posterior
from mabrouter.core.model import (
    ArmSpec,
    BetaPrior,
    ContextualSpec,
    ExperimentSpec,
    NumericFeature,
    RewardKind,
)
from mabrouter.store.linear_codec import linear_sums, model_prefix
from mabrouter.store.records import OutcomeWrite, Refused, TrialCounts
from mabrouter.store.router_store import RouterStore

from support import RedisServer

CONTEXT = ContextualSpec((NumericFeature("x"), NumericFeature("y")))
SPEC = ExperimentSpec(
    "ctx",
    RewardKind.BERNOULLI,
    "a",
    (ArmSpec("a", BetaPrior()), ArmSpec("b", BetaPrior())),
    contextual=CONTEXT,
)
MODEL = signature(CONTEXT)
STATS = "mabrouter:{ctx}:stats"
T = TypeVar("T")


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([np.ones(n), rng.normal(size=(n, 2))]).astype(np.float32).astype(np.float64)


def outcome(nonce: str, vector: np.ndarray, reward: float, arm: str = "a") -> OutcomeWrite:
    return OutcomeWrite("ctx", arm, nonce, reward, True, 600, context=encode_context(MODEL, vector))


def run(redis_server: RedisServer, steps: Callable[[RouterStore], Awaitable[T]]) -> T:
    """`steps` against a RouterStore of the test's redis-server, in an event loop of its own."""

    async def go() -> T:
        store = RouterStore.from_url(redis_server.url)
        try:
            return await steps(store)
        finally:
            await store.close()

    return asyncio.run(go())


def decoded(redis_server: RedisServer) -> tuple[LinearSums, ...]:
    client = redis_server.client()
    try:
        raw = client.hgetall(STATS)
    finally:
        client.close()
    sums = linear_sums(SPEC, raw)
    assert sums is not None
    return sums


def test_flushes_and_outcomes_add_the_sums_exactly_once(redis_server: RedisServer) -> None:
    xs = vectors(40, seed=1)
    rewards = (np.arange(40) % 3 == 0).astype(float)
    first, second = TrialCounts(trials={"a": 20.0}), TrialCounts(trials={"a": 20.0})
    first.contextual[MODEL, "a"] = xs[:20].T @ xs[:20]
    second.contextual[MODEL, "a"] = xs[20:].T @ xs[20:]

    async def steps(store: RouterStore) -> list[list[bool | Refused]]:
        assert await store.add_trials("p-1", {"ctx": first}) == {}
        assert await store.add_trials("p-1", {"ctx": first}) == {}  # a retry after a lost reply
        assert await store.add_trials("p-2", {"ctx": second}) == {}
        writes = [outcome(f"n{i}", xs[i], 1.0) for i in range(40) if rewards[i]]
        applied = await store.record_outcomes(writes)
        again = await store.record_outcomes(writes)  # the caller retried every one
        return [applied, again]

    applied, again = run(redis_server, steps)
    assert all(result is True for result in applied)
    assert all(result is False for result in again)
    sums = decoded(redis_server)
    direct = LinearSums.of(xs, rewards)
    np.testing.assert_allclose(sums[0].xx, direct.xx, rtol=1e-12)
    np.testing.assert_allclose(sums[0].rx, direct.rx, rtol=1e-6)  # rewards times float32 columns
    assert sums[0].rr == float(rewards.sum())
    assert sums[1].decisions == 0.0
    posterior = linear_posterior(sums[0], 1.0, RewardKind.BERNOULLI)
    np.testing.assert_allclose(
        posterior.mean, linear_posterior(direct, 1.0, RewardKind.BERNOULLI).mean, rtol=1e-5
    )


def test_an_outcome_the_sums_cannot_absorb_writes_nothing_of_itself(redis_server: RedisServer) -> None:
    client = redis_server.client()
    bad = f"{model_prefix(MODEL, 'b')}:rx:1"
    client.hset(STATS, mapping={bad: "abc", "b:count": "3"})
    xs = vectors(2, seed=2)

    async def steps(store: RouterStore) -> list[bool | Refused]:
        return await store.record_outcomes(
            [outcome("good", xs[0], 1.0), outcome("stuck", xs[1], 1.0, arm="b")]
        )

    good, stuck = run(redis_server, steps)
    assert good is True
    assert isinstance(stuck, Refused)
    assert (stuck.reason, stuck.field, stuck.stored) == ("unreadable", bad, "abc")
    stored = client.hgetall(STATS)
    assert stored["b:count"] == "3"  # its count did not move either
    assert f"{model_prefix(MODEL, 'b')}:rr" not in stored
    assert not client.exists("mabrouter:{ctx}:seen:stuck")  # so a retry after the repair counts it
    client.close()


def test_an_uncounted_outcome_leaves_the_model_alone(redis_server: RedisServer) -> None:
    write = OutcomeWrite(
        "ctx", "a", "forced", 1.0, False, 600, context=encode_context(MODEL, vectors(1, 3)[0])
    )

    async def steps(store: RouterStore) -> list[bool | Refused]:
        return await store.record_outcomes([write])

    assert run(redis_server, steps) == [True]
    assert decoded(redis_server)[0].rr == 0.0


@pytest.mark.parametrize("columns", [3, 33])
def test_a_flush_of_the_widest_model_fits_one_script(redis_server: RedisServer, columns: int) -> None:
    """33 columns (32 features and the intercept) over 5 arms: 2,805 fields in one all-or-nothing call."""
    counts = TrialCounts(trials={f"arm{k}": 10.0 for k in range(5)})
    rng = np.random.default_rng(4)
    for k in range(5):
        xs = rng.normal(size=(10, columns))
        counts.contextual["feedbeef", f"arm{k}"] = xs.T @ xs

    async def steps(store: RouterStore) -> dict[str, Refused]:
        return await store.add_trials("wide", {"ctx": counts})

    assert run(redis_server, steps) == {}
    client = redis_server.client()
    fields = [f for f in client.hkeys(STATS) if f.startswith("~feedbeef|")]
    client.close()
    assert len(fields) == 5 * columns * (columns + 1) // 2
