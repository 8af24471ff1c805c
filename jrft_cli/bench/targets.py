"""The issue's targets for the bench's subject method (rows.SUBJECT), evaluated on a report's rows.

A target compares two rows picked by selectors (axis -> value, matched against a row's `id` and,
for axes the row was not varied on, its `options`; a run axis the selector leaves out must have its
default value, rows.DEFAULT_AXES); a target whose rows are absent is left out.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from jrft_cli.bench.rows import DEFAULT_AXES, NAIVE, SUBJECT

# The baseline the targets compare the subject with: full finetuning (through opacus under DP).
BASELINE = "full"


def find_row(rows: list[dict[str, Any]], selector: dict[str, Any]) -> dict[str, Any] | None:
    """The first row whose identity (or, for axes it was not varied on, options) has `selector`'s values,
    and the default value of every run axis the selector does not name."""
    wanted = {**DEFAULT_AXES, **selector}
    for row in rows:
        ident, options = row.get("id", {}), row.get("options", {})
        if all(ident.get(k, options.get(k, DEFAULT_AXES.get(k))) == v for k, v in wanted.items()):
            return row
    return None


def same_batches(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two rows stepped on the same batches (so their milliseconds compare): both on the round's
    batch, or both on loop batches of one ordering (rows of reports before orderings: the round's)."""
    def key(r: dict[str, Any]) -> tuple[str, ...]:
        if r.get("batches") == "loop":
            return "loop", r["id"].get("ordering", DEFAULT_AXES["ordering"])
        return ("round",)
    return key(a) == key(b)


def speedup(row: dict[str, Any], ref: dict[str, Any]) -> float:
    """How many times `ref`'s examples/s `row` processes: the median over the timed rounds of the
    ratio of the two calls' examples/s that round (calls timed back to back see the same load)."""
    def rates(r: dict[str, Any]) -> list[float]:
        return [n / (ms / 1e3) for n, ms in zip(r["examples"], r["times_ms"])]
    return statistics.median(a / b for a, b in zip(rates(row), rates(ref)))


@dataclass(frozen=True)
class Target:
    name: str
    num: tuple[str, dict[str, Any]]      # (section, selector)
    den: tuple[str, dict[str, Any]]
    goal: str
    met: Callable[[float], bool]
    measure: str = "time"                # time: num's median ms / den's; speedup: `speedup(num, den)`


_JR = {"method": SUBJECT, "projection": "dense"}
TARGETS = (
    Target(f"{SUBJECT} step / {BASELINE} step", ("train", _JR), ("train", {"method": BASELINE}), "<= 0.70",
           lambda v: v <= 0.70),
    Target(f"private {SUBJECT} step / {SUBJECT} step", ("private", _JR), ("train", _JR), "<= 1.10",
           lambda v: v <= 1.10),
    Target(f"opacus private {BASELINE} step / private {SUBJECT} step", ("private", {"method": BASELINE}),
           ("private", _JR), ">= 4", lambda v: v >= 4),
    Target(f"naive reference private step / private {SUBJECT} step", ("private", {"method": NAIVE}),
           ("private", _JR), "> 1", lambda v: v > 1),
    # issue 14: bf16 autocast and length-grouped batches together at least double jr's training throughput
    Target(f"{SUBJECT} bf16 grouped / fp32 random training examples/s",
           ("train", {**_JR, "precision": "bf16", "ordering": "grouped"}), ("train", _JR), ">= 2",
           lambda v: v >= 2, "speedup"),
)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target whose rows are in `report`: name, value, target (goal), met, detail."""
    out = []
    for t in TARGETS:
        a, b = find_row(report.get(t.num[0], []), t.num[1]), find_row(report.get(t.den[0], []), t.den[1])
        if a and b and t.measure == "speedup":
            v = speedup(a, b)
            out.append({"name": t.name, "value": v, "target": t.goal, "met": bool(t.met(v)),
                        "detail": f"{a['examples_per_s']:.1f} / {b['examples_per_s']:.1f} examples/s (median of "
                                  f"per-round ratios)"})
        elif a and b and same_batches(a, b):
            v = a["median_ms"] / b["median_ms"]
            out.append({"name": t.name, "value": v, "target": t.goal, "met": bool(t.met(v)),
                        "detail": f"{a['median_ms']:.1f} / {b['median_ms']:.1f} ms"})
    for r in report.get("inference", []):
        if r["id"].get("form") == "exported":
            v = r["vs_base"]
            out.append({"name": f"{r['id']['method']} exported latency / base latency", "value": v,
                        "target": "1.00 +- 0.05", "met": abs(v - 1) <= 0.05,
                        "detail": f"{r['median_ms']:.1f} ms, {v:.3f} x base"})
    for r in report.get("shift_vs_step", []):
        if r["kind"] == "structured":
            out.append({"name": f"structured z->shifts / {SUBJECT} step (L={r['layers']}, H={r['hidden']}, d={r['d']})",
                        "value": r["fraction"], "target": "< 0.02", "met": r["fraction"] < 0.02,
                        "detail": f"{r['shift_ms']:.2f} / {r['step_ms']:.1f} ms"})
    return out
