"""A pretrained model seen from retrieval: embeddings for the index, ITM scores for re-ranking.

:class:`RetrievalModel` wraps a :class:`~vlptm.objectives.PretrainingModel` (an encoder of either stream type
with its ITC projections and ITM head) together with the tokenizer and the text/region limits it was
trained with, and turns captions and :class:`~vlptm.structures.RegionFeatures` into batches the same way
pretraining did (:mod:`vlptm.data.pretrain`): the first ``max_regions`` regions of an image, box positions in
the encoder's convention, captions cut at ``max_text_len`` tokens.

Its :attr:`~RetrievalModel.fingerprint` is a digest of the encoder configuration and every weight; an index
records it, so opening an index with another model is an error instead of silent nonsense.

Shape legend: B batch, T text tokens, R regions, D region feature dim, P position dim, E embedding size,
N layers x heads (attention maps).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from vlptm.data.pretrain import pad_regions, pad_text
from vlptm.structures import RegionFeatures

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class RetrievalModelError(ValueError):
    """The model lacks what a retrieval step needs (e.g. no ITM head for re-ranking)."""


ImageEmbeddings = Union[np.ndarray, List[np.ndarray]]  # (I, E), or I region sets (r_i, E)


def itc_score_matrix(text_emb: np.ndarray, image_emb: ImageEmbeddings) -> np.ndarray:
    """``(T, I)`` ITC scores of every caption and image: dot products, or the best row of each region set."""
    if isinstance(image_emb, np.ndarray):
        return text_emb @ image_emb.T
    if not len(image_emb):
        return np.zeros((len(text_emb), 0), dtype=np.float32)
    sizes = [len(s) for s in image_emb]
    scores = text_emb @ np.concatenate(image_emb).T  # (T, sum r)
    return np.maximum.reduceat(scores, np.cumsum([0] + sizes[:-1]), axis=1)  # (T, I)


@dataclass
class Regions:
    """One image's region tensors as the encoder reads them: ``feats (r, D)``, ``pos (r, P)``."""

    feats: Tensor
    pos: Tensor


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class RetrievalModel:
    """Embeddings and matching scores of a pretrained model, in inference mode.

    Args:
        model: a :class:`~vlptm.objectives.PretrainingModel` with an ITC head (for embeddings) and,
            for re-ranking, an ITM head.
        tokenizer: its BERT tokenizer (:func:`vlptm.text.load_tokenizer`).
        max_regions: regions per image the model sees (the first ones of the store).
        max_text_len: tokens per caption including [CLS] and [SEP].
        source: where the weights came from (recorded in index manifests).
        device: where the model runs (default CUDA when available).
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` for autocast, ``None`` for fp32.
        max_vectors: with region pooling (:attr:`multi_vector`), keep at most this many vectors per image: those
            of its first regions, which a detector's store orders by confidence. Bounds the index size (a
            vector per region otherwise); ``None`` keeps them all. Recorded in index manifests.

    Example:
        >>> from vlptm.models import create_model
        >>> from vlptm.objectives import PretrainingModel
        >>> from vlptm.text import load_tokenizer
        >>> net = PretrainingModel(create_model("single-tiny", region_feat_dim=8), tasks=["itc", "itm"],
        ...                        itc_embed_dim=16)
        >>> model = RetrievalModel(net, load_tokenizer(), device="cpu")
        >>> model.embed_texts(["a red circle", "two squares"]).shape
        (2, 16)
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_regions: int = 36, max_text_len: int = 40,
                 source: str = "", device: Union[str, torch.device, None] = None,
                 autocast_dtype: Optional[torch.dtype] = None, max_vectors: Optional[int] = None) -> None:
        if getattr(model, "itc", None) is None:
            raise RetrievalModelError("the model has no ITC head: retrieval embeddings come from the ITC "
                                      "projections (pretrain with the 'itc' task)")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.net = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_regions = int(max_regions)
        self.max_text_len = int(max_text_len)
        self.source = str(source)
        self.autocast_dtype = autocast_dtype
        self.pos_dim = int(model.encoder.config.region_pos_dim)
        self.region_feat_dim = int(model.encoder.config.region_feat_dim)
        self.embed_dim = int(model.itc.out_dim)
        self.multi_vector = bool(model.itc.multi_vector)  # images embedded as one vector per region
        if max_vectors is not None and int(max_vectors) < 1:
            raise ValueError(f"max_vectors must be at least 1 (or None for all), got {max_vectors}")
        self.max_vectors = None if max_vectors is None else int(max_vectors)
        self._fingerprint: Optional[str] = None

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: PathLike, *, device: Union[str, torch.device, None] = None,
                        autocast_dtype: Optional[torch.dtype] = None,
                        max_vectors: Optional[int] = None) -> "RetrievalModel":
        """Load a pretraining run (its latest checkpoint), ``RUN/checkpoint`` or a step directory.

        The tokenizer, ``max_regions`` and ``max_text_len`` are read from the run's recipe; ``max_vectors`` as
        in the constructor.

        Raises:
            FileNotFoundError: no pretraining checkpoint at ``path``.
        """
        import yaml

        from vlptm.text import load_tokenizer
        from vlptm.train.checkpoint import CONFIG_FILE, resolve_checkpoint
        from vlptm.train.pretrain import load_pretraining_model

        checkpoint = resolve_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"no pretraining checkpoint at {path}")
        recipe = yaml.safe_load((checkpoint / CONFIG_FILE).read_text()) or {}
        data = recipe.get("data") or {}
        return cls(load_pretraining_model(str(checkpoint)), load_tokenizer(data.get("tokenizer", "minilm-l6")),
                   max_regions=int(data.get("max_regions", 36)), max_text_len=int(data.get("max_text_len", 40)),
                   source=str(Path(path).resolve()), device=device, autocast_dtype=autocast_dtype,
                   max_vectors=max_vectors)

    @property
    def has_itm(self) -> bool:
        """Whether the model has an ITM head (needed for re-ranking)."""
        return getattr(self.net, "itm", None) is not None

    @property
    def fingerprint(self) -> str:
        """Hex digest of the encoder type, configuration and every weight (computed once)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            encoder = self.net.encoder
            config = {"model_type": encoder.model_type, **encoder.config.to_dict()}
            config.pop("gradient_checkpointing", None)
            config.pop("attention_backend", None)
            digest.update(json.dumps(config, sort_keys=True, default=str).encode())
            for name, tensor in sorted(self.net.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        """What an index manifest records about this model."""
        return {"fingerprint": self.fingerprint, "source": self.source,
                "encoder": self.net.encoder.model_type, "embed_dim": self.embed_dim,
                "max_regions": self.max_regions, "max_text_len": self.max_text_len, "max_vectors": self.max_vectors}

    # -- inputs -----------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> List[np.ndarray]:
        """Token ids of each text, ``[CLS] ... [SEP]``, cut at ``max_text_len``."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_text_len)["input_ids"]
        return [np.asarray(ids, dtype=np.int64) for ids in encoded]

    def regions(self, features: RegionFeatures) -> Regions:
        """The first ``max_regions`` regions of an image as encoder inputs.

        Raises:
            RetrievalModelError: the features are not as wide as the encoder's ``region_feat_dim``.
        """
        if features.feature_dim != self.region_feat_dim:
            raise RetrievalModelError(f"region features are {features.feature_dim}-d but the model expects "
                                      f"{self.region_feat_dim}-d: the index and model must use the same extractor")
        kept = features[: self.max_regions]
        pos = (kept.normalized_positions(self.pos_dim) if self.pos_dim
               else torch.zeros(len(kept), 0))  # (r, P)
        return Regions(feats=kept.features.float(), pos=pos.float())

    def text_batch(self, ids: Sequence[np.ndarray]) -> Dict[str, Tensor]:
        """Pad token id arrays into ``input_ids, attention_mask, token_type_ids (B, T)`` on the device."""
        return {key: value.to(self.device) for key, value in pad_text(ids).items()}

    def region_batch(self, regions: Sequence[Regions]) -> Dict[str, Tensor]:
        """Pad images' regions into ``region_feats (B, R, D)``, ``region_pos (B, R, P)``, ``region_mask (B, R)``."""
        padded = pad_regions([r.feats for r in regions], [r.pos for r in regions])
        return {key: value.to(self.device) for key, value in padded.items()}

    # -- embeddings ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(B, E)`` float32 unit-norm ITC text embeddings."""
        ids = self.tokenize(texts)
        out = np.zeros((len(ids), self.embed_dim), dtype=np.float32)
        order = np.argsort([len(a) for a in ids], kind="stable")  # similar lengths together: less padding
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            with _autocast(self.device, self.autocast_dtype):
                emb = self.net.embed_text(self.text_batch([ids[i] for i in rows]))  # (b, E)
            out[rows] = emb.float().cpu().numpy()
        return out

    @torch.inference_mode()
    def embed_regions(self, regions: Sequence[Regions], batch_size: int = 128) -> ImageEmbeddings:
        """Float32 unit-norm ITC embeddings of images given as :class:`Regions`: a ``(B, E)`` array, or for a
        region-pooling model (:attr:`multi_vector`) a list of ``B`` sets ``(r_i, E)``, one row per region
        (the first :attr:`max_vectors` regions when that is set)."""
        out: Any = [] if self.multi_vector else np.zeros((len(regions), self.embed_dim), dtype=np.float32)
        for start in range(0, len(regions), batch_size):
            chunk = regions[start: start + batch_size]
            with _autocast(self.device, self.autocast_dtype):
                emb = self.net.embed_images(self.region_batch(chunk)).float().cpu().numpy()  # (b, E) / (b, R, E)
            if self.multi_vector:
                cap = self.max_vectors or emb.shape[1]
                out.extend(emb[i, : max(1, min(len(r.feats), cap))] for i, r in enumerate(chunk))
            else:
                out[start: start + len(chunk)] = emb
        return out

    def embed_store(self, store: Any, image_ids: Sequence[str], batch_size: int = 128,
                    progress: bool = False) -> ImageEmbeddings:
        """Image embeddings (see :meth:`embed_regions`) of ``image_ids`` read from a
        :class:`~vlptm.features.FeatureStore`."""
        from tqdm import tqdm

        parts = []
        starts = range(0, len(image_ids), batch_size)
        for start in tqdm(starts, desc="embedding images", unit="batch", disable=not progress):
            chunk = [self.regions(store[i]) for i in image_ids[start: start + batch_size]]
            parts.append(self.embed_regions(chunk, batch_size))
        if self.multi_vector:
            return [item for part in parts for item in part]
        return np.concatenate(parts) if parts else np.zeros((0, self.embed_dim), dtype=np.float32)

    # -- matching -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def itm_scores(self, text_ids: Sequence[np.ndarray], regions: Sequence[Regions],
                   pairs: Union[np.ndarray, Sequence[Tuple[int, int]]], batch_size: int = 128) -> np.ndarray:
        """ITM matching probabilities of ``(text, image)`` pairs, computed in padded batches.

        Args:
            text_ids: token id arrays (:meth:`tokenize`).
            regions: images (:meth:`regions`).
            pairs: ``(P, 2)`` rows ``(text index, image index)`` into the two lists.
            batch_size: pairs per forward pass.

        Returns:
            ``(P,)`` float32 probabilities that the text describes the image.

        Raises:
            RetrievalModelError: the model has no ITM head.
        """
        if not self.has_itm:
            raise RetrievalModelError("the model has no ITM head: re-ranking needs a model pretrained with 'itm'")
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # (P, 2)
        out = np.zeros(len(pairs), dtype=np.float32)
        # pairs sorted by text length, then region count, so each batch pads little
        lengths = np.array([len(a) for a in text_ids])[pairs[:, 0]] if len(pairs) else np.zeros(0)
        counts = np.array([len(r.feats) for r in regions])[pairs[:, 1]] if len(pairs) else np.zeros(0)
        order = np.lexsort((counts, lengths))
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            batch = self.text_batch([text_ids[t] for t in pairs[rows, 0]])
            batch.update(self.region_batch([regions[i] for i in pairs[rows, 1]]))
            with _autocast(self.device, self.autocast_dtype):
                probs = self.net.match_probability(batch)  # (b,)
            out[rows] = probs.float().cpu().numpy()
        return out

    @torch.inference_mode()
    def word_region_attention(self, text: str, features: RegionFeatures) -> Tuple[List[str], np.ndarray, float]:
        """How much each word of ``text`` attends to each region of one image, and their ITM score.

        The maps of the encoder's cross-modal layers are averaged over layers and heads, [CLS]/[SEP] are
        dropped and each word's row is rescaled to sum to one over the regions.

        Returns:
            ``(tokens, attention (T', r), itm_probability)``: WordPiece tokens without the special ones, their
            ``(T', r)`` attention over the first ``r = min(R, max_regions)`` regions, and the ITM probability
            (NaN without an ITM head).
        """
        ids = self.tokenize([text])
        regions = self.regions(features)
        batch = self.text_batch(ids)
        batch.update(self.region_batch([regions]))
        with _autocast(self.device, self.autocast_dtype):
            output = self.net.encoder(batch, output_attentions=True)
        maps = torch.stack([a.float() for a in output.cross_attentions])  # (L, 1, N, T, R)
        attention = maps.mean(dim=(0, 2))[0]  # (T, R)
        attention = attention[1:-1, : len(regions.feats)]  # (T', r) without [CLS] and [SEP]
        attention = attention / attention.sum(dim=1, keepdim=True).clamp_min(1e-12)  # (T', r)
        tokens = self.tokenizer.convert_ids_to_tokens(ids[0][1:-1].tolist())
        score = float(self.net.itm.score(self.net.itm_summary(output, batch))[0]) if self.has_itm else float("nan")
        return tokens, attention.cpu().numpy(), score

