"""What `make chaos` concludes from what the hosts hold of a run: the hosts send every product
stored under the run's prefix (a run's accepted ids would not fit on a command line), and the
controller judges them against the answers the stream got."""

from __future__ import annotations

from stackkit.chaos import judge


def test_lost_unindexed_duplicated_and_wrongly_stored_products_are_told_apart():
    held = {
        "rows": [
            ["a", "chaos x 000001"],
            ["b", "chaos x 000002"],
            ["c", "chaos x 000002"],  # the same title stored twice
            ["r", "chaos x 000009"],  # refused, yet stored
        ],
        "indexed": ["a", "r"],
        "history": ["a", "b", "r"],
    }
    found = judge(held, accepted={"a", "b", "lost"}, refused={"chaos x 000009"})
    assert found == {
        "stored": ["a", "b"],
        "indexed": ["a"],
        "history": ["a", "b"],
        "duplicated": ["chaos x 000002"],
        "refused_stored": ["chaos x 000009"],
    }


def test_a_run_with_nothing_held_has_lost_everything_it_was_answered():
    found = judge({"rows": [], "indexed": [], "history": []}, {"a"}, set())
    assert found["stored"] == [] and found["indexed"] == [] and found["history"] == []
