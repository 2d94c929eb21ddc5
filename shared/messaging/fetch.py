"""Fetch waits that follow the traffic.

A Kafka consumer asks the broker for records with a maximum wait: Apache Kafka answers
as soon as records arrive, but the embedded broker (Tansu 0.6) looks again only after half
of the remaining wait each time (at 250, 375, 437 ms of a 500 ms wait; measured here: a
record produced at a random moment of a 500 ms wait arrived after p50 93 ms, max 222).
A short wait keeps latency low and costs a fetch request, on both sides, every few
milliseconds; a long wait costs latency. :class:`FetchPacer` gives each fetch a
wait as long as the time since records last arrived, between ``min_ms`` and ``max_ms``:
right after traffic a record waits a few milliseconds, after a quiet spell the consumer
asks about twice a second, and an idle system is idle. Against Apache Kafka the pacing
changes little: its fetches return on arrival whatever their wait.

A fetch costs the embedded broker 1 to 7 ms of CPU whether it brings records or not (more
the more partitions it asks about; measured in docs/performance.md) and the consumer about
as much again. So fetches also start at most every ``min_ms``: under a trickle of records
the records of that interval come in one fetch, one batch, one transaction, instead of a
fetch and a transaction each.

Under heavy traffic the spacing follows the load: every batch costs the same fetch,
transaction, offset commit, relay round and produce whatever its size, so while records
arrive at ``full_rate`` records/s or more, fetches start at most every ``busy_ms``, and in
between the spacing grows in proportion to the arrival rate (an exponentially decaying
count over about a second). A trickle is fetched every ``min_ms`` as before (its latency
stays low and its batches are small anyway); a stream is fetched in fewer, larger batches,
which leaves the CPU of a loaded machine to the work instead of to the fixed cost of
batches, and so lowers the latency of every hop at high load (docs/performance.md).

aiokafka has no hook for this: the pacer sets the fetcher's wait just before the fetcher
builds each request (a private attribute of aiokafka 0.14, which the project pins). If
that ever changes, the consumer keeps its configured ``fetch_max_wait_ms`` and a warning
says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("waybill.fetch")

#: the share of the quiet time that the next fetch may wait
GROWTH = 1.0
#: the arrival rate is a count of records that decays by e over this many seconds
RATE_SECONDS = 1.0


class FetchPacer:
    def __init__(
        self,
        *,
        min_ms: int,
        max_ms: int,
        busy_ms: int | None = None,
        full_rate: float = 1000.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_ms = min(min_ms, max_ms)
        self.max_ms = max_ms
        #: fetches start at most this often at ``full_rate`` records/s (None: ``min_ms``)
        self.busy_ms = max(self.min_ms, busy_ms if busy_ms is not None else self.min_ms)
        self.full_rate = max(full_rate, 1e-9)
        self._monotonic = monotonic
        self._last_records = monotonic()
        self._last_fetch = 0.0
        self._recent = 0.0  # records seen, decayed by e every RATE_SECONDS
        self._recent_at = self._last_records
        self._paced: set[int] = set()

    def records_seen(self, count: int = 1) -> None:
        """``count`` records just arrived: the next fetches wait little."""
        now = self._monotonic()
        self._recent = self._decayed(now) + count
        self._recent_at = self._last_records = now

    def _decayed(self, now: float) -> float:
        return self._recent * math.exp(-max(0.0, now - self._recent_at) / RATE_SECONDS)

    def rate(self) -> float:
        """Records per second arriving lately (about the last second weighs most)."""
        return self._decayed(self._monotonic()) / RATE_SECONDS

    def spacing_ms(self) -> float:
        """The least time between the starts of two fetches: ``min_ms`` for a trickle,
        growing with the arrival rate up to ``busy_ms`` at ``full_rate``."""
        if self.busy_ms <= self.min_ms:
            return float(self.min_ms)
        share = min(1.0, self.rate() / self.full_rate)
        return self.min_ms + (self.busy_ms - self.min_ms) * share

    def wait_ms(self) -> int:
        quiet_ms = (self._monotonic() - self._last_records) * 1000
        return int(max(self.min_ms, min(self.max_ms, quiet_ms * GROWTH)))

    def attach(self, consumer: Any) -> bool:
        """Pace ``consumer``'s fetches (an AIOKafkaConsumer that has started); True when
        paced now or already."""
        fetcher = getattr(consumer, "_fetcher", None)
        build = getattr(fetcher, "_get_actions_per_node", None)
        if fetcher is None or build is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
            log.warning("cannot pace this consumer's fetches (aiokafka changed?): fixed waits")
            return False
        if id(fetcher) in self._paced:
            return True

        def paced_actions(*args: Any, **kwargs: Any) -> Any:
            fetcher._fetch_max_wait_ms = self.wait_ms()
            requests, resets, timeout, invalid, resumes = build(*args, **kwargs)
            if requests:
                now = self._monotonic()
                early = self._last_fetch + self.spacing_ms() / 1000 - now
                if early > 0:  # not yet: the fetcher asks again after ``early`` seconds
                    return [], resets, min(timeout, early) if timeout else early, invalid, resumes
                self._last_fetch = now
            return requests, resets, timeout, invalid, resumes

        fetcher._get_actions_per_node = paced_actions
        self._paced = {id(fetcher)}
        return True
