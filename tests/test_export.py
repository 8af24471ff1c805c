"""`jrft export`: folded / merged / remote-code exports equal the run's model; plain transformers loads them
in a Python where jrft is not importable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jrft_cli.core.artifact import load_artifact
from jrft_cli.core.errors import JrftError
from jrft_cli.serving.export import export_run, fold_shifts
from jrft_cli.core.families import locate
from jrft_cli.core.families import find_layers as find_encoder_layers

from conftest import PAIR_TEXTS, load_isolated, make_run_dir, tiny_roberta

torch.set_num_threads(1)
TOL = 1e-5

# name -> (overrides, remote code expected)
MINILM_CASES = {
    "jr-output": (["method=jr", "d=256"], True),
    "jr-intermediate": (["method=jr", "d=256", "method.position=intermediate"], True),
    "jr-attention": (["method=jr", "d=256", "method.position=attention"], True),
    "jr-structured": (["method=jr", "d=256", "method.projection=structured"], True),
    "jr_warp": (["method=jr_warp", "d=256"], True),
    "jr-cls": (["method=jr", "d=256", "method.head=cls"], False),
    "lora-cls": (["method=lora", "method.head=cls"], False),
    "lora-first": (["method=lora"], True),
    "adapters": (["method=adapters", "method.reduction_factor=48"], True),
    "warp": (["method=warp", "method.k=3"], True),
    "bitfit-cls": (["method=bitfit"], False),
    "full-cls": (["method=full", "method.head=cls"], False),
    "full-mask": (["method=full"], True),
    "linear": (["method=linear"], True),
}
ROBERTA_CASES = {
    "jr-output": (["method=jr", "d=64"], True),
    "jr-intermediate": (["method=jr", "d=64", "method.position=intermediate"], True),
    "jr-attention": (["method=jr", "d=64", "method.position=attention"], True),
    "jr_warp": (["method=jr_warp", "d=64"], True),
    "warp": (["method=warp", "method.k=2"], True),
    "adapters": (["method=adapters", "method.reduction_factor=8"], True),
    "lora-cls": (["method=lora", "method.head=cls"], False),
    "lora-first": (["method=lora"], True),
    "bitfit-cls": (["method=bitfit"], False),
}


def _reference_logits(run_dir: Path, batch: dict[str, list]) -> torch.Tensor:
    model = load_artifact(run_dir).model
    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in batch.items()})


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, Path, bool]]:
    """family/case -> (run dir, export dir, remote expected), all exported."""
    root = tmp_path_factory.mktemp("exports")
    roberta = tiny_roberta(root / "tiny-roberta")
    out = {}
    for family, cases, extra in (("minilm", MINILM_CASES, []), ("roberta", ROBERTA_CASES, [f"model.name={roberta}"])):
        for name, (overrides, remote) in cases.items():
            key = f"{family}/{name}"
            run = make_run_dir(root / "runs" / family / name, overrides + extra)
            result = export_run(run, root / "exports" / family / name)
            assert result.remote_code is remote, key
            out[key] = (run, result.out_dir, remote)
    return out


@pytest.fixture(scope="module")
def isolated(exports, tmp_path_factory) -> dict:
    jobs = [{"dir": str(exp), "trust": remote, "texts": PAIR_TEXTS} for _, exp, remote in exports.values()]
    return load_isolated(jobs, tmp_path_factory.mktemp("isolated"))


def test_isolated_python_cannot_import_jrft(isolated):
    assert isolated["jrft_importable"] is False


@pytest.mark.parametrize("key", [f"minilm/{k}" for k in MINILM_CASES] + [f"roberta/{k}" for k in ROBERTA_CASES])
def test_export_logits_equal_the_runs_model(key, exports, isolated):
    run, exp, remote = exports[key]
    result = isolated["results"][list(exports).index(key)]
    got = torch.tensor(result["logits"])
    want = _reference_logits(run, result["batch"])
    assert got.shape == want.shape == (len(PAIR_TEXTS), 2)
    assert (got - want).abs().max().item() <= TOL, key
    # the run's model really differs from its untrained base (so equality above is not trivial)
    assert want.abs().max().item() > 1e-3


@pytest.mark.parametrize("key", [k for k, (_, r) in MINILM_CASES.items() if not r])
def test_cls_head_exports_are_plain_checkpoints(key, exports, isolated):
    _, exp, _ = exports[f"minilm/{key}"]
    config = json.loads((exp / "config.json").read_text())
    assert "auto_map" not in config and not (exp / "modeling_jrft.py").exists()
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert isolated["results"][list(exports).index(f"minilm/{key}")]["class"] == "BertForSequenceClassification"
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}


def test_remote_code_export_files(exports):
    _, exp, _ = exports["minilm/jr-output"]
    config = json.loads((exp / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForSequenceClassification": "modeling_jrft.JrftClassifier"}
    assert config["model_type"] == "bert"
    source = (exp / "modeling_jrft.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "copy", "inspect", "torch", "transformers"}
    note = json.loads((exp / "jrft_export.json").read_text())
    assert note["mask_format"] is True and "[MASK]" in note["input_format"] and note["task"] == "rte"
    assert (exp / "tokenizer.json").is_file() and (exp / "README.md").is_file()


@pytest.mark.parametrize("position", ["output", "intermediate", "attention"])
def test_fold_only_changes_the_shifted_biases(position, tmp_path):
    """The folded backbone is the base architecture: same keys, same weights, bias += s_l at the position."""
    run = make_run_dir(tmp_path / "run", ["method=jr", "d=128", f"method.position={position}"])
    model = load_artifact(run).model
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    shifts = model.adapter.shifts().detach()
    fold_shifts(model)
    assert not hasattr(model, "adapter")
    after = model.backbone.state_dict()
    assert set(after) == set(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    layers = find_encoder_layers(model.backbone)
    prefix = {id(m): n for n, m in model.backbone.named_modules()}
    expected = {prefix[id(locate(layer, position))] + ".bias" for layer in layers}
    assert changed == expected
    for l, layer in enumerate(layers):
        key = prefix[id(locate(layer, position))] + ".bias"
        torch.testing.assert_close(after[key], before[key] + shifts[l])


def test_exported_weights_file_holds_no_hooks_or_projection(exports):
    _, exp, _ = exports["minilm/jr-output"]
    keys = set(load_file(str(exp / "model.safetensors")))
    assert {"head.weight", "head.bias"} <= keys
    assert not any("adapter" in k or "projection" in k or "pooler" in k for k in keys)
    assert all(k.startswith(("backbone.", "head.")) for k in keys)


def test_adapter_and_prompt_exports_hold_their_modules(exports):
    _, exp, _ = exports["minilm/adapters"]
    config = json.loads((exp / "config.json").read_text())
    assert config["jrft_adapters"] == {"size": 8, "non_linearity": "swish"}
    keys = set(load_file(str(exp / "model.safetensors")))
    assert {f"jrft_adapters.{i}.down.weight" for i in range(12)} <= keys
    _, exp, _ = exports["minilm/warp"]
    config = json.loads((exp / "config.json").read_text())
    assert (config["jrft_prompt_rows"], config["jrft_prompt_inserted"], config["jrft_prompt_layer_shifts"]) == (3, 3, False)
    _, exp, _ = exports["minilm/jr_warp"]
    config = json.loads((exp / "config.json").read_text())
    assert (config["jrft_prompt_rows"], config["jrft_prompt_inserted"], config["jrft_prompt_layer_shifts"]) == (6, 1, True)


def test_export_refuses_a_non_empty_out_dir(exports):
    run, exp, _ = exports["minilm/linear"]
    with pytest.raises(JrftError, match="exists and is not empty"):
        export_run(run, exp)


def test_export_of_a_non_run_dir_is_one_line(tmp_path):
    with pytest.raises(JrftError, match="not a jrft run dir") as e:
        export_run(tmp_path, tmp_path / "out")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# hostile or careless use: no foreign code runs, nothing that is not an export is deleted


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_the_run_its_parent_or_other_run_dirs(exports, tmp_path):
    run, _, _ = exports["minilm/linear"]
    runs_root = run.parent.parent                       # runs/<family>/<case>: run dirs and their siblings
    before = _snapshot(runs_root)
    for out, message in ((run, "holds the run being exported"), (run.parent, "holds the run being exported"),
                         (runs_root / "roberta", "is not an earlier export")):
        with pytest.raises(JrftError, match=message) as e:
            export_run(run, out, overwrite=True)
        assert "\n" not in str(e.value)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(JrftError, match="is not an earlier export"):
        export_run(run, tmp_path / "notes", overwrite=True)
    assert _snapshot(runs_root) == before and (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_export(exports, tmp_path):
    import shutil

    run, exp, _ = exports["minilm/linear"]
    out = tmp_path / "export"
    shutil.copytree(exp, out)
    (out / "stale.txt").write_text("from an earlier export")
    export_run(run, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "jrft_export.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no staging dir left behind
    (out / "nested").mkdir()
    (out / "nested" / "results.json").write_text("{}")                          # a run dir inside an export
    with pytest.raises(JrftError, match="holds run files"):
        export_run(run, out, overwrite=True)
    assert (out / "nested" / "results.json").exists()


def test_export_records_no_path_of_this_machine(exports, tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    for _, exp, _ in exports.values():
        note = json.loads((exp / "jrft_export.json").read_text())
        assert note["source_run"] == Path(note["source_run"]).name
        for p in exp.iterdir():
            if p.suffix in (".json", ".md", ".py", ".txt"):
                assert base not in p.read_text(), p


def test_jrft_loads_remote_code_exports_with_its_own_class_and_refuses_an_edited_one(exports, tmp_path):
    import shutil

    from jrft_cli.serving.export import load_export
    from jrft_cli.serving.export_template import modeling_jrft

    _, exp, remote = exports["minilm/jr-output"]
    assert remote
    model, _, _ = load_export(exp)
    assert type(model) is modeling_jrft.JrftClassifier      # jrft's own module, not the dir's copy
    tampered = tmp_path / "tampered"
    shutil.copytree(exp, tampered)
    marker = tmp_path / "foreign-code-ran"
    with open(tampered / "modeling_jrft.py", "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(JrftError, match=r"modeling_jrft.py is not the modeling code this jrft ships") as e:
        load_export(tampered)
    assert "\n" not in str(e.value) and not marker.exists()
    (tampered / "modeling_jrft.py").unlink()
    with pytest.raises(JrftError, match=r"modeling_jrft.py is not the modeling code this jrft ships"):
        load_export(tampered)


@pytest.mark.parametrize("damage", ["note", "weights", "config"])
def test_damaged_export_dir_is_one_line(exports, tmp_path, damage):
    import shutil

    from jrft_cli.serving.export import load_export

    _, exp, _ = exports["minilm/lora-cls"]
    bad = tmp_path / "bad"
    shutil.copytree(exp, bad)
    name = {"note": "jrft_export.json", "weights": "model.safetensors", "config": "config.json"}[damage]
    (bad / name).write_bytes((bad / name).read_bytes()[:20])
    with pytest.raises(JrftError, match="export the run again") as e:
        load_export(bad)
    assert "\n" not in str(e.value)
