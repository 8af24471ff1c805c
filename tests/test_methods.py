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
    "lora-cls": ("lora", {"r": 1, "alpha": 2, "target_modules": ["query", "value"]}, "cls", 9_986, None),
    # the paper's LoRA: the same 9,216 plus one linear layer on the first token (770)
    "lora-first": ("lora", {"r": 1}, "first", 9_986, None),
    # Houlsby adapters, reduction factor 768 -> bottleneck 1: 12 adapters x (down 384+1 + up 384+384) = 13,836
    "adapters": ("adapters", {}, "first", 13_836 + HEAD, None),
    # reduction factor 16 -> bottleneck 24: 12 x (384*24+24 + 24*384+384) = 226,080
    "adapters-rf16": ("adapters", {"reduction_factor": 16}, "first", 226_080 + HEAD, None),
    "linear": ("linear", {}, "mask", HEAD, {"head.weight", "head.bias"}),
    # z in R^d plus the head: d + 770 (the W_l are fixed buffers)
    "jr-output": ("jr", {"d": D, "position": "output"}, "mask", D + HEAD, {"adapter.z", "head.weight", "head.bias"}),
    "jr-intermediate": ("jr", {"d": D, "position": "intermediate"}, "mask", D + HEAD,
                        {"adapter.z", "head.weight", "head.bias"}),
    "jr-attention": ("jr", {"d": D, "position": "attention"}, "mask", D + HEAD,
                     {"adapter.z", "head.weight", "head.bias"}),
    "jr_warp": ("jr_warp", {"d": D}, "mask", D + HEAD, {"adapter.z", "head.weight", "head.bias"}),
    # k prompt vectors of H values each: k*H + 770
    "warp": ("warp", {"k": 5}, "mask", 5 * H + HEAD, {"adapter.z", "head.weight", "head.bias"}),
}
# Larger than the configs' defaults: six steps on one batch should move the loss clearly.
LR = {"full": 1e-4, "bitfit": 3e-3, "lora": 3e-3, "adapters": 3e-3, "linear": 1e-2, "jr": 1e-2, "jr_warp": 1e-2,
      "warp": 1e-2}


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
    model = make_model(head=head, dropout=None if method in ("full", "bitfit", "lora", "adapters") else 0.0)
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
        assert all("lora_" in n or n.startswith(("hf.classifier.", "head.")) for n in trainable_names)
    if method == "adapters":
        assert all(n.startswith(("adapter.blocks.", "head.")) for n in trainable_names)
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
    if method in ("jr", "jr_warp"):
        assert any(n.startswith("adapter.projection.") for n in frozen)    # the W_l buffers are compared too
    changed = [n for n in frozen if not torch.equal(before[n], after[n])]
    assert changed == [], f"frozen tensors changed: {changed[:5]}"
    unmoved = [n for n in trainable_names if torch.equal(before[n], after[n])]
    assert unmoved == []     # (LoRA's B starts at 0 so A gets no gradient at step 1, but does later)


def test_unknown_method_and_bad_options(make_model):
    model = make_model()
    with pytest.raises(ValueError, match=r"method='nope' is not valid; choose one of full, bitfit, lora, adapters, linear, "
                                         r"jr, jr_warp, warp"):
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
    with pytest.raises(ValueError, match=r"AdapterOptions: reduction_factor=0.0 is not valid; it must be > 0"):
        apply_method(make_model(head="first"), "adapters", reduction_factor=0)
    with pytest.raises(ValueError, match=r"WarpOptions: k=0 is not valid; it must be >= 1"):
        apply_method(make_model(), "warp", k=0)
    with pytest.raises(ValueError, match=r"BitFitOptions: head_weights='dense' is not valid; choose one of output, all"):
        apply_method(make_model(head="cls"), "bitfit", head_weights="dense")
    assert method_names() == ("full", "bitfit", "lora", "adapters", "linear", "jr", "jr_warp", "warp")


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
    apply_method(model, "jr_warp", d=64)
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
    apply_method(model, "jr_warp", d=64)
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


def test_jr_warp_keeps_the_real_tokens_positions(make_model, tokenizer, sst2_encoded):
    """The prompt enters after the embedding layer: on an absolute-position model (MiniLM/BERT) the real
    tokens' inputs to the first layer are exactly the plain model's, and the prompt position holds
    s_1 (here 0). Prepending an input id instead (jrft's earlier JR-WARP) shifts every real token's
    position by one, which this comparison catches (checked below on the same batch)."""
    plain = make_model().eval()
    model = make_model().eval()
    apply_method(model, "jr_warp", d=64)
    with torch.no_grad():
        model.adapter.z.zero_()                      # s_l = 0 for every l
    seen = {}
    find_encoder_layers(plain)[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("plain", a[0].clone()))
    find_encoder_layers(model)[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("warp", a[0].clone()))
    batch = _inputs(tokenizer, sst2_encoded)
    with torch.no_grad():
        plain(**batch)
        model(**batch)
    B, T = batch["input_ids"].shape
    assert seen["warp"].shape == (B, T + 1, H)
    assert torch.equal(seen["warp"][:, 1:], seen["plain"])      # real tokens: same positions, same inputs
    assert torch.equal(seen["warp"][:, 0], torch.zeros(B, H))   # the prompt: s_1 = 0
    # the earlier scheme (a pad id prepended to the input ids) moves every real token one position on
    shifted = {k: torch.cat([torch.full_like(v[:, :1], tokenizer.pad_token_id if k == "input_ids" else
                                             int(k == "attention_mask")), v], 1) for k, v in batch.items()}
    with torch.no_grad():
        prepended = plain.backbone.embeddings(input_ids=shifted["input_ids"], token_type_ids=shifted["token_type_ids"])
    assert not torch.allclose(prepended[:, 1:], seen["plain"], atol=1e-3)


def test_warp_inserts_its_k_vectors_at_the_input_only(make_model, tokenizer, sst2_encoded):
    model = make_model().eval()
    torch.manual_seed(5)
    apply_method(model, "warp", k=4)
    prompts = model.adapter.shifts().detach()
    assert prompts.shape == (4, H)
    assert 0.5 < float(prompts.std() * H ** 0.5) < 2.0        # each vector ~ N(0, I/H)
    layers = find_encoder_layers(model)
    before, after = {}, {}
    for l, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, l=l: before.__setitem__(l, a[0].detach().clone()), prepend=True)
        layer.register_forward_pre_hook(lambda m, a, l=l: after.__setitem__(l, a[0].detach().clone()))
    plain = make_model().eval()
    plain_in = {}
    find_encoder_layers(plain)[0].register_forward_pre_hook(lambda m, a: plain_in.__setitem__(0, a[0].clone()))
    batch = _inputs(tokenizer, sst2_encoded)
    with torch.no_grad():
        model(**batch)
        plain(**batch)
    assert after[0].shape[1] == batch["input_ids"].size(1) + 4
    assert torch.equal(after[0][:, :4], prompts.expand(3, -1, -1))
    assert torch.equal(after[0][:, 4:], plain_in[0])
    for l in range(1, L):
        assert torch.equal(after[l], before[l])                  # no layer hooks


def test_adapters_sit_after_each_sublayer_output_before_the_layernorm(make_model, tokenizer, sst2_encoded):
    model = make_model(head="first").eval()
    torch.manual_seed(6)
    apply_method(model, "adapters", reduction_factor=48)         # bottleneck 8
    blocks = model.adapter.blocks
    assert len(blocks) == 2 * L and blocks[0].down.out_features == 8
    with torch.no_grad():
        for b in blocks:                                         # an adapter big enough to matter
            b.up.weight.normal_(0, 0.5)
    layers = find_encoder_layers(model)
    raw, out, ln_in = {}, {}, {}
    for l, layer in enumerate(layers):
        for i, (target, ln) in enumerate(((layer.attention.output.dropout, layer.attention.output.LayerNorm),
                                          (layer.output.dropout, layer.output.LayerNorm))):
            key = (l, i)
            target.register_forward_hook(lambda m, a, o, k=key: raw.__setitem__(k, o.detach().clone()), prepend=True)
            target.register_forward_hook(lambda m, a, o, k=key: out.__setitem__(k, o.detach().clone()))
            ln.register_forward_pre_hook(lambda m, a, k=key: ln_in.__setitem__(k, a[0].detach().clone()))
    batch = _inputs(tokenizer, sst2_encoded)
    with torch.no_grad():
        adapted = model(**batch)
    for (l, i), h in raw.items():
        b = blocks[2 * l + i]
        with torch.no_grad():
            want = h + b.up(torch.nn.functional.silu(b.down(h)))
        torch.testing.assert_close(out[(l, i)], want)
        # the LayerNorm gets residual + adapted output: its input minus the adapter's output is the residual
        assert not torch.allclose(ln_in[(l, i)], ln_in[(l, i)] - (want - h), atol=1e-3)
    # zero up-projections make every adapter the identity: the plain model's logits (same head)
    with torch.no_grad():
        for b in blocks:
            b.up.weight.zero_()
            b.up.bias.zero_()
        identity = model(**batch)
    plain = make_model(head="first").eval()
    plain.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(identity, plain(**batch))
    assert not torch.allclose(adapted, identity, atol=1e-3)


def test_bitfit_paper_set_freezes_the_heads_dense_weight(tmp_path, tokenizer):
    """On RoBERTa's head (dense + tanh + out_proj) the paper's BitFit trains every bias and out_proj's
    weight, not dense's; head_weights=all trains the whole head (jrft's earlier BitFit)."""
    from conftest import tiny_roberta

    from jrft_cli.core.backbone import SequenceClassifier

    path = str(tiny_roberta(tmp_path / "tiny-roberta"))
    trained = {}
    for mode in ("output", "all"):
        model = SequenceClassifier(path, 3, head="cls", mask_token_id=4)
        apply_method(model, "bitfit", head_weights=mode)
        trained[mode] = {n for n, p in model.named_parameters() if p.requires_grad}
        assert model.output_projection() is model.hf.classifier.out_proj
    head = {"hf.classifier.dense.weight", "hf.classifier.dense.bias", "hf.classifier.out_proj.weight",
            "hf.classifier.out_proj.bias"}
    assert trained["all"] - trained["output"] == {"hf.classifier.dense.weight"}
    assert head - trained["output"] == {"hf.classifier.dense.weight"}
    assert all(n.endswith("bias") for n in trained["output"] - {"hf.classifier.out_proj.weight"})
