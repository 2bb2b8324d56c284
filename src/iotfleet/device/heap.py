"""Many clients in one process: take their long-lived objects out of the cyclic collector's way.

CPython's cyclic garbage collector runs after every 700 net allocations of container objects and walks
what it finds. A process holding hundreds or thousands of connected :class:`DeviceClient` objects (a
load generator, a gateway) pays for it twice: each publish in flight is a few dozen objects (the awscrt
future with its condition and lock, the outbox entry, the receipt future), which live for the round trip,
so the young collections keep finding them and pass them on to the older generations, whose collections
walk every client's long-lived state again. Measured in ``bench/device_publish.py`` (bench/BENCHMARKS.md):
with CPython's default settings the collector took about a fifth of a 1,000-client closed loop's CPU.

:func:`settle_heap`, called once the clients are connected, freezes what exists then (``gc.freeze``: the
clients, sessions and TLS contexts live until the process ends) and raises the collection thresholds, so
the collector runs rarely. Almost everything a message allocates is freed by reference counting anyway;
garbage in cycles is still collected, later. The price is bounded: a frozen object that later becomes
cyclic garbage (a session a failover replaced, say) is never reclaimed, at most what existed at the call.
The simulator's workers call it two seconds after their ramp. It changes process-wide settings: call it
from the application, never from a library.
"""

from __future__ import annotations

import gc

__all__ = ["SETTLED_GC_THRESHOLDS", "settle_heap"]

# The young generation is collected after 20,000 net allocations (700 by default) and each older one 20
# times less often than the one below it (10 by default).
SETTLED_GC_THRESHOLDS = (20_000, 20, 20)


def settle_heap() -> None:
    """Collect once, freeze every object that exists now, and raise the collector's thresholds.

    Blocks for one full collection (a fraction of a second with 10,000 clients). Undo with
    ``gc.unfreeze()`` and ``gc.set_threshold(700, 10, 10)``.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SETTLED_GC_THRESHOLDS)
