"""A search's table (Markdown) and plot (score vs d with the target line)."""
from __future__ import annotations

from pathlib import Path

from jrft_cli.reporting.table import TASK_NAMES, format_params
from jrft_cli.search.intrinsic import SearchResult

TABLE_FILE = "search_d.md"
PLOT_FILE = "search_d.png"


def answer_line(result: SearchResult) -> str:
    """One sentence: the answer with its bracket, or why there is none yet."""
    s = result.settings
    pct = f"{100 * s.target:g}%"
    if not result.finished:
        return "unfinished: no answer yet (relaunch the search to resume it)"
    if result.answer is None:
        return (f"no d up to {result.below} reached {pct} of the reference "
                f"({100 * s.target_score:.1f}); raise --d-max to search further")
    below = ("every smaller d on the grid is untested: the smallest grid value passed" if result.below is None
             else f"d = {result.below} fails")
    return f"d{100 * s.target:g} = {result.answer} (bracket: {below}, d = {result.answer} passes)"


def render_table(result: SearchResult, level: int = 1) -> str:
    """Markdown: a heading of `level`, the settings, one row per probe (in d order), and the answer."""
    s = result.settings
    metric = s.main_metric
    lines = [
        f"{'#' * level} search-d: {TASK_NAMES.get(s.task, s.task)}, {s.method} ({' '.join(s.overrides) or 'defaults'})",
        "",
        f"- Reference: {100 * s.reference:.1f} ({metric}, {s.reference_source}); target {s.target:g} x reference "
        f"= **{100 * s.target_score:.1f}**",
        f"- Probes: `jrft train {' '.join(s.overrides)}` with d on a log2 grid ({s.steps_per_octave} step(s) per "
        f"octave, from d = {s.d_start}, up to {s.d_max}); seeds {', '.join(map(str, s.seeds))}; "
        f"score = mean over seeds of the {'best' if s.snapshot == 'best' else 'final'} dev {metric}",
        f"- **Answer: {answer_line(result)}**",
        "",
        f"| d | trainable params | {metric} x100 (mean) | per seed | pass |",
        "| --: | --: | --: | :-- | :-: |",
    ]
    for p in sorted(result.probes, key=lambda p: p.d):
        per_seed = ", ".join(f"{100 * v:.1f}" for v in p.scores if v is not None)
        params = format_params(p.trainable_params) if p.trainable_params is not None else "?"
        lines.append(f"| {p.d} | {params} | {100 * p.mean:.1f} | {per_seed} | {'yes' if p.passed else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(result: SearchResult, path: Path) -> Path:
    """Score vs d (log2 axis): each seed a dot, the mean a line; the target (and reference) as lines."""
    from matplotlib.figure import Figure   # no pyplot: no global backend state
    from matplotlib.ticker import FuncFormatter

    s = result.settings
    probes = sorted(result.probes, key=lambda p: p.d)
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    if probes:
        ax.plot([p.d for p in probes], [100 * p.mean for p in probes], "-", color="C0", label="mean over seeds")
        for p in probes:
            ax.scatter([p.d] * len(p.scores), [100 * v for v in p.scores], s=14, color="C0", alpha=0.5)
            ax.scatter([p.d], [100 * p.mean], s=40, color="C2" if p.passed else "C3", zorder=3)
    ax.axhline(100 * s.target_score, linestyle="--", color="k", linewidth=1,
               label=f"target {s.target:g} x reference = {100 * s.target_score:.1f}")
    ax.axhline(100 * s.reference, linestyle=":", color="grey", linewidth=1, label=f"reference {100 * s.reference:.1f}")
    if result.answer is not None:
        ax.axvline(result.answer, color="C2", linewidth=1, alpha=0.6, label=f"answer d = {result.answer}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("d (size of z)")
    ax.set_ylabel(f"dev {s.main_metric} x100")
    ax.set_title(f"{TASK_NAMES.get(s.task, s.task)}, {s.method}: score vs d (green: pass, red: fail)\n"
                 f"{' '.join(s.overrides)}", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_report(result: SearchResult, root: Path) -> tuple[Path, Path]:
    """<root>/search_d.md and <root>/search_d.png."""
    root = Path(root)
    table = root / TABLE_FILE
    table.write_text(render_table(result), encoding="utf-8")
    return table, plot(result, root / PLOT_FILE)
