"""Pretraining data: caption records joined with a feature store, masking, padding and bucketed batches.

:class:`PretrainDataset` yields one caption-image pair per item, already tokenised and masked (text masking
for MLM, region masking for MRM, a random ITM pair), with all randomness drawn from a generator seeded by
``(seed, epoch, index)``: an example is masked identically however the data is split over ranks or
workers, and a resumed run sees exactly the batches it would have seen.

:class:`BucketBatchSampler` groups examples of similar length (text tokens plus regions) to cut padding,
shards every global batch over distributed ranks, and can start an epoch part-way through (resume).

Shape legend: B batch, T text tokens, R regions, D region feature dim, P position dim, C detector classes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from vlptm.data.readers import CaptionRecord
from vlptm.objectives.masking import IGNORE_INDEX, mask_regions, mask_text

logger = logging.getLogger(__name__)


@dataclass
class PretrainSource:
    """One data set of the mix: caption records, the feature store holding their images, a repeat factor.

    Attributes:
        records: caption records (``vlptm.data.readers.read_records``).
        store: a :class:`~vlptm.features.FeatureStore` (or any mapping ``image_id -> RegionFeatures`` with
            ``num_regions(image_id)`` and ``in``).
        repeat: how many times each of its pairs appears per epoch (up-weights small sets in a mix).
        name: for logs.
    """

    records: Sequence[CaptionRecord]
    store: Any
    repeat: int = 1
    name: str = ""


@dataclass
class MaskingOptions:
    """How examples are masked (see :mod:`vlptm.objectives.masking`)."""

    text_scheme: str = "token"  # "token", "whole_word" or "span"
    text_prob: float = 0.15  # fraction of tokens selected for MLM
    span_p: float = 0.2  # geometric parameter of span lengths
    span_max: int = 10  # longest span, in words
    region_prob: float = 0.15  # fraction of regions masked for MRM
    itm_negative_prob: float = 0.5  # probability that an ITM pair is mismatched (image or text swapped)


class PretrainDataset(Dataset):
    """Caption-image pairs from one or more sources, tokenised once, masked per item.

    Images missing from their source's store are skipped with a warning (counted in ``skipped``).

    Args:
        sources: the data mix.
        tokenizer: a BERT ``PreTrainedTokenizerFast`` (``vlptm.text.load_tokenizer``).
        max_text_len: T cap (tokens including [CLS] and [SEP]).
        max_regions: R cap (the first ``max_regions`` regions of each image are kept).
        pos_dim: P of the box positions (4, 5 or 7; 0 gives a zero-width tensor).
        masking: masking options.
        seed: base seed of every item's generator.

    Item keys (numpy): ``input_ids``, ``mlm_input_ids``, ``mlm_labels`` ``(t,)``; ``region_feats (r, D)``,
    ``region_pos (r, P)``, ``region_masked (r,)``, ``region_cls_probs (r, C)`` (when the store has them);
    ``masked_modality`` (0 text, 1 regions: the modality this example hides under conditional masking);
    ``image_index``; ``itm_input_ids``, ``itm_region_feats``, ``itm_region_pos``, ``itm_label``.

    Example:
        >>> ds = PretrainDataset([PretrainSource(records, store)], load_tokenizer())  # doctest: +SKIP
        >>> batch = collate_pretrain([ds[0], ds[1]])                                      # doctest: +SKIP
    """

    def __init__(self, sources: Sequence[PretrainSource], tokenizer: Any, *, max_text_len: int = 40,
                 max_regions: int = 36, pos_dim: int = 7, masking: Optional[MaskingOptions] = None,
                 seed: int = 0) -> None:
        if not sources:
            raise ValueError("PretrainDataset needs at least one source")
        self.masking = masking or MaskingOptions()
        self.max_text_len, self.max_regions, self.pos_dim = max_text_len, max_regions, pos_dim
        self.seed = seed
        self.epoch = 0
        self.stores = [source.store for source in sources]
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
        self._special = np.array(sorted(i for i in special if i is not None), dtype=np.int64)
        continuation = np.zeros(self.vocab_size, dtype=bool)
        for token, index in tokenizer.get_vocab().items():
            continuation[index] = token.startswith("##")
        self._continuation = continuation
        self.images: List[tuple] = []  # (source index, image id)
        image_regions: List[int] = []
        texts: List[str] = []
        example_image: List[int] = []
        self.skipped: Dict[str, int] = {}
        feature_dims = set()
        for s, source in enumerate(sources):
            missing = 0
            feature_dims.add(int(getattr(source.store, "feature_dim", 0)))
            for record in source.records:
                if record.image_id not in source.store:
                    missing += 1
                    continue
                image = len(self.images)
                self.images.append((s, record.image_id))
                image_regions.append(min(int(source.store.num_regions(record.image_id)), max_regions))
                for _ in range(max(1, int(source.repeat))):
                    texts.extend(record.captions)
                    example_image.extend([image] * len(record.captions))
            if missing:
                name = source.name or f"source {s}"
                self.skipped[name] = missing
                logger.warning("%s: %d of %d images are not in the feature store; their captions are skipped",
                               name, missing, len(source.records))
        if len(feature_dims) > 1:
            raise ValueError(f"the sources' feature stores have different feature dims {sorted(feature_dims)}")
        if not texts:
            raise ValueError("no caption has its image in the feature store: nothing to train on")
        cls_dims = {getattr(store, "cls_dim", None) for store in self.stores}
        self.num_region_classes = int(cls_dims.pop() or 0) if len(cls_dims) == 1 else 0
        encoded = tokenizer(texts, truncation=True, max_length=max_text_len, add_special_tokens=True)["input_ids"]
        self.text_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded]
        self.example_image = np.asarray(example_image, dtype=np.int64)
        self.image_regions = np.asarray(image_regions, dtype=np.int64)
        self.text_lengths = np.asarray([len(ids) for ids in self.text_ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.text_ids)

    def lengths(self) -> np.ndarray:
        """``(N, 2)`` region count and text length of every example: the bucketing keys."""
        return np.stack([self.image_regions[self.example_image], self.text_lengths], axis=1)

    def set_epoch(self, epoch: int) -> None:
        """Items are masked with generators seeded by ``(seed, epoch, index)``."""
        self.epoch = int(epoch)

    def regions(self, image: int) -> Dict[str, np.ndarray]:
        """One image's region arrays: ``feats (r, D)``, ``pos (r, P)`` and ``cls_probs (r, C)`` if stored."""
        source, image_id = self.images[image]
        regions = self.stores[source][image_id][: self.max_regions]
        out = {"feats": regions.features.float().numpy(),
               "pos": (regions.normalized_positions(self.pos_dim).numpy() if self.pos_dim
                       else np.zeros((len(regions), 0), np.float32))}
        if self.num_region_classes and regions.cls_probs is not None:
            out["cls_probs"] = regions.cls_probs.float().numpy()
        return out

    def __getitem__(self, index: int) -> Dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        options = self.masking
        ids = self.text_ids[index]
        maskable = ~np.isin(ids, self._special)
        word_start = ~self._continuation[ids]
        mlm_ids, mlm_labels = mask_text(ids, maskable, word_start, rng, mask_id=self.mask_id,
                                        vocab_size=self.vocab_size, scheme=options.text_scheme,
                                        prob=options.text_prob, span_p=options.span_p, span_max=options.span_max)
        image = int(self.example_image[index])
        regions = self.regions(image)
        item = {
            "input_ids": ids, "mlm_input_ids": mlm_ids, "mlm_labels": mlm_labels,
            "region_feats": regions["feats"], "region_pos": regions["pos"],
            "region_masked": mask_regions(len(regions["feats"]), rng, options.region_prob),
            "masked_modality": int(rng.integers(2)), "image_index": image,
        }
        if "cls_probs" in regions:
            item["region_cls_probs"] = regions["cls_probs"]
        item.update(self._itm_pair(index, image, ids, regions, rng))
        return item

    def _itm_pair(self, index: int, image: int, ids: np.ndarray, regions: Dict[str, np.ndarray],
                  rng: np.random.Generator) -> Dict[str, Any]:
        """UNITER's random negatives: with probability ``itm_negative_prob`` swap the image or the text."""
        pair = {"itm_input_ids": ids, "itm_region_feats": regions["feats"], "itm_region_pos": regions["pos"],
                "itm_label": 1}
        if rng.random() >= self.masking.itm_negative_prob or len(self.images) < 2:
            return pair
        other = int(rng.integers(len(self)))
        for _ in range(16):
            if int(self.example_image[other]) != image:
                break
            other = int(rng.integers(len(self)))
        else:
            return pair
        if rng.random() < 0.5:
            swapped = self.regions(int(self.example_image[other]))
            pair.update(itm_region_feats=swapped["feats"], itm_region_pos=swapped["pos"])
        else:
            pair["itm_input_ids"] = self.text_ids[other]
        pair["itm_label"] = 0
        return pair


def pad_arrays(arrays: Sequence[np.ndarray], length: int, value: float, dtype: torch.dtype) -> Tensor:
    """Stack arrays of ``(n_i, ...)`` into a ``(B, length, ...)`` tensor of ``dtype``, filled with ``value``."""
    first = arrays[0]
    out = torch.full((len(arrays), length) + tuple(first.shape[1:]), value, dtype=dtype)
    for i, array in enumerate(arrays):
        out[i, : len(array)] = torch.from_numpy(np.asarray(array))
    return out


def pad_text(ids: Sequence[np.ndarray], pad_id: int = 0, prefix: str = "") -> Dict[str, Tensor]:
    """Token id arrays -> ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(B, T)`` (keys prefixed)."""
    length = max(len(a) for a in ids)
    input_ids = pad_arrays(ids, length, pad_id, torch.long)  # (B, T)
    mask = pad_arrays([np.ones(len(a), np.int64) for a in ids], length, 0, torch.long)  # (B, T)
    return {prefix + "input_ids": input_ids, prefix + "attention_mask": mask,
            prefix + "token_type_ids": torch.zeros_like(input_ids)}


def pad_regions(feats: Sequence[np.ndarray], pos: Sequence[np.ndarray], prefix: str = "") -> Dict[str, Tensor]:
    """Images' ``(r_i, D)`` features and ``(r_i, P)`` positions -> ``region_feats (B, R, D)``,
    ``region_pos (B, R, P)``, ``region_mask (B, R)`` (keys prefixed; R at least 1)."""
    length = max(1, max(len(f) for f in feats))
    return {
        prefix + "region_feats": pad_arrays(feats, length, 0.0, torch.float32),  # (B, R, D)
        prefix + "region_pos": pad_arrays(pos, length, 0.0, torch.float32),  # (B, R, P)
        prefix + "region_mask": pad_arrays([np.ones(len(f), np.int64) for f in feats], length, 0, torch.long),
    }


def collate_pretrain(items: Sequence[Dict[str, Any]], pad_id: int = 0) -> Dict[str, Tensor]:
    """Pad a list of :class:`PretrainDataset` items into a batch.

    Returns:
        ``input_ids, mlm_input_ids, mlm_labels, attention_mask, token_type_ids (B, T)``;
        ``region_feats (B, R, D)``, ``region_pos (B, R, P)``, ``region_mask (B, R)``, ``region_masked (B, R)``
        bool, ``region_cls_probs (B, R, C)`` when present; ``masked_modality``, ``image_index``,
        ``itm_labels (B,)``; and ``itm_input_ids, itm_attention_mask, itm_token_type_ids (B, T')``,
        ``itm_region_feats (B, R', D)``, ``itm_region_pos``, ``itm_region_mask``.
    """
    batch = pad_text([item["input_ids"] for item in items], pad_id)
    length = batch["input_ids"].shape[1]
    batch["mlm_input_ids"] = pad_arrays([item["mlm_input_ids"] for item in items], length, pad_id, torch.long)
    batch["mlm_labels"] = pad_arrays([item["mlm_labels"] for item in items], length, IGNORE_INDEX, torch.long)
    batch.update(pad_regions([item["region_feats"] for item in items], [item["region_pos"] for item in items]))
    num_regions = batch["region_feats"].shape[1]
    batch["region_masked"] = pad_arrays([item["region_masked"] for item in items], num_regions, False, torch.bool)
    if all("region_cls_probs" in item for item in items):
        batch["region_cls_probs"] = pad_arrays([item["region_cls_probs"] for item in items], num_regions, 0.0,
                                               torch.float32)  # (B, R, C)
    batch["masked_modality"] = torch.tensor([item["masked_modality"] for item in items], dtype=torch.long)
    batch["image_index"] = torch.tensor([item["image_index"] for item in items], dtype=torch.long)
    batch.update(pad_text([item["itm_input_ids"] for item in items], pad_id, "itm_"))
    batch.update(pad_regions([item["itm_region_feats"] for item in items], [item["itm_region_pos"] for item in items],
                             "itm_"))
    batch["itm_labels"] = torch.tensor([item["itm_label"] for item in items], dtype=torch.long)
    return batch


def padding_fraction(batches: Sequence[Sequence[int]], text_lengths: np.ndarray, region_counts: np.ndarray
                     ) -> float:
    """Share of padded slots (text tokens plus regions) over all slots of the padded batches."""
    padded = real = 0
    for batch in batches:
        index = np.asarray(batch, dtype=np.int64)
        t, r = text_lengths[index], region_counts[index]
        padded += len(index) * (int(t.max()) + int(r.max()))
        real += int(t.sum() + r.sum())
    return 1.0 - real / padded if padded else 0.0


class BucketBatchSampler(Sampler[List[int]]):
    """Batches of examples of similar length, sharded over ranks, resumable part-way through an epoch.

    Each epoch shuffles the examples (seeded by ``(seed, epoch)``), cuts the order into chunks of
    ``bucket_batches`` global batches, sorts each chunk by length (lexicographically by the columns of a
    2-d ``lengths``: region count, then text length, so both paddings shrink), splits it into global batches of
    ``batch_size * num_replicas`` examples and shuffles the batch order. Rank ``r`` takes the ``r``-th slice
    of each global batch, so a run on N ranks sees exactly the global batches of a single-process run with
    ``batch_size * N``. ``bucket_batches=1`` is plain random batching.

    Args:
        lengths: ``(N,)`` per-example length, or ``(N, K)`` keys sorted lexicographically (first column first),
            e.g. :meth:`PretrainDataset.lengths`.
        batch_size: examples per batch on each rank.
        num_replicas: number of ranks.
        rank: this rank.
        bucket_batches: global batches per sorted chunk (larger: less padding, less randomness).
        shuffle: shuffle examples and batches (else keep the data order).
        seed: base seed.
        drop_last: drop the last, incomplete global batch (always true when ``num_replicas > 1``).

    Example:
        >>> sampler = BucketBatchSampler([5, 9, 3, 7, 8, 2], batch_size=2, seed=0)
        >>> sampler.set_epoch(0, skip_batches=1)
        >>> len(sampler), sum(len(b) for b in sampler)
        (2, 4)
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 bucket_batches: int = 50, shuffle: bool = True, seed: int = 0, drop_last: bool = True) -> None:
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas or bucket_batches < 1:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, num_replicas={num_replicas}, "
                             f"rank={rank}, bucket_batches={bucket_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim == 1:
            self.lengths = self.lengths[:, None]
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.bucket_batches, self.shuffle, self.seed = bucket_batches, shuffle, seed
        self.drop_last = drop_last or num_replicas > 1
        self.epoch = 0
        self.skip_batches = 0
        if len(self.global_batches(0)) == 0:
            raise ValueError(f"{len(self.lengths)} examples make no global batch of "
                             f"{batch_size * num_replicas}")

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch and how many of its batches were already consumed (resume)."""
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def global_batches(self, epoch: int) -> List[np.ndarray]:
        """The epoch's global batches (indices into the data set), in iteration order."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        size = self.batch_size * self.num_replicas
        batches: List[np.ndarray] = []
        chunk = size * self.bucket_batches
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            if self.bucket_batches > 1:
                keys = self.lengths[part]  # (n, K)
                part = part[np.lexsort(keys.T[::-1])]
            batches.extend(part[i:i + size] for i in range(0, len(part), size))
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.global_batches(self.epoch)[self.skip_batches:]:
            if self.num_replicas == 1:
                yield batch.tolist()
            else:
                yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist()

    def batches_per_epoch(self) -> int:
        return len(self.global_batches(self.epoch))

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip_batches)


def split_lengths(dataset: PretrainDataset) -> tuple:
    """``(text lengths (N,), region counts (N,))`` of every example (for :func:`padding_fraction`)."""
    return dataset.text_lengths, dataset.image_regions[dataset.example_image]


__all__ = ["PretrainSource", "MaskingOptions", "PretrainDataset", "collate_pretrain", "pad_arrays", "pad_text",
           "pad_regions", "BucketBatchSampler", "padding_fraction", "split_lengths"]
