"""settle_heap: what it changes in the process's collector, undone after each test."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from iotfleet import settle_heap
from iotfleet.device.heap import SETTLED_GC_THRESHOLDS


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_settle_heap_freezes_what_lives_and_raises_the_thresholds() -> None:
    kept = [[i] for i in range(1000)]  # containers alive at the call
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == SETTLED_GC_THRESHOLDS
    assert all(gc.is_tracked(item) for item in kept)  # frozen, still tracked: a later unfreeze gives them back


@pytest.mark.usefixtures("collector")
def test_cycles_made_after_settling_are_still_collected() -> None:
    settle_heap()

    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None
