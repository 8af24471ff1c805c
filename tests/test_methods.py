"""Methods on MiniLM/SST-2: each trains (loss falls on a fixed batch), leaves frozen weights bit-identical
and trains exactly the expected number of parameters; SLaSh and JR-WARP inject exactly s_l = z W_l."""
from __future__ import annotations

import copy

import pytest
import torch

from jrft_cli.training.loop import LoopConfig, Trainer
from jrft_cli.tasks.evaluation import TaskInfo, loss_fn
from jrft_cli.core.registry import apply_method, method_names
from jrft_cli.core.families import locate
from jrft_cli.tasks.glue import make_collate
from jrft_cli.core.backbone import count_parameters
from jrft_cli.core.families import find_layers as find_encoder_layers

from conftest import state_snapshot

H, F, L, C = 384, 1536, 6, 2          # MiniLM hidden, FFN width, layers; SST-2 classes
HEAD = H * C + C                      # 770: one linear layer on the mask token (or BERT's `classifier`)
D = 256

# (method, options, head, expected trainable count, trainable names that must be present)
CASES = {
    "full": ("full", {}, "mask", 22_565_376 + HEAD, None),        # backbone w/o pooler + head: everything
    # every bias of the backbone: embeddings LN 384 + 6 layers x (q,k,v,attn-out 4*384 + attn LN 384 +
    # FFN in 1536 + FFN out 384 + out LN 384 = 4,224) = 25,728; CLS head: pooler bias 384 + classifier 770
    "bitfit": ("bitfit", {}, "cls", 25_728 + 384 + HEAD, None),
    # r=1 on query and value: 6 layers x 2 targets x (A 1x384 + B 384x1) = 9,216; + classifier 770
    "lora": ("lora", {"r": 1, "alpha": 2, "target_modules": ["query", "value"]}, "cls", 9_986, None),
    "linear": ("linear", {}, "mask", HEAD, {"head.weight", "head.bias"}),
    # z in R^d plus the head: d + 770 (the W_l are fixed buffers)
    "jr-output": ("jr", {"d": D, "position": "output"}, "mask", D + HEAD, {"adapter.z", "head.weight", "head.bias"}),
    "jr-intermediate": ("jr", {"d": D, "position": "intermediate"}, "mask", D + HEAD,
                        {"adapter.z", "head.weight", "head.bias"}),
    "jr-attention": ("jr", {"d": D, "position": "attention"}, "mask", D + HEAD,
                     {"adapter.z", "head.weight", "head.bias"}),
    "jr_warp": ("jr_warp", {"d": D, "prompt_token_id": 0}, "mask", D + HEAD, {"adapter.z", "head.weight", "head.bias"}),
}
# Larger than the configs' defaults: six steps on one batch should move the loss clearly.
LR = {"full": 1e-4, "bitfit": 3e-3, "lora": 3e-3, "linear": 1e-2, "jr": 1e-2, "jr_warp": 1e-2}


def fixed_batch(tokenizer, sst2_encoded, n=8):
    """n SST-2 rows, both classes, collated once (the same batch every step: a reliable loss fall)."""
    items = sst2_encoded[:n]
    assert {it["labels"] for it in items} == {0, 1}
    return items


def batch_loss(model, batch):
    was = model.training
    model.eval()          # dropout off, so the comparison is exact and not noisy
    with torch.no_grad():
        labels = batch["labels"]
        loss = loss_fn(model(**{k: v for k, v in batch.items() if k != "labels"}), labels, False).item()
    model.train(was)
    return loss


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_trains_frozen_stays_and_counts(case, make_model, tokenizer, sst2_encoded):
    method, options, head, expected, names = CASES[case]
    model = make_model(head=head, dropout=None if method in ("full", "bitfit", "lora") else 0.0)
    torch.manual_seed(0)
    apply_method(model, method, **options)
    trainable, total = count_parameters(model)
    assert trainable == expected
    # by state_dict name: the CLS-head model reaches its backbone under two names (hf.bert.*, backbone.*)
    state = model.state_dict(keep_vars=True)
    trainable_names = {n for n, t in state.items() if isinstance(t, torch.nn.Parameter) and t.requires_grad}
    if names is not None:
        assert trainable_names == names
    if method == "full":
        assert trainable == total
    if method == "lora":
        assert all("lora_" in n or n.startswith("hf.classifier.") for n in trainable_names)
    if method == "bitfit":
        assert all(n.endswith("bias") for n in trainable_names - {"hf.classifier.weight"})
        assert "hf.classifier.weight" in trainable_names

    items = fixed_batch(tokenizer, sst2_encoded)
    collate = make_collate(tokenizer, is_regression=False)
    batch = collate(items)
    before = state_snapshot(model)
    frozen = set(before) - trainable_names
    loss0 = batch_loss(model, batch)
    trainer = Trainer(model, items, {}, collate, TaskInfo(False, ["accuracy"], "accuracy"),
                      LoopConfig(max_steps=1000, batch_size=8, lr=LR[method], warmup_ratio=0.0),
                      torch.device("cpu"))
    for _ in range(6):
        trainer.train_step([items])
    loss1 = batch_loss(model, batch)
    assert loss1 < loss0 - 0.02, f"{case}: loss {loss0:.4f} -> {loss1:.4f}"

    after = state_snapshot(model)
    assert after.keys() == before.keys()
    if method.startswith("jr"):
        assert any(n.startswith("adapter.projection.") for n in frozen)    # the W_l buffers are compared too
    changed = [n for n in frozen if not torch.equal(before[n], after[n])]
    assert changed == [], f"frozen tensors changed: {changed[:5]}"
    unmoved = [n for n in trainable_names if torch.equal(before[n], after[n])]
    assert unmoved == []     # (LoRA's B starts at 0 so A gets no gradient at step 1, but does later)


def test_unknown_method_and_bad_options(make_model):
    model = make_model()
    with pytest.raises(ValueError, match=r"method='nope' is not valid; choose one of full, bitfit, lora, linear, jr, jr_warp"):
        apply_method(model, "nope")
    for d in (0, -3):
        with pytest.raises(ValueError, match=rf"SlashConfig: d={d} is not valid; it must be >= 1"):
            apply_method(make_model(), "jr", d=d)
    for d in (True, 2.5, "8"):
        with pytest.raises(TypeError, match=r"SlashConfig: d=.* is not valid; it must be an integer"):
            apply_method(make_model(), "jr", d=d)
    with pytest.raises(ValueError, match=r"SlashConfig: position='ffn' is not valid; choose one of output, intermediate, attention"):
        apply_method(make_model(), "jr", d=8, position="ffn")
    with pytest.raises(ValueError, match=r"SlashConfig: projection='sparse' is not valid; choose one of dense, structured"):
        apply_method(make_model(), "jr", d=8, projection="sparse")
    with pytest.raises(ValueError, match=r"SlashConfig: z_init='ones' is not valid; choose one of normal, zeros"):
        apply_method(make_model(), "jr", d=8, z_init="ones")
    with pytest.raises(TypeError, match=r"SlashConfig: unknown option 'positon' \(did you mean 'position'\?\)"):
        apply_method(make_model(), "jr", d=8, positon="output")
    with pytest.raises(ValueError, match=r"LoraOptions: target_modules \['qkv'\] not found"):
        apply_method(make_model(head="cls"), "lora", target_modules=["qkv"])
    with pytest.raises(ValueError, match=r"LoraOptions: r=0 is not valid; it must be >= 1"):
        apply_method(make_model(head="cls"), "lora", r=0)
    with pytest.raises(TypeError, match=r"FullOptions: unknown option 'd'; valid options: none"):
        apply_method(make_model(), "full", d=8)
    assert method_names() == ("full", "bitfit", "lora", "linear", "jr", "jr_warp")


# ---------------------------------------------------------------------------------------------
# the shifts are z W_l


def _inputs(tokenizer, sst2_encoded, n=3):
    batch = make_collate(tokenizer, False)(sst2_encoded[:n])   # rows of different lengths: padding inside
    batch.pop("labels")
    return batch


def _shift(adapter, l):
    """s_l computed independently of the adapter's own forward: z @ W_l."""
    return adapter.z.detach() @ adapter.projection.matrix(l)


@pytest.mark.parametrize("position,width,bias_of", [
    ("output", H, "output.dense"),
    ("intermediate", F, "intermediate.dense"),
    ("attention", H, "attention.output.LayerNorm"),
])
def test_slash_adds_z_w_l_and_folds_into_the_bias(position, width, bias_of, make_model, tokenizer, sst2_encoded):
    model = make_model().eval()
    torch.manual_seed(1)
    apply_method(model, "jr", d=64, position=position)
    adapter = model.adapter
    with torch.no_grad():
        adapter.z.mul_(20.0)            # a shift big enough to matter
    assert adapter.projection.out_dim == width
    layers = find_encoder_layers(model)
    before, after = {}, {}
    for l, layer in enumerate(layers):
        target = locate(layer, position)
        assert target is layer.get_submodule(bias_of)
        # prepend=True runs before SLaSh's hook (raw output), a plain hook after it (shifted output)
        target.register_forward_hook(lambda m, i, o, l=l: before.__setitem__(l, o.detach().clone()), prepend=True)
        target.register_forward_hook(lambda m, i, o, l=l: after.__setitem__(l, o.detach().clone()))
    batch = _inputs(tokenizer, sst2_encoded)
    with torch.no_grad():
        hooked = model(**batch)
    for l in range(L):
        s = _shift(adapter, l)
        assert s.shape == (width,)
        delta = after[l] - before[l]
        assert torch.allclose(delta, s.expand_as(delta), atol=1e-5), f"layer {l}"

    # The exact fold: no hooks, s_l added to that module's bias; same logits.
    folded = copy.deepcopy(model)
    folded.adapter.remove_hooks()
    for l, layer in enumerate(find_encoder_layers(folded)):
        with torch.no_grad():
            layer.get_submodule(bias_of).bias.add_(_shift(adapter, l))
    with torch.no_grad():
        plain = make_model().eval()(**batch)
        folded_logits = folded(**batch)
    assert torch.allclose(hooked, folded_logits, atol=1e-4)
    assert not torch.allclose(hooked, plain, atol=1e-2)     # the shift did change the model


def test_slash_per_example_z_grads_sum_to_the_batch_gradient(make_model, tokenizer, sst2_encoded):
    model = make_model()
    torch.manual_seed(2)
    apply_method(model, "jr", d=32)
    model.adapter.per_example = True
    batch = make_collate(tokenizer, False)(sst2_encoded[:4])
    labels = batch.pop("labels")
    loss_fn(model(**batch), labels, False, reduction="sum").backward()
    per_example = model.adapter.per_example_z_grads()
    assert per_example.shape == (4, 32)
    assert torch.allclose(per_example.sum(0), model.adapter.z.grad, atol=1e-5)
    # and each row is that example's own gradient
    one = make_collate(tokenizer, False)(sst2_encoded[1:2])
    model.zero_grad()
    lab = one.pop("labels")
    loss_fn(model(**one), lab, False, reduction="sum").backward()
    assert torch.allclose(per_example[1], model.adapter.z.grad, atol=1e-5)


def test_jr_warp_prompt_is_s1_then_shifted_by_s_l(make_model, tokenizer, sst2_encoded):
    model = make_model().eval()
    torch.manual_seed(3)
    apply_method(model, "jr_warp", d=64, prompt_token_id=tokenizer.pad_token_id)
    adapter = model.adapter
    layers = find_encoder_layers(model)
    before, after = {}, {}
    for l, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, l=l: before.__setitem__(l, a[0].detach().clone()), prepend=True)
        layer.register_forward_pre_hook(lambda m, a, l=l: after.__setitem__(l, a[0].detach().clone()))
    batch = _inputs(tokenizer, sst2_encoded)
    T = batch["input_ids"].size(1)
    with torch.no_grad():
        model(**batch)
    # entering layer 1 the prompt's hidden state IS s_1 (for every row)
    assert after[0].shape == (3, T + 1, H)
    assert torch.allclose(after[0][:, 0], _shift(adapter, 0).expand(3, H), atol=1e-6)
    for l in range(1, L):
        assert torch.allclose(after[l][:, 0] - before[l][:, 0], _shift(adapter, l).expand(3, H), atol=1e-5)
        assert torch.equal(after[l][:, 1:], before[l][:, 1:])   # the real tokens are not shifted


def test_jr_warp_logits_do_not_depend_on_padding(make_model, tokenizer, sst2_encoded):
    model = make_model().eval()
    torch.manual_seed(4)
    apply_method(model, "jr_warp", d=64, prompt_token_id=tokenizer.pad_token_id)
    collate = make_collate(tokenizer, False)
    item = min(sst2_encoded[:16], key=lambda it: len(it["input_ids"]))
    longer = max(sst2_encoded[:16], key=lambda it: len(it["input_ids"]))
    assert len(longer["input_ids"]) >= len(item["input_ids"]) + 5
    alone, padded = collate([item]), collate([item, longer])
    with torch.no_grad():
        a = model(**{k: v for k, v in alone.items() if k != "labels"})
        b = model(**{k: v for k, v in padded.items() if k != "labels"})
        extra = {k: torch.cat([v, torch.full((1, 7), tokenizer.pad_token_id if k == "input_ids" else 0)], 1)
                 for k, v in alone.items() if k != "labels"}
        c = model(**extra)
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert torch.allclose(a[0], c[0], atol=1e-5)
