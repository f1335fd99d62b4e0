"""Region-pooled ITC over 2 gloo ranks whose region sets differ in size equals one process on the whole batch.

Rank 0 holds sets of 3 regions, rank 1 sets of 5: each rank pads to the global maximum before the all-gather
(:func:`vlptm.objectives.itc.pad_sets` with ``global_max``). The loss must equal the single-process loss on
the concatenated batch, and each rank's embedding gradients must be ``world_size`` times the single-process
gradients of its rows (DDP then averages parameter gradients over the ranks).
"""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlptm.objectives.itc import ImageTextContrastive, concat_image_embeddings

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

WORLD, BATCH, DIM = 2, 4, 8
REGIONS = (3, 5)  # region-set size on rank 0 and rank 1


def _inputs(rank: int):
    gen = torch.Generator().manual_seed(100 + rank)
    text = torch.nn.functional.normalize(torch.randn(BATCH, DIM, generator=gen), dim=-1)  # (b, F)
    images = torch.nn.functional.normalize(torch.randn(BATCH, REGIONS[rank], DIM, generator=gen), dim=-1)  # (b, R, F)
    pair_ids = torch.arange(BATCH) + rank * BATCH
    pair_ids[-1] = pair_ids[0]  # two captions of one image: not each other's negatives
    return text, images, pair_ids


def _loss_and_grads(objective: ImageTextContrastive, text: torch.Tensor, images: torch.Tensor,
                    pair_ids: torch.Tensor):
    text, images = text.clone().requires_grad_(True), images.clone().requires_grad_(True)
    out = objective(text, images, pair_ids)
    out["itc"].backward()
    return out["itc"].item(), text.grad, images.grad


def _worker(rank: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        objective = ImageTextContrastive(16, embed_dim=DIM, pooling="regions")
        queue.put((rank, _loss_and_grads(objective, *_inputs(rank))))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ranks_with_different_region_counts_match_one_process():
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, port, queue)) for rank in range(WORLD)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in range(WORLD))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    torch.manual_seed(0)
    objective = ImageTextContrastive(16, embed_dim=DIM, pooling="regions")
    parts = [_inputs(rank) for rank in range(WORLD)]
    texts = [p[0].clone().requires_grad_(True) for p in parts]
    images = [p[1].clone().requires_grad_(True) for p in parts]
    out = objective(torch.cat(texts), concat_image_embeddings(images), torch.cat([p[2] for p in parts]))
    out["itc"].backward()

    for rank in range(WORLD):
        loss, text_grad, image_grad = results[rank]
        assert loss == pytest.approx(out["itc"].item(), abs=1e-6)
        assert image_grad.shape == (BATCH, REGIONS[rank], DIM)  # padding rows fold back into the real ones
        torch.testing.assert_close(text_grad / WORLD, texts[rank].grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(image_grad / WORLD, images[rank].grad, atol=1e-6, rtol=1e-5)
    assert images[0].grad.abs().sum() > 0 and images[1].grad.abs().sum() > 0
