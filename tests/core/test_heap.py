"""Freezing start-up's heap: what was alive is skipped by the collector, new garbage is not."""

from __future__ import annotations

import gc
import weakref

from core.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_frozen_objects_stay_and_later_cycles_are_still_collected() -> None:
    gc.unfreeze()
    try:
        kept = Node()
        kept.other = kept  # a cycle alive at start-up
        frozen = freeze_startup_heap()
        assert frozen >= 1
        # At most what was frozen: a frozen object whose last reference another thread (a
        # test server's) drops in between is freed from the permanent generation.
        assert 0 < gc.get_freeze_count() <= frozen

        later = Node()
        later.other = later
        watch = weakref.ref(later)
        del later
        gc.collect()
        assert watch() is None  # made after start-up: collected as before
        assert kept.other is kept
    finally:
        gc.unfreeze()
