"""Shared fixtures of the retrieval, serve and browser tests: a small scene world, its feature store, a model.

The feature store is written through the real :class:`~vlptm.features.FeatureStoreWriter` with the world's
ground-truth boxes and seeded features (the encoders are freshly initialised, so trained features would
add run time and nothing else); the model is a tiny encoder with fresh ITC/ITM heads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

FEATURE_DIM = 16


def make_world(root: Path, num_images: int = 12, seed: int = 0) -> Tuple[Path, Path]:
    """Generate a scene world and a feature store of its images: returns ``(world dir, store dir)``."""
    from vlptm.data.readers import read_records
    from vlptm.data.scenes import generate_world
    from vlptm.features.store import FeatureStoreWriter

    world, store = root / "world", root / "store"
    generate_world(world, num_images, seed=seed)
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(store, feature_dim=FEATURE_DIM, extractor_name="test-gt-boxes",
                            extractor_config_hash="feedbeef", images_per_shard=5) as writer:
        for record in read_records(world / "instances.json"):
            boxes = np.asarray(record.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
            writer.add_arrays(record.image_id, boxes=boxes, scores=np.ones(len(boxes), np.float32),
                              features=rng.normal(size=(len(boxes), FEATURE_DIM)).astype(np.float32),
                              image_size=(record.height, record.width))
            writer.commit_if_full()
        writer.commit()
    return world, store


def make_model(kind: str = "single-tiny", seed: int = 0, tasks=("itc", "itm"), pooling: str = "mean"):
    """A freshly initialised tiny :class:`~vlptm.retrieval.RetrievalModel` on CPU (``pooling``: its ITC's)."""
    import torch

    from vlptm.models import create_model
    from vlptm.objectives import PretrainingModel
    from vlptm.retrieval import RetrievalModel
    from vlptm.text import load_tokenizer

    torch.manual_seed(seed)
    net = PretrainingModel(create_model(kind, region_feat_dim=FEATURE_DIM), tasks=list(tasks), itc_embed_dim=24,
                           itc_pooling=pooling)
    return RetrievalModel(net, load_tokenizer(), max_regions=10, max_text_len=24, source=f"fresh-{kind}-{seed}",
                          device="cpu")


def make_checkpoint(run_dir: Path, world: Path, store: Path, model: str = "single-tiny", steps: int = 2,
                    pooling: str = "mean") -> Path:
    """A pretraining run of ``steps`` steps (ITC with ``pooling`` + ITM) through the real ``pretrain`` entry point."""
    from vlptm.config import build_config
    from vlptm.train import PretrainConfig, pretrain

    recipe = {
        "model": model, "run_dir": str(run_dir), "progress": False, "log_every": 1, "save_every": 1000,
        "data": {"sources": [{"captions": str(world / "captions.json"), "features": str(store)}],
                 "batch_size": 4, "max_regions": 10, "max_text_len": 24},
        "tasks": {"weights": {"itc": 1.0, "itm": 1.0}, "itc_embed_dim": 24, "itc_pooling": pooling},
        "optim": {"max_steps": steps, "warmup_steps": 1, "lr": 1e-4},
    }
    return pretrain(build_config(PretrainConfig, recipe, []))


_ASSETS: dict = {}


def built_assets() -> dict:
    """World, store, a 2-step pretraining run and an index with captions, built once per test process.

    Returns:
        ``{"root", "world", "store", "run", "index"}`` paths (under a temporary folder removed at exit).
    """
    if not _ASSETS:
        import atexit
        import shutil
        import tempfile

        from vlptm.features.store import FeatureStore
        from vlptm.retrieval import RetrievalModel
        from vlptm.retrieval.build import build_index

        root = Path(tempfile.mkdtemp(prefix="vlptm-retrieval-"))
        atexit.register(shutil.rmtree, root, True)
        world, store = make_world(root, num_images=12)
        run = make_checkpoint(root / "run", world, store)
        index = root / "index"
        build_index(RetrievalModel.from_checkpoint(run, device="cpu"), FeatureStore.open(store), index,
                    images=world / "captions.json", captions=world / "captions.json", progress=False)
        _ASSETS.update(root=root, world=world, store=store, run=run, index=index)
    return dict(_ASSETS)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``vlptm serve`` in a subprocess (real uvicorn on loopback); a context manager that stops it."""

    def __init__(self, index: Path, port: int = 0, startup_timeout: float = 90.0) -> None:
        self.index, self.port, self.startup_timeout = index, port or free_port(), startup_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def __enter__(self) -> "ServerProcess":
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        self.log = open(Path(self.index).parent / f"serve-{self.port}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vlptm.cli", "serve", "--index", str(self.index), "--port", str(self.port),
             "--device", "cpu"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vlptm serve exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.__exit__(None, None, None)
        raise TimeoutError(f"vlptm serve did not answer within {self.startup_timeout}s; see {self.log.name}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except Exception:
                self.process.kill()
                self.process.wait()
        self.log.close()


_SERVER: dict = {}


def shared_server() -> ServerProcess:
    """One ``vlptm serve`` on the shared assets' index per test process (stopped at exit)."""
    if not _SERVER:
        import atexit

        server = ServerProcess(built_assets()["index"]).__enter__()
        atexit.register(server.__exit__, None, None, None)
        _SERVER["server"] = server
    return _SERVER["server"]
