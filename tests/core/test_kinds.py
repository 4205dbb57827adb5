"""The kinds of submission: one table decides what is ranked, tracked or merely recorded."""

from __future__ import annotations

import pytest

from core.errors import WeighbridgeError
from core.kinds import KIND_NAMES, policy_of, ranked_kinds


def test_models_rank_benchmarks_are_tracked_and_inspections_are_recorded() -> None:
    assert KIND_NAMES == ("model", "benchmark", "inspection")
    assert ranked_kinds() == ["model"]
    assert policy_of("benchmark").tracked and not policy_of("benchmark").ranked
    assert not policy_of("inspection").ranked and not policy_of("inspection").tracked


def test_an_unknown_kind_is_refused_naming_the_kinds_there_are() -> None:
    with pytest.raises(WeighbridgeError) as caught:
        policy_of("notebook")
    assert caught.value.field == "kind"
    assert "model, benchmark, inspection" in caught.value.message
