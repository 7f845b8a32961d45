"""One gloo rank of tests/pretrain/test_contrastive_ddp.py: a module of its own so a spawned child can import it."""

import os

import torch
import torch.distributed as dist

from pipeline.model.contrastive import pair_loss

PA = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)  # row 3 lacks a, row 5 lacks b
PB = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1], dtype=torch.bool)


def embeddings():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)


def run_rank(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    za, zb = embeddings()
    rows = slice(4 * rank, 4 * rank + 4)
    a, b = za[rows].clone().requires_grad_(True), zb[rows].clone().requires_grad_(True)
    loss, n = pair_loss(a, b, PA[rows], PB[rows], torch.tensor(5.0))
    (loss * n).backward()  # this rank's sum over its pairs
    out.put((rank, (loss * n).item(), n, a.grad.tolist(), b.grad.tolist()))
    dist.barrier()  # neither rank tears gloo down while the other still talks to it (that aborts the process)
    dist.destroy_process_group()
