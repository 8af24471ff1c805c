"""Multi-process data parallel training (torch.distributed): who am I, and the process group.

Launchers: `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
`srun` (SLURM) sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, and the rendezvous address is
derived here from the job's first node.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo(0, 1, 0)


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return nodelist.split(",")[0].split("[")[0]


def detect(env: dict[str, str] | None = None) -> DistInfo:
    """The process's place in a multi-process run (SINGLE when launched alone). Under `srun`
    with several tasks it also fills in the torch.distributed env variables."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    ntasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if ntasks > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        info = DistInfo(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", "0")))
        env.setdefault("MASTER_ADDR", _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        env.update(RANK=str(info.rank), WORLD_SIZE=str(ntasks), LOCAL_RANK=str(info.local_rank))
        return info
    return SINGLE


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (gloo on CPU, nccl on CUDA); no-op for a single process."""
    if info.world_size <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world_size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
