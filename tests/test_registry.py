"""The method registry: one entry per method with its options, DP path, export kind and defaults
read from conf/method/<name>.yaml (never copied into code)."""
from __future__ import annotations

import pytest
import yaml

from jrft_cli.core.conf import config_dir, group_choices
from jrft_cli.core.errors import JrftError
from jrft_cli.core.registry import RECIPE_KEYS, method_names, method_spec, spec_for_options


def test_every_method_has_one_entry_and_one_yaml():
    assert sorted(method_names()) == group_choices("method")
    for name in method_names():
        spec = method_spec(name)
        assert spec.name == name
        assert spec.export in ("fold", "prompt", "merge", "plain", "modules")
        assert spec.dp.path in ("shift", "opacus")
        assert (spec.dp.opacus_mode is None) == (spec.dp.path == "shift")
        assert (spec.merge is not None) == (spec.export == "merge")


@pytest.mark.parametrize("name", method_names())
def test_defaults_come_from_the_yaml_and_parse(name):
    spec = method_spec(name)
    raw = yaml.safe_load((config_dir() / "method" / f"{name}.yaml").read_text())
    assert spec.defaults() == raw
    assert spec.defaults()["lr"] == raw["lr"] > 0
    # the yaml's own option keys parse (interpolations such as ${d} resolved the way Hydra would)
    values = {k: (1024 if v == "${d}" else 0 if v == "${seed}" else v) for k, v in raw.items()}
    options = spec.parse_options(values)
    assert spec_for_options(options) is spec
    assert {k for k in raw if k not in RECIPE_KEYS} <= set(spec.options_dict(options))   # + tokenizer-bound ones


def test_labels_and_lookup_errors():
    jr = method_spec("jr")
    assert jr.row_label(jr.parse_options({"d": 4096})) == "jr d=4096"
    assert jr.row_label(jr.parse_options({"d": 64, "position": "attention", "projection": "structured"})) \
        == "jr d=64 attention structured"
    assert method_spec("jr_warp").row_label(method_spec("jr_warp").parse_options({"d": 16})) == "jr_warp d=16"
    lora = method_spec("lora")
    assert lora.row_label(lora.parse_options({"r": 4})) == "lora r=4"
    assert method_spec("full").row_label(method_spec("full").parse_options({})) == "full"
    assert method_spec("warp").row_label(method_spec("warp").parse_options({"k": 8})) == "warp k=8"
    assert method_spec("adapters").row_label(method_spec("adapters").parse_options({})) == "adapters rf=768"
    assert lora.row_label(lora.parse_options({"r": 1, "alpha": 2})) == "lora r=1 alpha=2"
    bitfit = method_spec("bitfit")
    assert bitfit.row_label(bitfit.parse_options({})) == "bitfit"
    assert bitfit.row_label(bitfit.parse_options({"head_weights": "all"})) == "bitfit head=all"
    with pytest.raises(JrftError, match=r"method='nope' is not valid; choose one of full, bitfit, lora, adapters, linear, "
                                        r"jr, jr_warp, warp"):
        method_spec("nope")


def test_dp_paths_and_small_state():
    fast = [n for n in method_names() if method_spec(n).dp.path == "shift"]
    assert fast == ["linear", "jr", "jr_warp", "warp"]
    assert [n for n in method_names() if method_spec(n).small_state] == ["adapters", "linear", "jr", "jr_warp", "warp"]
    assert method_spec("adapters").dp.opacus_mode == "hooks" and method_spec("adapters").export == "modules"
    assert method_spec("warp").export == "prompt"
    assert method_spec("full").dp.freeze_shared_embeddings and method_spec("full").dp.opacus_mode == "ghost"
    assert [n for n in method_names() if method_spec(n).has_adapter] == ["jr", "jr_warp", "warp"]
