"""Step time of DP-jr over non-private jr, and over opacus DP full finetuning and DP LoRA, at the same
logical batch, in one process (jrft_cli.bench.measure.private_step_times).

    python scripts/bench_private.py --glue /work/shared/glue --batch 256 --micro 32 --steps 3 --threads 2
"""
from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue", default="/work/shared/glue", help="glue_data/ root (SST-2 train rows give the lengths)")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--micro", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="jr,full,lora")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from jrft_cli.bench.measure import private_step_times
    from jrft_cli.cli.config import compose
    from jrft_cli.tasks.glue import encode, load_split, make_collate
    from jrft_cli.core.backbone import load_tokenizer, resolve_model_name
    from omegaconf import OmegaConf

    hf_logging.set_verbosity_error()
    cfg = OmegaConf.to_container(compose(["task=sst2"]), resolve=True)
    path = resolve_model_name(cfg["model"]["name"])
    tok = load_tokenizer(cfg["model"]["name"])
    rows = load_split(cfg["task"], "train", args.glue, args.rows)
    data = encode(rows, tok, mask_format=True, max_length=128)
    out = private_step_times(path, data, make_collate(tok, False), tok.mask_token_id, tok.pad_token_id,
                             batch_size=args.batch, micro_batch_size=args.micro, steps=args.steps,
                             methods=args.methods.split(","))
    out["mean_tokens"] = sum(len(d["input_ids"]) for d in data) / len(data)
    print(json.dumps({k: v for k, v in out.items() if k != "all_ms"}, indent=2))
    print(json.dumps(out["all_ms"]))


if __name__ == "__main__":
    main()
