"""Garbage collection for processes that handle events in large batches.

Python's cyclic collector, at its default thresholds (700, 10, 10), looks at the young
generation every 700 net allocations of container objects, and at the middle one every
7,000. A batch of a few hundred events allocates hundreds of thousands of objects that stay
alive until the batch commits (models, rows, spans), so each young collection finds nearly
all of them alive, moves them on, and the middle and old generations are traversed again
and again. Under load that was a fifth of every service's CPU (docs/performance.md).

Nearly everything in these processes is freed by reference counting the moment it is done
with; the collector is only needed for cycles (exceptions with their tracebacks, some
framework objects). So it runs less often, and the objects alive after start-up (modules,
schemas, settings, routes), which it would otherwise traverse in every full collection,
are set aside for good with :func:`gc.freeze`.
"""

from __future__ import annotations

import gc

#: young-generation threshold, then how many young (middle) collections make a middle
#: (full) one: a full collection every 100 million net allocations or so, seconds apart
#: under load, so cyclic garbage is still collected while it is small
THRESHOLDS = (100_000, 20, 50)


def tune_for_batches() -> None:
    """Call once start-up has imported and built what lives as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
