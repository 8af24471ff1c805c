"""Paper-style result tables and plots from run directories (`jrft table`).

Reads only `results.json` files written by training runs; never needs a model.

Conventions (the table's caption repeats the ones a reader needs):
- A row is one `method_label` (e.g. "jr d=4096") within one (model, epsilon) group; its label shows the
  trainable parameter count, as a min-max range when it differs across tasks (head size varies with
  the number of classes).
- A cell is mean ± sample std (ddof=1) over seeds, scores x100, 1 decimal, with the seed count n.
- Several runs with the same (model, epsilon, method_label, task, seed) are reruns of one configuration:
  counting them as extra seeds would inflate n and shrink the std, so `collect` keeps the newest
  (file mtime; ties broken by path) and lists the others as skipped.
- Best per column compares the values as displayed (1 decimal), so ties are all marked.
- DP runs are grouped by their target epsilon (else the epsilon spent), rounded to 3 significant
  digits (accountants report e.g. 7.9999).
- `relative_to` re-expresses every score as a percentage of one row's non-private mean per task (the
  paper's "% of full finetuning"): each seed's score is divided by the reference mean, so the std is the
  seeds' spread in those units.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

# column order: the GLUE tasks, then CoNLL-2003 NER, then any other task by name
TASK_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "conll2003"]
TASK_NAMES = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "conll2003": "CoNLL-2003",
}
METRIC_NAMES = {
    "accuracy": "Acc", "f1_macro": "macro-F1", "matthews": "MCC", "matthews_correlation": "MCC", "mcc": "MCC", "f1": "F1",
    "pearson": "Pearson", "pearsonr": "Pearson", "spearman": "Spearman", "spearmanr": "Spearman",
    "precision": "P", "recall": "R",
}


def metric_display(name: str) -> str:
    """`f1` -> `F1`; a later eval split's prefixed name, `test_f1` -> `test F1`."""
    if name in METRIC_NAMES:
        return METRIC_NAMES[name]
    split, _, base = name.partition("_")
    if base in METRIC_NAMES:
        return f"{split} {METRIC_NAMES[base]}"
    return name
SNAPSHOTS = {"best": "best_dev", "final": "dev"}
FORMATS = ("md", "latex", "csv")
REQUIRED_KEYS = ("status", "task", "model", "seed", "trainable_params", "main_metric", "dev", "best_dev")


@dataclass(frozen=True)
class Column:
    task: str
    metric: str

    @property
    def header(self) -> str:
        return f"{TASK_NAMES.get(self.task, self.task)} ({metric_display(self.metric)})"


@dataclass
class Cell:
    values: list[float]  # one per seed, x100
    trainable_params: list[int]  # distinct counts seen, sorted
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Row:
    method: str  # method_label
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (task, metric) -> cell
    avg_best: bool = False

    @property
    def params(self) -> tuple[int, int]:
        counts = [p for c in self.cells.values() for p in c.trainable_params]
        return min(counts), max(counts)

    @property
    def label(self) -> str:
        lo, hi = (format_params(n) for n in self.params)
        # a range only when it shows: full finetuning's 22,566,146 vs 22,565,761 both read 22.6M
        return f"{self.method} ({lo})" if lo == hi else f"{self.method} ({lo}–{hi})"

    @property
    def avg(self) -> float:
        return statistics.fmean(c.mean for c in self.cells.values())


@dataclass
class Table:
    model: str
    epsilon: float | None  # None = non-private
    snapshot: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    relative_to: str | None = None  # scores are % of this row's non-private mean (None: scores x100)
    lacking: int = 0  # runs left out for lacking the metric

    @property
    def title(self) -> str:
        privacy = "non-private" if self.epsilon is None else f"ε = {self.epsilon:g}"
        return f"{self.model}, {privacy}"


def format_params(n: int) -> str:
    """770 -> '770', 4866 -> '4.9K', 22_614_530 -> '22.6M' (one decimal above a thousand)."""
    if n < 1000:
        return str(n)
    for scale, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "B")):
        if round(n / scale, 1) < 1000 or suffix == "B":
            return f"{n / scale:.1f}{suffix}"
    raise AssertionError("unreachable")


def epsilon_of(run: dict) -> float | None:
    """The run's privacy budget, or None for a non-private run: its target epsilon when it had one
    (the noise is set to spend just under it, by an amount that depends on N and q: 7.993 on MRPC,
    7.995 on SST-2 at target 8), else the epsilon it spent; 3 significant digits."""
    privacy = run.get("privacy")
    if not privacy:
        return None
    target = privacy.get("target_epsilon")
    return float(f"{float(target if target is not None else privacy['epsilon']):.3g}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _problem(run) -> str | None:
    """Why a parsed results.json cannot enter a table, or None when it can."""
    if not isinstance(run, dict):
        return "not a JSON object"
    if run.get("status") == "failed":
        return f"the run failed ({run.get('error') or 'no error recorded'}); it is not averaged in"
    missing = [k for k in REQUIRED_KEYS if k not in run]
    if "method_label" not in run and "method" not in run:
        missing.append("method_label")
    if missing:
        return f"missing key(s): {', '.join(missing)}"
    if run["status"] != "completed":
        return f"status is {run['status']!r}, not 'completed'"
    if not isinstance(run["trainable_params"], int) or isinstance(run["trainable_params"], bool):
        return f"trainable_params is not an integer: {run['trainable_params']!r}"
    metric = run["main_metric"]
    for snap in SNAPSHOTS.values():
        if not isinstance(run[snap], dict) or not _is_number(run[snap].get(metric)):
            return f"{snap}[{metric!r}] is missing or not a finite number"
    privacy = run.get("privacy")
    if privacy and (not isinstance(privacy, dict) or not _is_number(privacy.get("epsilon"))):
        return "privacy is set but has no numeric epsilon"
    return None


def _run_key(run: dict) -> tuple:
    return (run["model"], epsilon_of(run), method_label(run), run["task"], run["seed"])


def method_label(run: dict) -> str:
    return str(run.get("method_label") or run["method"])


def collect(paths: list[str | Path]) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Find every results.json below `paths` (files or folders, searched recursively).

    Returns (runs, skipped): runs are the parsed results dicts of completed runs, each with `_path`
    (its results.json) added; skipped lists (path, reason) for unreadable, incomplete, malformed,
    missing, and superseded (same model/epsilon/method/task/seed, older mtime) results.
    """
    files: dict[Path, Path] = {}  # resolved -> as given, so overlapping paths count once
    skipped: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(p.rglob("results.json"))
        else:
            skipped.append((p, "no such file or directory"))
            continue
        for f in found:
            files.setdefault(f.resolve(), f)

    candidates = []
    for f in files.values():
        try:
            run = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append((f, f"unreadable JSON: {e}"))
            continue
        reason = _problem(run)
        if reason:
            skipped.append((f, reason))
            continue
        candidates.append((f.stat().st_mtime, str(f), {**run, "_path": f}))

    runs: list[dict] = []
    newest: dict[tuple, Path] = {}
    for _, _, run in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
        key = _run_key(run)
        if key in newest:
            skipped.append((run["_path"], f"superseded by newer rerun {newest[key]} (same model, epsilon, "
                                          f"method, task, seed)"))
            continue
        newest[key] = run["_path"]
        runs.append(run)
    runs.sort(key=lambda r: str(r["_path"]))
    return runs, skipped


def _column_sort_key(col: Column) -> tuple:
    glue = TASK_ORDER.index(col.task) if col.task in TASK_ORDER else len(TASK_ORDER)
    return glue, col.task, col.metric


def _display(x: float) -> str:
    return f"{x:.1f}"


def build_tables(runs: list[dict], metric: str = "best", metric_name: str | None = None) -> list[Table]:
    """Aggregate runs into one Table per (model, epsilon): non-private first, then epsilon ascending.

    metric: which snapshot to read, "best" (`best_dev`) or "final" (`dev`).
    metric_name: a metric to show for every task instead of each run's `main_metric`; runs lacking it
    are left out (and counted in the table's notes).
    """
    if metric not in SNAPSHOTS:
        raise ValueError(f"metric {metric!r} is not one of: {', '.join(SNAPSHOTS)}")
    snap = SNAPSHOTS[metric]
    groups: dict[tuple, dict[str, Row]] = {}
    lacking: dict[tuple, int] = {}
    for run in runs:
        group = (run["model"], epsilon_of(run))
        name = metric_name or run["main_metric"]
        value = run[snap].get(name)
        if not _is_number(value):
            lacking[group] = lacking.get(group, 0) + 1
            continue
        rows = groups.setdefault(group, {})
        row = rows.setdefault(method_label(run), Row(method_label(run)))
        cell = row.cells.setdefault((run["task"], name), Cell([], []))
        cell.values.append(100.0 * value)
        cell.trainable_params = sorted({*cell.trainable_params, run["trainable_params"]})

    tables = []
    for (model, eps) in sorted(groups, key=lambda g: (g[1] is not None, g[1] or 0.0, g[0])):
        rows = sorted(groups[(model, eps)].values(), key=lambda r: (-r.params[1], r.method))
        columns = sorted({Column(*k) for r in rows for k in r.cells}, key=_column_sort_key)
        table = Table(model, eps, metric, columns, rows, lacking=lacking.get((model, eps), 0))
        _mark_best(table)
        table.notes = _notes(table, metric_name)
        tables.append(table)
    return tables


def relative_to(tables: list[Table], label: str, metric_name: str | None = None) -> tuple[list[Table], list[str]]:
    """The same tables with every score as a percentage of row `label`'s mean on that task in the same
    model's non-private table (the paper's "% of full finetuning"); private tables too, so DP rows read
    against the same reference. Avg becomes the mean of a row's percentages.

    Returns (tables, left_out): a model without a non-private `label` row, and a column where the
    reference's mean is not positive (a percentage of it means nothing), are left out and named in
    left_out. Raises ValueError naming the rows there are when no model has a `label` row.
    """
    refs = {t.model: {k: c.mean for r in t.rows if r.method == label for k, c in r.cells.items()}
            for t in tables if t.epsilon is None}
    refs = {model: cells for model, cells in refs.items() if cells}
    if not refs:
        rows = sorted({r.method for t in tables if t.epsilon is None for r in t.rows})
        raise ValueError(f"--relative-to {label!r} names no non-private row; valid: {', '.join(rows) or 'none'}")
    out: list[Table] = []
    left_out: list[str] = []
    for t in tables:
        ref = refs.get(t.model)
        if ref is None:
            left_out.append(f"{t.title}: no non-private {label!r} row for {t.model}")
            continue
        nonpositive = [c for c in t.columns if (c.task, c.metric) in ref and ref[(c.task, c.metric)] <= 0]
        left_out += [f"{t.title}: {c.header} ({label}'s mean {_display(ref[(c.task, c.metric)])} is not positive)"
                     for c in nonpositive]
        usable = {k for k, v in ref.items() if v > 0}
        columns = [c for c in t.columns if (c.task, c.metric) in usable]
        rows = []
        for r in t.rows:
            cells = {k: Cell([100.0 * v / ref[k] for v in c.values], c.trainable_params)
                     for k, c in r.cells.items() if k in usable}
            if cells:
                rows.append(Row(r.method, cells))
        if not rows:
            left_out.append(f"{t.title}: no task that {label} has")
            continue
        table = Table(t.model, t.epsilon, t.snapshot, columns, rows, relative_to=label, lacking=t.lacking)
        _mark_best(table)
        table.notes = _notes(table, metric_name)
        out.append(table)
    return out, left_out


def _mark_best(table: Table) -> None:
    for col in table.columns:
        key = (col.task, col.metric)
        cells = [r.cells[key] for r in table.rows if key in r.cells]
        top = max(float(_display(c.mean)) for c in cells)  # compare as displayed: visible ties all win
        for c in cells:
            c.best = float(_display(c.mean)) == top
    # Avg over different task sets is not comparable: only rows with every column compete.
    complete = [r for r in table.rows if len(r.cells) == len(table.columns)]
    if complete:
        top = max(float(_display(r.avg)) for r in complete)
        for r in complete:
            r.avg_best = float(_display(r.avg)) == top


def _notes(table: Table, metric_name: str | None) -> list[str]:
    snapshot = "best dev checkpoint" if table.snapshot == "best" else "final dev evaluation"
    if table.relative_to is None:
        notes = [f"Dev scores x100 ({snapshot}): mean ± sample std over seeds (n seeds); best per column in bold."]
    else:
        notes = [f"Dev scores as % of {table.relative_to}'s mean on the same task ({table.model}, non-private; "
                 f"{snapshot}): mean ± sample std over seeds (n seeds); best per column in bold. Avg is the mean "
                 f"of a row's percentages."]
    partial = [r for r in table.rows if len(r.cells) < len(table.columns)]
    if partial:
        names = "; ".join(
            f"{r.label} lacks " + ", ".join(TASK_NAMES.get(c.task, c.task) for c in table.columns
                                            if (c.task, c.metric) not in r.cells)
            for r in partial)
        notes.append(f"Avg is the mean over the tasks a row has, so it is only compared (bold) among rows "
                     f"with every task: {names}.")
    mixed = [f"{r.method} on {TASK_NAMES.get(t, t)}: {', '.join(map(str, c.trainable_params))}"
             for r in table.rows for (t, _), c in r.cells.items() if len(c.trainable_params) > 1]
    if mixed:
        notes.append("Runs with different trainable parameter counts share a method_label (check the "
                     "labels): " + "; ".join(mixed) + ".")
    if table.lacking:
        what = f"metric {metric_name!r}" if metric_name else "their main metric"
        notes.append(f"{table.lacking} run(s) lack {what} and are left out.")
    return notes


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    std = "" if cell.std is None else f" ± {_display(cell.std)}"
    return f"{_display(cell.mean)}{std} (n={cell.n})"


def _render_md(tables: list[Table]) -> str:
    blocks = []
    for t in tables:
        lines = [f"### {t.title}", ""]
        lines.append("| Method | " + " | ".join(c.header for c in t.columns) + " | Avg |")
        lines.append("| :-- | " + " | ".join("--:" for _ in t.columns) + " | --: |")
        for r in t.rows:
            cells = []
            for c in t.columns:
                cell = r.cells.get((c.task, c.metric))
                text = _cell_text(cell)
                cells.append(f"**{text}**" if cell and cell.best else text)
            avg = _display(r.avg)
            cells.append(f"**{avg}**" if r.avg_best else avg)
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
        blocks += t.notes
    return "\n\n".join(blocks) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "–": "--", "ε": r"$\varepsilon$"}


def _tex(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def _render_latex(tables: list[Table]) -> str:
    blocks = []
    for t in tables:
        lines = [f"% {t.title}", r"\begin{tabular}{l" + "r" * (len(t.columns) + 1) + "}", r"\toprule",
                 rf"\multicolumn{{{len(t.columns) + 2}}}{{l}}{{\textit{{{_tex(t.title)}}}}} \\", r"\midrule",
                 "Method & " + " & ".join(_tex(c.header) for c in t.columns) + r" & Avg \\", r"\midrule"]
        for r in t.rows:
            cells = []
            for c in t.columns:
                cell = r.cells.get((c.task, c.metric))
                text = _tex(_cell_text(cell)).replace("±", r"$\pm$")
                cells.append(rf"\textbf{{{text}}}" if cell and cell.best else text)
            avg = _display(r.avg)
            cells.append(rf"\textbf{{{avg}}}" if r.avg_best else avg)
            lines.append(f"{_tex(r.label)} & " + " & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {note}" for note in t.notes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


CSV_FIELDS = ["model", "epsilon", "method", "task", "metric", "snapshot", "trainable_params",
              "mean", "std", "n", "best", "scale"]


def _render_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for t in tables:
        for r in t.rows:
            for c in t.columns:
                cell = r.cells.get((c.task, c.metric))
                if cell is None:
                    continue
                writer.writerow({
                    "model": t.model, "epsilon": "" if t.epsilon is None else f"{t.epsilon:g}",
                    "method": r.method, "task": c.task, "metric": c.metric, "snapshot": t.snapshot,
                    # one count per cell in practice; several (mislabelled runs) are joined with '|'
                    "trainable_params": "|".join(map(str, cell.trainable_params)),
                    "mean": f"{cell.mean:.4f}", "std": "" if cell.std is None else f"{cell.std:.4f}",
                    "n": cell.n, "best": int(cell.best),
                    "scale": "x100" if t.relative_to is None else f"% of {t.relative_to}",
                })
    return buf.getvalue()


def render(tables: list[Table], fmt: str) -> str:
    """Render tables as GitHub Markdown ("md"), a booktabs tabular ("latex"), or flat CSV ("csv")."""
    renderers = {"md": _render_md, "latex": _render_latex, "csv": _render_csv}
    if fmt not in renderers:
        raise ValueError(f"format {fmt!r} is not one of: {', '.join(FORMATS)}")
    return renderers[fmt](tables)


def _slug(*parts: object) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.=-]+", "-", str(p)).strip("-") for p in parts)


def plot(runs: list[dict], out_dir: Path, metric: str = "best", metric_name: str | None = None) -> list[Path]:
    """Write PNG plots and return their paths.

    Per (model, epsilon group, task): score vs trainable parameters (log x), one point per method with
    std error bars (`metric`/`metric_name` as in `build_tables`). Per (model, task) with DP runs: score vs epsilon, one line per method; the method's
    non-private score, when present, is a dashed horizontal line of the same colour.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state; PNG renders via Agg

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = build_tables(runs, metric, metric_name)
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)

    for t in tables:
        privacy = "nonprivate" if t.epsilon is None else f"eps{t.epsilon:g}"
        for col in t.columns:
            key = (col.task, col.metric)
            fig = Figure(figsize=(5, 3.5))
            ax = fig.add_subplot()
            for r in t.rows:
                cell = r.cells.get(key)
                if cell is None:
                    continue
                x = statistics.fmean(cell.trainable_params)
                ax.errorbar([x], [cell.mean], yerr=[cell.std or 0.0], fmt="o", capsize=3, label=r.method)
                ax.annotate(r.method, (x, cell.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("trainable parameters")
            ax.set_ylabel(f"{col.header} x100")
            ax.set_title(f"{TASK_NAMES.get(col.task, col.task)} — {t.title}")
            ax.grid(True, alpha=0.3)
            save(fig, _slug("params", t.model, privacy, col.task, col.metric))

    by_model: dict[str, list[Table]] = {}
    for t in tables:
        by_model.setdefault(t.model, []).append(t)
    for model, group in by_model.items():
        private = [t for t in group if t.epsilon is not None]
        if not private:
            continue
        public = next((t for t in group if t.epsilon is None), None)
        columns = sorted({c for t in private for c in t.columns}, key=_column_sort_key)
        for col in columns:
            key = (col.task, col.metric)
            fig = Figure(figsize=(5, 3.5))
            ax = fig.add_subplot()
            methods = sorted({r.method for t in private for r in t.rows if key in r.cells})
            for method in methods:
                pts = [(t.epsilon, r.cells[key]) for t in private for r in t.rows
                       if r.method == method and key in r.cells]
                line = ax.errorbar([e for e, _ in pts], [c.mean for _, c in pts],
                                   yerr=[c.std or 0.0 for _, c in pts], marker="o", capsize=3, label=method)
                ref = public and next((r.cells[key] for r in public.rows
                                       if r.method == method and key in r.cells), None)
                if ref:
                    ax.axhline(ref.mean, linestyle="--", linewidth=1, color=line.lines[0].get_color())
            ax.set_xlabel("ε")
            ax.set_ylabel(f"{col.header} x100")
            ax.set_title(f"{TASK_NAMES.get(col.task, col.task)} — {model} (dashed: non-private)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
            save(fig, _slug("epsilon", model, col.task, col.metric))
    return written
