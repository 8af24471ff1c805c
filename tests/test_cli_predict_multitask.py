"""`jrft predict NAME=RUN ...` end to end: mixed-task input lines equal each target's own `jrft predict`."""
from __future__ import annotations

import pytest
import torch

from jrft_cli.__main__ import main

torch.set_num_threads(1)

LINES = {
    "a": ["a gripping, funny and moving film", "a dull , lifeless mess", "it 's fine"],
    "b": ["The cat sat on the mat.\tA cat sat.", "It rained all day.\tThe sun shone all day."],
    "c": ["A man is playing a guitar.\tA man plays the guitar.", "A dog runs.\tThe stock market fell."],
}


def _rows(path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_mixed_lines_equal_each_target_alone(multitask_runs, tmp_path):
    runs = {"a": multitask_runs["sent"], "b": multitask_runs["entail_warp"], "c": multitask_runs["sim"]}
    alone = {}
    for name, run_dir in runs.items():
        src, out = tmp_path / f"{name}.txt", tmp_path / f"{name}.tsv"
        src.write_text("\n".join(LINES[name]) + "\n")
        assert main(["predict", str(run_dir), "--input", str(src), "--out", str(out)]) == 0
        alone[name] = _rows(out)
    mixed = [(name, LINES[name][i]) for i in range(3) for name in LINES if i < len(LINES[name])]
    src, out = tmp_path / "mixed.txt", tmp_path / "mixed.tsv"
    src.write_text("".join(f"{name}\t{line}\n" for name, line in mixed))
    assert main(["predict", *(f"{n}={p}" for n, p in runs.items()), "--input", str(src), "--out", str(out)]) == 0
    rows = _rows(out)
    assert rows[0] == ["task", "label", "score", "probs"]
    seen = {name: 0 for name in runs}
    for (name, _), row in zip(mixed, rows[1:], strict=True):
        seen[name] += 1
        ref = alone[name][seen[name]]                  # row 0 of `alone` is its header
        assert row[0] == name
        if name == "c":                                 # regression: label = score = the value
            assert float(row[2]) == pytest.approx(float(ref[1]), abs=1e-5) and row[3] == ""
        else:
            assert row[1] == ref[0]
            assert float(row[2]) == pytest.approx(float(ref[1]), abs=1e-5)
            assert [float(p) for p in row[3].split(",")] == pytest.approx([float(p) for p in ref[2:]], abs=1e-5)


def test_a_bare_run_dir_is_named_after_its_directory(multitask_runs, tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("sent\tgreat\nsent_warp\tawful\n"))
    assert main(["predict", str(multitask_runs["sent"]), str(multitask_runs["sent_warp"])]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split("\t")[0] for r in rows] == ["task", "sent", "sent_warp"]


@pytest.mark.parametrize("lines, message", [
    ("z\tgood\n", "input line 1: unknown task 'z'; known tasks: a, b"),
    ("a\tgood\nb\tonly one\n", "input line 2: task 'b' (rte) takes sentence pairs (two texts); got 1 text(s)"),
    ("no tab here\n", "input line 1: expected 'NAME<TAB>text'"),
])
def test_bad_lines_are_one_line_errors(lines, message, multitask_runs, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["predict", f"a={multitask_runs['sent']}", f"b={multitask_runs['entail_warp']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
