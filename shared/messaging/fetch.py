"""Fetch waits that follow the traffic.

A Kafka consumer asks the broker for records with a maximum wait: Apache Kafka answers
as soon as records arrive, but the embedded broker (Tansu 0.6) answers only when the wait
is over (INFRA.md; measured here: a record produced during a 500 ms wait arrives 250 ms
late on average). A short wait keeps latency low and costs a fetch request, on both sides,
every few milliseconds; a long wait costs latency. :class:`FetchPacer` gives each fetch a
wait as long as the time since records last arrived, between ``min_ms`` and ``max_ms``:
right after traffic a record waits a few milliseconds, after a quiet spell the consumer
asks about twice a second, and an idle system is idle. Against Apache Kafka the pacing
changes little: its fetches return on arrival whatever their wait.

A fetch costs the embedded broker 1 to 7 ms of CPU whether it brings records or not (more
the more partitions it asks about; measured in docs/performance.md) and the consumer about
as much again. So fetches also start at most every ``min_ms``: under a trickle of records
the records of that interval come in one fetch, one batch, one transaction, instead of a
fetch and a transaction each.

aiokafka has no hook for this: the pacer sets the fetcher's wait just before the fetcher
builds each request (a private attribute of aiokafka 0.14, which the project pins). If
that ever changes, the consumer keeps its configured ``fetch_max_wait_ms`` and a warning
says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("waybill.fetch")

#: the share of the quiet time that the next fetch may wait
GROWTH = 1.0


class FetchPacer:
    def __init__(
        self,
        *,
        min_ms: int,
        max_ms: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_ms = min(min_ms, max_ms)
        self.max_ms = max_ms
        self._monotonic = monotonic
        self._last_records = monotonic()
        self._last_fetch = 0.0
        self._paced: set[int] = set()

    def records_seen(self) -> None:
        """Records just arrived: the next fetches wait little."""
        self._last_records = self._monotonic()

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
                early = self._last_fetch + self.min_ms / 1000 - now
                if early > 0:  # not yet: the fetcher asks again after ``early`` seconds
                    return [], resets, min(timeout, early) if timeout else early, invalid, resumes
                self._last_fetch = now
            return requests, resets, timeout, invalid, resumes

        fetcher._get_actions_per_node = paced_actions
        self._paced = {id(fetcher)}
        return True
