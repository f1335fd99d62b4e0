"""FAISS layouts at scale: build time, memory per vector, single-query latency and recall@10 vs exact search.

The base set is ``--num`` vectors of ``--dim`` dimensions drawn from a structured distribution that looks
like real embeddings: a mixture of many anisotropic Gaussians on the unit sphere. With ``--seed-index`` (an
index directory from ``vlptm index``, whose ``vectors.npy`` holds a trained model's image embeddings), the
mixture is fitted to those embeddings: one component per embedding, centred on it, with the principal
directions and spread of its nearest neighbours (local PCA); otherwise a two-level mixture (super-clusters
and clusters with random low-rank covariances) stands in. Queries are fresh draws from the same mixture,
never copies of base vectors. Everything is unit-normalised and searched by inner product (cosine), as
:class:`vlptm.retrieval.EmbeddingIndex` does.

Each layout is built through :class:`~vlptm.retrieval.EmbeddingIndex` (what ``vlptm index`` uses); the
compressed layout is also searched with exact re-scoring of its candidates from the raw vectors, which stay
on disk (memory-mapped ``vectors.npy``) — the index's resident memory is its codes. (``PQ32np``: FAISS's
index factory otherwise adds polysemous training, which takes minutes and does not change these figures.)

Goals (2 cores): a layout with p50 <= 2 ms at recall@10 >= 0.95, and a compressed layout (<= 64 bytes per
vector) with recall@10 >= 0.80 after exact re-scoring.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_faiss.py                      # 1M x 256, all layouts
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_faiss.py --seed-index runs/retrieval-bench/index
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_faiss.py --num 100000 --layouts Flat "IVF1024,Flat"
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlptm.retrieval import EmbeddingIndex  # noqa: E402

# layout -> list of (search parameters, candidates re-scored exactly: 0 = none)
DEFAULT_LAYOUTS = {
    "Flat": [({}, 0)],
    "IVF2048,Flat": [({"nprobe": 8}, 0), ({"nprobe": 16}, 0), ({"nprobe": 32}, 0)],
    "IVF2048,PQ32np": [({"nprobe": 16}, 0), ({"nprobe": 16}, 100), ({"nprobe": 32}, 200)],
    "HNSW32": [({"efSearch": 64}, 0), ({"efSearch": 128}, 0)],
}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


class Mixture:
    """Anisotropic Gaussian components: centre ``mu (C, d)``, basis ``U (C, d, r)``, spreads ``s (C, r)``, noise."""

    def __init__(self, centres: np.ndarray, bases: np.ndarray, spreads: np.ndarray, noise: float,
                 weights: np.ndarray) -> None:
        self.centres, self.bases, self.spreads, self.noise = centres, bases, spreads, noise
        self.weights = weights / weights.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, d)`` unit vectors: component counts drawn by weight, then one batched draw per component."""
        d = self.centres.shape[1]
        out = np.empty((n, d), dtype=np.float32)
        counts = rng.multinomial(n, self.weights)  # (C,)
        start = 0
        for c in np.flatnonzero(counts):
            m = int(counts[c])
            z = rng.standard_normal((m, self.spreads.shape[1])).astype(np.float32) * self.spreads[c]  # (m, r)
            x = self.centres[c] + z @ self.bases[c].T  # (m, d)
            x += self.noise * rng.standard_normal((m, d)).astype(np.float32)
            out[start: start + m] = x
            start += m
        out = _unit(out)
        return out[rng.permutation(n)]


def mixture_from_embeddings(emb: np.ndarray, dim: int, rank: int, rng: np.random.Generator) -> Mixture:
    """One component per embedding: local PCA of its nearest neighbours gives the anisotropic spread."""
    emb = _unit(np.asarray(emb, dtype=np.float32))
    if emb.shape[1] != dim:
        raise SystemExit(f"--seed-index embeddings are {emb.shape[1]}-d, not --dim {dim}")
    k = min(16, len(emb) - 1)
    sims = emb @ emb.T
    neighbours = np.argsort(-sims, axis=1)[:, 1: k + 1]  # (C, k)
    bases, spreads = [], []
    for c in range(len(emb)):
        diffs = emb[neighbours[c]] - emb[c]  # (k, d)
        _, s, vt = np.linalg.svd(diffs, full_matrices=False)
        r = min(rank, len(s))
        basis = np.zeros((dim, rank), np.float32)
        basis[:, :r] = vt[:r].T
        spread = np.zeros(rank, np.float32)
        spread[:r] = 0.5 * s[:r] / np.sqrt(max(1, k))  # half the neighbourhood's spread along each direction
        bases.append(basis)
        spreads.append(spread)
    nn_dist = np.sqrt(np.maximum(0, 2 - 2 * sims[np.arange(len(emb)), neighbours[:, 0]]))
    noise = float(0.1 * np.median(nn_dist) / np.sqrt(dim))
    return Mixture(emb, np.stack(bases), np.stack(spreads), noise, np.ones(len(emb)))


def synthetic_mixture(dim: int, components: int, rank: int, rng: np.random.Generator) -> Mixture:
    """Two levels: 64 super-clusters on the sphere, ``components`` clusters around them, random low-rank spreads."""
    supers = _unit(rng.standard_normal((64, dim)))
    centres = _unit(supers[rng.integers(64, size=components)] + 0.6 * rng.standard_normal((components, dim))
                    / np.sqrt(dim) * 4)
    bases = np.linalg.qr(rng.standard_normal((components, dim, rank)))[0].astype(np.float32)  # (C, d, r)
    spreads = (0.25 * np.exp(-np.arange(rank) / 4.0)[None, :] * rng.uniform(0.5, 1.5, (components, 1))).astype(
        np.float32)
    return Mixture(centres, bases, spreads, 0.02 / np.sqrt(dim) * 4, rng.uniform(0.2, 1.0, components))


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (free pages otherwise)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    return flat.search(queries, k)[1]


def bench_layout(factory: str, settings, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, workdir: Path,
                 latency_queries: int, train_size: int, rng: np.random.Generator, threads: int,
                 search_threads: int) -> list:
    import faiss

    ids = np.arange(len(base)).astype(str)
    needs_rescore = any(rescore for _, rescore in settings)
    index = EmbeddingIndex(base.shape[1], factory, keep_vectors=needs_rescore)
    start = time.perf_counter()
    if not index.is_trained:
        index.train(base[rng.choice(len(base), size=min(train_size, len(base)), replace=False)])
    index.add(ids, base)
    build = time.perf_counter() - start
    code_bytes = index.code_bytes() / len(base)
    if needs_rescore:  # keep the raw vectors on disk only: reopen with vectors.npy memory-mapped
        index.save(workdir / "index")
        del index
        gc.collect()
        index = EmbeddingIndex.load(workdir / "index", mmap_vectors=True)
    rows = []
    for params, rescore in settings:
        if params:
            index.set_search_params(**params)
        _, found = index.search(queries, k=10, rescore=rescore)
        found = np.array([[int(i) for i in row] + [-1] * (10 - len(row)) for row in found])
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        times = []
        faiss.omp_set_num_threads(search_threads)
        count = latency_queries if factory != "Flat" else min(latency_queries, 50)  # Flat: 1M dot products each
        for q in queries[:count]:
            t0 = time.perf_counter()
            index.search(q[None], k=10, rescore=rescore)
            times.append(time.perf_counter() - t0)
        faiss.omp_set_num_threads(threads)
        times_ms = 1000 * np.array(times)
        rows.append({"layout": factory, "params": params, "rescore": rescore, "build_s": build, "timed": count,
                     "bytes_per_vector": code_bytes, "p50_ms": float(np.percentile(times_ms, 50)),
                     "p99_ms": float(np.percentile(times_ms, 99)), "recall@10": recall})
        print(f"{factory:<16} {json.dumps(params):<18} {rescore:>7} {build:9.1f} {code_bytes:9.1f} "
              f"{rows[-1]['p50_ms']:8.3f} {rows[-1]['p99_ms']:8.3f} {recall:10.3f}", flush=True)
    del index
    shutil.rmtree(workdir / "index", ignore_errors=True)
    gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=1_000_000, help="base vectors (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=256, help="dimensions (default 256)")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall (default 1000)")
    parser.add_argument("--latency-queries", type=int, default=300, help="single queries timed (default 300)")
    parser.add_argument("--seed-index", default=None, help="index directory whose vectors seed the mixture")
    parser.add_argument("--components", type=int, default=4096, help="mixture components without --seed-index")
    parser.add_argument("--rank", type=int, default=16, help="rank of each component's anisotropic spread")
    parser.add_argument("--train-size", type=int, default=100_000, help="vectors used to train IVF/PQ layouts")
    parser.add_argument("--layouts", nargs="*", default=None, help="subset of " + ", ".join(DEFAULT_LAYOUTS))
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads for training, adding, recall (default 2)")
    parser.add_argument("--search-threads", type=int, default=1,
                        help="FAISS threads while timing single queries (default 1: a server runs queries side by "
                             "side; OpenMP barriers on a busy machine only add waiting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    need = args.num * args.dim * 4
    free_disk = shutil.disk_usage(tempfile.gettempdir()).free
    avail = _available_memory()
    print(f"{args.num:,} x {args.dim} float32 = {need / 2**30:.2f} GiB per copy; available RAM "
          f"{avail / 2**30:.1f} GiB, free disk {free_disk / 2**30:.1f} GiB")
    if avail < 3 * need or free_disk < 2 * need:
        raise SystemExit("not enough RAM (3 copies) or disk (2 copies) for this size: lower --num")

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    if args.seed_index:
        seeds = np.load(Path(args.seed_index) / "vectors.npy")
        mixture = mixture_from_embeddings(seeds, args.dim, args.rank, rng)
        source = f"fitted to {len(seeds)} model image embeddings of {args.seed_index}"
    else:
        mixture = synthetic_mixture(args.dim, args.components, args.rank, rng)
        source = f"synthetic two-level mixture of {args.components} components"
    base = mixture.sample(args.num, rng)
    queries = mixture.sample(args.queries, rng)
    print(f"data: {source}, rank-{args.rank} spreads; sampled in {time.perf_counter() - start:.1f}s")
    start = time.perf_counter()
    truth = exact_top(base, queries, 10)
    print(f"exact top-10 of {args.queries} queries in {time.perf_counter() - start:.1f}s; "
          f"mean top-1 cosine {float(np.mean(np.sum(base[truth[:, 0]] * queries, axis=1))):.3f}, mean 10th "
          f"{float(np.mean(np.sum(base[truth[:, 9]] * queries, axis=1))):.3f}")
    layouts = {name: DEFAULT_LAYOUTS.get(name, [({}, 0)]) for name in (args.layouts or DEFAULT_LAYOUTS)}
    print(f"\n{'layout':<16} {'search params':<18} {'rescore':>7} {'build s':>9} {'B/vector':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faiss-") as workdir:
        for factory, settings in layouts.items():
            rows += bench_layout(factory, settings, base, queries, truth, Path(workdir), args.latency_queries,
                                 args.train_size, rng, args.threads, args.search_threads)
    fast = [r for r in rows if r["p50_ms"] <= 2.0 and r["recall@10"] >= 0.95]
    small = [r for r in rows if r["bytes_per_vector"] <= 64 and r["rescore"] and r["recall@10"] >= 0.80]
    fast_names = ", ".join(sorted({r["layout"] for r in fast}))
    print(f"\ngoal p50 <= 2 ms at recall@10 >= 0.95: {'met by ' + fast_names if fast else 'NOT met'}")
    print(f"goal <= 64 B/vector at recall@10 >= 0.80 after exact re-scoring: "
          f"{'met by ' + ', '.join(sorted({r['layout'] for r in small})) if small else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "num": args.num, "dim": args.dim, "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
