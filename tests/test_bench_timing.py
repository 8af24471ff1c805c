"""bench.timing.measure, the one timing primitive: call order, rounds, statistics, memory."""
from __future__ import annotations

import statistics

import pytest
import torch

from jrft_cli.bench.timing import PeakMemory, Timing, measure, quartiles


def test_warm_up_in_turn_then_round_robin_rounds():
    log: list[str] = []
    calls = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    out = measure(calls, rounds=3, warmup=2, before_round=lambda r: log.append(f"round {r}"))
    assert log == ["round 0", "a", "a", "b", "b", "c", "c",
                   "round 1", "a", "b", "c", "round 2", "a", "b", "c", "round 3", "a", "b", "c"]
    assert list(out) == ["a", "b", "c"]
    for t in out.values():
        assert len(t.times_ms) == 3 and t.warmup == 2 and all(ms >= 0 for ms in t.times_ms)
        assert t.memory_mb is None and "memory_mb" not in t.stats()


def test_each_time_spans_its_call():
    import time

    # A lower bound only (sleep never returns early), so a busy machine cannot fail it.
    out = measure({"noop": lambda: None, "sleep": lambda: time.sleep(0.02)}, rounds=3, warmup=0)
    assert min(out["sleep"].times_ms) >= 20


def test_stats_are_median_and_quartiles_of_the_times():
    t = Timing([5.0, 1.0, 4.0, 2.0, 3.0], warmup=1)
    s = t.stats()
    q1, _, q3 = statistics.quantiles([1, 2, 3, 4, 5], n=4)
    assert (s["median_ms"], s["q1_ms"], s["q3_ms"], s["rounds"]) == (3.0, q1, q3, 5)
    assert s["times_ms"] == [5.0, 1.0, 4.0, 2.0, 3.0]
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        quartiles([])


def test_bad_arguments():
    with pytest.raises(ValueError, match="rounds=0"):
        measure({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="warm-up"):
        measure({"a": lambda: None}, rounds=1, warmup=0, memory=True)


def test_memory_is_taken_over_each_calls_warm_up():
    held: list[torch.Tensor] = []

    def big() -> None:
        held.append(torch.ones(25_000_000))     # 100 MB, touched, kept until the end

    out = measure({"small": lambda: None, "big": big}, rounds=1, warmup=1, memory=True)
    assert out["big"].memory_kind == "rss_growth" and 80 <= out["big"].memory_mb < 400
    assert out["small"].memory_mb < 50


def test_peak_memory_sees_an_allocation():
    with PeakMemory(torch.device("cpu"), interval=0.001) as mem:
        x = torch.ones(25_000_000)          # 100 MB, touched
        x.add_(1)
    del x
    assert mem.kind == "rss_growth" and 80 <= mem.mb < 400
