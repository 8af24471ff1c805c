"""MiniLM inference latency: base model vs jr with hooks vs the `jrft export` of that jr model.

All three in one process, same batch (random token ids, the mask token last), round-robin repeats,
median and quartiles. `base` is the backbone + mask head with no method attached; `jr (hooks)`
is SLaSh d=1024 at the output position with its forward hooks; `exported` is the jr model exported
(shifts folded into biases) and loaded with AutoModelForSequenceClassification(trust_remote_code=True).

    python scripts/bench_inference.py [--batch 16] [--seq 64] [--repeats 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from jrft_cli.core.artifact import save_artifact
    from jrft_cli.bench.measure import inference_latency
    from jrft_cli.cli.config import compose
    from jrft_cli.serving.export import export_run
    from jrft_cli.core.backbone import resolve_model_name
    from jrft_cli.training.recipe import artifact_info, build_model
    from omegaconf import OmegaConf

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cfg = OmegaConf.to_container(compose(["task=sst2", "logger=none", "method=jr", f"d={args.d}"]), resolve=True)
    tok = AutoTokenizer.from_pretrained(resolve_model_name(cfg["model"]["name"]))
    jr = build_model(cfg, tok, 2).eval()
    base = build_model({**cfg, "method": {**cfg["method"], "name": "linear"}}, tok, 2).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(jr, Path(tmp) / "run", artifact_info(cfg, jr, tok, 2))
        export_run(Path(tmp) / "run", Path(tmp) / "export")
        exported = AutoModelForSequenceClassification.from_pretrained(str(Path(tmp) / "export"),
                                                                      trust_remote_code=True).eval()

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tok.vocab_size, (args.batch, args.seq), generator=g)
    ids[:, 0], ids[:, -2], ids[:, -1] = tok.cls_token_id, tok.mask_token_id, tok.sep_token_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        diff = (jr(**batch) - exported(**batch).logits).abs().max().item()
    stats = inference_latency({"base": lambda: base(**batch), "jr (hooks)": lambda: jr(**batch),
                               "exported": lambda: exported(**batch)}, repeats=args.repeats)
    print(f"all-MiniLM-L6-v2, batch {args.batch} x {args.seq} tokens, fp32, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}; "
          f"{args.repeats} round-robin repeats after 3 warm-up rounds; max |logit diff| jr vs exported {diff:.2g}\n")
    print("| model | median (ms) | q1 (ms) | q3 (ms) | vs base |")
    print("|---|---:|---:|---:|---:|")
    ref = stats["base"]["median_ms"]
    for name, s in stats.items():
        print(f"| {name} | {s['median_ms']:.1f} | {s['q1_ms']:.1f} | {s['q3_ms']:.1f} | "
              f"{s['median_ms'] / ref:.3f} |")
    print("\n" + json.dumps(stats))


if __name__ == "__main__":
    main()
