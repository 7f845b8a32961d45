"""Negatives gathered across DDP workers: two gloo processes (no Ray) holding half a batch each give exactly the loss
and gradients of one process holding all of it (``torch.distributed.nn.functional.all_gather`` keeps gradients)."""

import multiprocessing
import socket

import torch

from pipeline.model.contrastive import pair_loss
from support.contrastive_ranks import PA, PB, embeddings, run_rank


def test_two_ranks_equal_one_process_with_the_whole_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a child forked after torch started its thread pools can hang in its first kernel
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=run_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted((out.get(timeout=120) for _ in procs), key=lambda r: r[0])
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    za, zb = embeddings()
    a, b = za.clone().requires_grad_(True), zb.clone().requires_grad_(True)
    loss, n = pair_loss(a, b, PA, PB, torch.tensor(5.0))
    (loss * n).backward()
    assert sum(r[2] for r in results) == n == 6
    assert abs(sum(r[1] for r in results) - (loss * n).item()) < 1e-4
    assert torch.allclose(torch.tensor(results[0][3] + results[1][3]), a.grad, atol=1e-5)
    assert torch.allclose(torch.tensor(results[0][4] + results[1][4]), b.grad, atol=1e-5)
