"""bench.rows: row identities and method settings come from the registry, never from bench code."""
from __future__ import annotations

import pytest

from jrft_cli.bench.rows import (DEFAULT_VARY, NAIVE, SUBJECT, applicable, label, method_rows, method_setup,
                                 parse_vary, run_axes)
from jrft_cli.core.errors import JrftError
from jrft_cli.core.options import option_names
from jrft_cli.core.registry import method_names, method_spec


@pytest.mark.parametrize("name", method_names())
def test_setup_is_the_methods_conf_defaults(name):
    spec = method_spec(name)
    defaults = spec.defaults()
    setup = method_setup(name, d=96, seed=7)
    assert setup.lr == defaults["lr"] and setup.head == defaults["head"] and setup.dropout == defaults["dropout"]
    assert setup.dp_lr == (defaults.get("dp_lr") or defaults["lr"])
    opts = setup.options_dict()
    if "d" in option_names(spec.options):          # the yaml's ${d} and ${seed} take the bench's values
        assert opts["d"] == 96 and opts["projection_seed"] == 7
    assert setup.method_config()["name"] == name and setup.method_config()["lr"] == defaults["lr"]


def test_vary_gives_one_row_per_value_for_methods_that_have_the_option():
    rows = method_rows(["full", "jr", "lora"], {"projection": ["dense", "structured"]}, d=64, seed=0, naive=True)
    assert [r.id for r in rows] == [{"method": "full"}, {"method": "jr", "projection": "dense"},
                                    {"method": "jr", "projection": "structured"}, {"method": "lora"},
                                    {"method": NAIVE}]
    assert [r.label for r in rows] == ["full", "jr dense", "jr structured", "lora", "naive_jr"]
    assert rows[2].setup.options.projection == "structured" and rows[2].options["projection"] == "structured"
    naive = rows[-1]
    assert naive.naive and naive.setup.method == SUBJECT and naive.lr == method_spec(SUBJECT).defaults()["lr"]
    assert naive.options["d"] == 64


def test_vary_values_are_typed_like_the_yaml():
    rows = method_rows(["jr"], {"d": ["16", "32"]}, d=64, seed=0, naive=False)
    assert [r.setup.options.d for r in rows] == [16, 32] and [r.label for r in rows] == ["jr 16", "jr 32"]


def test_bad_rows_are_one_line_errors():
    with pytest.raises(JrftError, match="bogus.*choose from full"):
        method_rows(["jr", "bogus"], {}, d=64, seed=0, naive=False)
    with pytest.raises(JrftError, match="--vary positon: .*their options: .*position"):
        method_rows(["jr"], {"positon": ["output"]}, d=64, seed=0, naive=False)
    with pytest.raises(JrftError, match="projection='sparse'.*dense, structured"):
        method_rows(["jr"], {"projection": ["sparse"]}, d=64, seed=0, naive=False)
    with pytest.raises(JrftError, match="OPTION=VALUE"):
        parse_vary(["projection"])


def test_default_vary_applies_only_where_an_option_exists():
    assert applicable(DEFAULT_VARY, ["full", "lora"]) == {}
    assert applicable(DEFAULT_VARY, ["full", "jr"]) == DEFAULT_VARY
    assert parse_vary(["projection=dense,structured,dense", "d=8"]) == {"projection": ["dense", "structured"],
                                                                       "d": ["8"]}


def test_label_joins_axis_values_in_order():
    assert label({"method": "jr", "projection": "dense", "precision": "bf16"}) == "jr dense bf16"


def test_run_axes_join_the_identity_only_when_asked_for_more_than_the_default():
    assert run_axes() == {} and run_axes(["fp32"], ["random"]) == {}
    assert run_axes(["bf16"]) == {"precision": ["bf16"]}
    axes = run_axes(["fp32", "bf16", "fp32"], ["random", "grouped"])
    assert axes == {"precision": ["fp32", "bf16"], "ordering": ["random", "grouped"]}
    rows = method_rows(["jr", "linear"], {"projection": ["dense"]}, d=64, seed=0, naive=True, axes=axes)
    assert [r.label for r in rows] == [
        "jr dense fp32 random", "jr dense fp32 grouped", "jr dense bf16 random", "jr dense bf16 grouped",
        "linear fp32 random", "linear fp32 grouped", "linear bf16 random", "linear bf16 grouped", "naive_jr"]
    assert (rows[3].precision, rows[3].ordering) == ("bf16", "grouped")
    assert (rows[-1].precision, rows[-1].ordering) == ("fp32", "random")       # not varied: the defaults
    with pytest.raises(JrftError, match=r"^--precisions fp8 not valid; choose from fp32,bf16,fp16$"):
        run_axes(["fp8"])
    with pytest.raises(JrftError, match=r"^--orderings sorted not valid; choose from random,grouped$"):
        run_axes(None, ["sorted"])
