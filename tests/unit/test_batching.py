"""The pieces of the hot path that need no broker: rounds per key, group commit, fetch
pacing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from shared.batching import Coalescer
from shared.messaging.consumer import rounds
from shared.messaging.fetch import FetchPacer
from tests.support import wait_for


def test_rounds_hold_one_event_per_key_and_keep_each_keys_order() -> None:
    events = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)]
    assert rounds(events, key=lambda e: e[0]) == [
        [("a", 1), ("b", 1), ("c", 1)],
        [("a", 2), ("b", 2)],
        [("a", 3)],
    ]
    assert rounds([], key=lambda e: e) == []


async def test_calls_that_arrive_together_share_one_flush_and_get_their_own_results() -> None:
    flushed: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        flushed.append(list(items))
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(flush)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert flushed == [[0, 1, 2, 3, 4]]
    assert (coalescer.flushes, coalescer.items) == (1, 5)


async def test_calls_made_during_a_flush_go_to_the_next_one() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    flushed: list[list[str]] = []

    async def flush(items: Sequence[str]) -> list[None]:
        flushed.append(list(items))
        if len(flushed) == 1:
            started.set()
            await release.wait()
        return [None] * len(items)

    coalescer: Coalescer[str, None] = Coalescer(flush)
    first = asyncio.create_task(coalescer.submit("first"))
    await started.wait()  # the first flush is running, and held
    later = [asyncio.create_task(coalescer.submit(x)) for x in ("b", "c")]
    # both calls queued behind the running flush
    await wait_for(lambda: len(coalescer._queue) == 2, timeout=5, interval=0.001)
    assert flushed == [["first"]]
    release.set()
    await asyncio.gather(first, *later)
    assert flushed == [["first"], ["b", "c"]]


async def test_a_failed_flush_fails_each_of_its_callers_and_not_the_next() -> None:
    calls = 0

    async def flush(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database gone")
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(flush)
    outcomes = await asyncio.gather(
        coalescer.submit(1), coalescer.submit(2), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert await coalescer.submit(3) == 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_fetch_waits_as_long_as_it_has_been_quiet_within_bounds() -> None:
    clock = FakeClock()
    pacer = FetchPacer(min_ms=25, max_ms=500, monotonic=clock)
    pacer.records_seen()
    assert pacer.wait_ms() == 25  # right after records: the least wait
    clock.now += 0.2
    assert pacer.wait_ms() == 200  # quiet for 200 ms: wait as long
    clock.now += 10
    assert pacer.wait_ms() == 500  # idle: the longest wait
    pacer.records_seen()
    assert pacer.wait_ms() == 25


class Fetcher:
    """What FetchPacer needs of aiokafka's fetcher: the wait, and the request builder."""

    def __init__(self) -> None:
        self._fetch_max_wait_ms = 500
        self.built: list[int] = []

    def _get_actions_per_node(self, assignment: Any) -> Any:
        self.built.append(self._fetch_max_wait_ms)
        return (["request"], {}, 0.2, False, [])


class Consumer:
    def __init__(self) -> None:
        self._fetcher = Fetcher()


def test_fetches_start_at_most_every_min_ms_with_the_paced_wait() -> None:
    clock = FakeClock()
    pacer = FetchPacer(min_ms=25, max_ms=500, monotonic=clock)
    consumer = Consumer()
    assert pacer.attach(consumer)
    actions = consumer._fetcher._get_actions_per_node
    pacer.records_seen()
    requests, _, _, _, _ = actions(None)
    assert requests == ["request"]
    clock.now += 0.010
    requests, _, timeout, _, _ = actions(None)
    assert requests == [] and timeout == pytest.approx(0.015)  # 15 ms to go
    clock.now += 0.015
    requests, _, _, _, _ = actions(None)
    assert requests == ["request"]
    assert consumer._fetcher.built[-1] == 25


def test_fetches_are_spaced_more_as_more_records_arrive_and_less_as_they_stop() -> None:
    clock = FakeClock()
    pacer = FetchPacer(min_ms=25, max_ms=500, busy_ms=100, full_rate=1000, monotonic=clock)
    assert pacer.spacing_ms() == 25  # nothing arrived yet
    for _ in range(10):  # a trickle: 10 records/s
        clock.now += 0.1
        pacer.records_seen(1)
    assert pacer.rate() == pytest.approx(6.3, abs=0.5)  # the count decays over about 1 s
    assert pacer.spacing_ms() == pytest.approx(25, abs=1)
    for _ in range(50):  # a stream: 2,000 records/s, 40 every 20 ms
        clock.now += 0.02
        pacer.records_seen(40)
    assert pacer.rate() > 1000
    assert pacer.spacing_ms() == 100  # at or past full_rate: the longest spacing
    clock.now += 1.5  # the stream stopped
    assert 25 < pacer.spacing_ms() < 50
    clock.now += 5
    assert pacer.spacing_ms() == pytest.approx(25, abs=0.5)


def test_under_a_stream_a_fetch_starts_only_after_the_longer_spacing() -> None:
    clock = FakeClock()
    pacer = FetchPacer(min_ms=25, max_ms=500, busy_ms=100, full_rate=1000, monotonic=clock)
    consumer = Consumer()
    assert pacer.attach(consumer)
    actions = consumer._fetcher._get_actions_per_node
    pacer.records_seen(5000)  # far more than full_rate in the last second
    requests, _, _, _, _ = actions(None)
    assert requests == ["request"]
    clock.now += 0.05
    requests, _, timeout, _, _ = actions(None)
    assert requests == [] and timeout == pytest.approx(0.05, abs=0.005)
    clock.now += 0.05
    requests, _, _, _, _ = actions(None)
    assert requests == ["request"]


def test_a_consumer_without_the_expected_fetcher_keeps_its_fixed_waits() -> None:
    pacer = FetchPacer(min_ms=25, max_ms=500)
    assert pacer.attach(object()) is False
