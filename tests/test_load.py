"""The load run, small enough for every test run (the full one: python -m tests.load)."""

from __future__ import annotations

from tests.load import run


def test_mixed_load_with_random_failures_loses_nothing(broker_url: str) -> None:
    figures = run(broker_url, messages=3000, workers=2, fail_rate=0.1, timeout=120)
    print("reliability: load", figures)
    assert figures["lost"] == 0
    assert figures["processed"] + figures["dead_lettered"] == figures["published"] == 3000
    assert figures["retries"] > 0  # the failure path was exercised
    assert figures["attempt_gaps"] == 0
    # Memory stays flat: no growth between the middle and the end of the run.
    assert figures["rss_kib_growth"] < 10 * 1024
