"""The pretraining model: an encoder of either stream type plus the objectives' heads.

:class:`PretrainingModel` is what the training loop (and DistributedDataParallel) wraps. One call runs the
encoder passes the requested tasks need and returns every objective's named losses and metrics:

- masked modelling (``mlm``, ``mrfr``, ``mrc``, ``mrc_kl``): one joint pass over masked inputs. With
  ``masking="conditional"`` (UNITER) each example hides one modality only: text when only MLM runs,
  regions when only MRM runs, and the batch's per-example choice (``masked_modality``) when both run in
  the same step. With ``masking="joint"`` (LXMERT) text and regions are masked together.
- ``itc``: a text-only and a regions-only pass; their projected, normalised pooled states are the
  retrieval embeddings.
- ``itm``: a joint pass over the dataset's pairs with random negatives (``itm_*`` batch keys), or, with
  ``itm_negatives="hard"``, over the positives plus one hard negative image per text and one hard
  negative text per image sampled from the in-batch ITC similarity.

Shape legend: B batch, T text tokens, R regions, D region feature dim, P position dim, H hidden size,
E embedding size, C detector classes.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from vlptm.models.base import SUMMARY_POOLINGS, VisionLanguageEncoder
from vlptm.models.layers import masked_mean
from vlptm.objectives.itc import ImageTextContrastive
from vlptm.objectives.itm import ImageTextMatching, NoNegativeCandidates, sample_hard_negatives
from vlptm.objectives.masking import IGNORE_INDEX
from vlptm.objectives.mlm import MaskedLanguageModeling
from vlptm.objectives.mrm import MRM_TASKS, MaskedRegionModeling

TASKS = ("mlm",) + MRM_TASKS + ("itm", "itc")
MASKING_MODES = ("conditional", "joint")
ITM_NEGATIVES = ("random", "hard")

_TEXT = ("input_ids", "attention_mask", "token_type_ids")
_REGIONS = ("region_feats", "region_pos", "region_mask")


def _pick(batch: Mapping[str, Tensor], keys: Sequence[str], prefix: str = "") -> Dict[str, Tensor]:
    return {key: batch[prefix + key] for key in keys if batch.get(prefix + key) is not None}


class PretrainingModel(nn.Module):
    """An encoder and the heads of the chosen pretraining tasks.

    Args:
        encoder: a :class:`~vlptm.models.SingleStreamEncoder` or :class:`~vlptm.models.DualStreamEncoder`.
        tasks: the tasks this model is trained on, a subset of ``TASKS``.
        num_region_classes: C of the features' class probabilities (needed by ``mrc`` / ``mrc_kl``).
        masking: ``"conditional"`` or ``"joint"``.
        itm_negatives: ``"random"`` or ``"hard"``.
        itc_embed_dim: E.
        itc_temperature: initial ITC temperature.
        itc_pooling: ``"mean"`` (one vector per image) or ``"regions"`` (one per region, scored by the
            maximum; see :mod:`vlptm.objectives.itc`).
        itm_pooling: what the ITM head reads from the joint pass: ``"cls"`` (the encoder's pooled [CLS], as
            BERT, UNITER and LXMERT) or ``"mean"`` (the mean of every real token and region state).

    Example:
        >>> import torch
        >>> from vlptm.models import create_model
        >>> model = PretrainingModel(create_model("single-tiny", region_feat_dim=8), tasks=["itc"])
        >>> batch = {"input_ids": torch.randint(1000, 2000, (3, 6)), "region_feats": torch.randn(3, 4, 8),
        ...          "region_pos": torch.rand(3, 4, 7)}
        >>> sorted(model(batch, ["itc"]))
        ['itc', 'itc_acc', 'itc_temperature']
    """

    def __init__(self, encoder: VisionLanguageEncoder, tasks: Sequence[str], *, num_region_classes: int = 0,
                 masking: str = "conditional", itm_negatives: str = "random", itc_embed_dim: int = 256,
                 itc_temperature: float = 0.07, itc_pooling: str = "mean", itm_pooling: str = "cls") -> None:
        super().__init__()
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}; unknown: {unknown}")
        if masking not in MASKING_MODES:
            raise ValueError(f"masking must be one of {MASKING_MODES}, got {masking!r}")
        if itm_pooling not in SUMMARY_POOLINGS:
            raise ValueError(f"itm_pooling must be one of {SUMMARY_POOLINGS}, got {itm_pooling!r}")
        if itm_negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {itm_negatives!r}")
        if {"mrc", "mrc_kl"} & set(tasks) and num_region_classes <= 0:
            raise ValueError("mrc/mrc_kl need region class probabilities (num_region_classes > 0); features "
                             "without them (grid features) support mrfr only")
        config = encoder.config
        hidden = config.hidden_size
        self.encoder = encoder
        self.tasks = tuple(tasks)
        self.masking = masking
        self.itm_negatives = itm_negatives
        self.itm_pooling = itm_pooling
        self.mlm = (MaskedLanguageModeling(hidden, config.vocab_size, encoder.get_input_embeddings())
                    if "mlm" in tasks else None)
        self.mrm = (MaskedRegionModeling(hidden, config.region_feat_dim, num_region_classes)
                    if set(MRM_TASKS) & set(tasks) else None)
        self.itm = ImageTextMatching(hidden) if "itm" in tasks else None
        needs_itc = "itc" in tasks or ("itm" in tasks and itm_negatives == "hard")
        self.itc = (ImageTextContrastive(hidden, itc_embed_dim, itc_temperature, pooling=itc_pooling)
                    if needs_itc else None)

    # -- retrieval embeddings -----------------------------------------------------------------------------
    # The unimodal passes are summarised by the mean of their real token / region states, not by the
    # [CLS] pooler: at initialisation every text's [CLS] state is nearly the same vector (the residual
    # stream carries the identical [CLS] embedding), which stalls contrastive learning, while the mean of
    # the states differs from the first step on.
    def embed_text(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Text-only pass -> ``(B, F)`` unit-norm text embeddings (keys ``input_ids``, ``attention_mask``)."""
        inputs = _pick(batch, _TEXT)
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))  # (B, T)
        return self.itc.embed_text(masked_mean(self.encoder(inputs).text_hidden, mask))

    def embed_images(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Regions-only pass -> ``(B, F)`` unit-norm image embeddings, or ``(B, R, F)`` region sets with
        region pooling (keys ``region_feats``, ``region_pos``, ``region_mask``)."""
        inputs = _pick(batch, _REGIONS)
        mask = inputs.get("region_mask", torch.ones(inputs["region_feats"].shape[:2], dtype=torch.long,
                                                    device=inputs["region_feats"].device))  # (B, R)
        states = self.encoder(inputs).region_hidden  # (B, R, H)
        return self.itc.embed_image(masked_mean(states, mask), states, mask)

    # -- matching ---------------------------------------------------------------------------------------
    def itm_summary(self, output: Any, inputs: Mapping[str, Tensor]) -> Tensor:
        """``(B, H)``: what the ITM head reads from a joint pass's output (see ``itm_pooling``)."""
        return output.summary(self.itm_pooling, inputs.get("attention_mask"), inputs.get("region_mask"))

    def match_probability(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Joint pass over text-image pairs -> ``(B,)`` ITM probabilities that each text describes its image."""
        return self.itm.score(self.itm_summary(self.encoder(inputs), inputs))

    # -- training -----------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Tensor], tasks: Optional[Sequence[str]] = None,
                itm_negatives: Optional[str] = None) -> Dict[str, Tensor]:
        """Run the passes ``tasks`` need (default: all of this model's tasks) on a collated batch.

        Args:
            batch: a batch from :func:`vlptm.data.pretrain.collate_pretrain`: the text and region keys of
                the encoder plus ``mlm_input_ids``, ``mlm_labels (B, T)``, ``region_masked (B, R)``,
                ``masked_modality (B,)``, ``region_cls_probs (B, R, C)``, ``image_index (B,)`` and the
                ``itm_*`` pair keys with ``itm_labels (B,)``.
            tasks: which tasks to run this step.
            itm_negatives: this call's ITM negatives instead of the model's (held-out evaluation scores the
                data's ``"random"`` pairs, however the model trains).

        Returns:
            Named losses (keys in ``TASKS``) and detached metrics (``*_acc``, ``itc_temperature``).
        """
        tasks = self.tasks if tasks is None else tuple(tasks)
        missing = sorted(set(tasks) - set(self.tasks))
        if missing:
            raise ValueError(f"tasks {missing} were not configured for this model (it has {self.tasks})")
        out: Dict[str, Tensor] = {}
        masked_tasks = [t for t in tasks if t == "mlm" or t in MRM_TASKS]
        if masked_tasks:
            out.update(self._masked_modeling(batch, masked_tasks))
        negatives = self.itm_negatives if itm_negatives is None else itm_negatives
        if negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {negatives!r}")
        similarity = None
        if "itc" in tasks or ("itm" in tasks and negatives == "hard"):
            with torch.set_grad_enabled(torch.is_grad_enabled() and "itc" in tasks):
                text_emb = self.embed_text(batch)  # (B, E)
                image_emb = self.embed_images(batch)  # (B, E)
            if "itc" in tasks:
                out.update(self.itc(text_emb, image_emb, batch.get("image_index")))
            similarity = self.itc.similarity(text_emb.detach(), image_emb.detach())  # (B, B)
        if "itm" in tasks:
            out.update(self._matching(batch, similarity, negatives))
        return out

    def _masked_modeling(self, batch: Mapping[str, Tensor], tasks: Sequence[str]) -> Dict[str, Tensor]:
        input_ids = batch["input_ids"]
        size = input_ids.shape[0]
        has_mlm = "mlm" in tasks
        mrm_tasks = [t for t in tasks if t in MRM_TASKS]
        ones = torch.ones(size, dtype=torch.bool, device=input_ids.device)
        if self.masking == "joint":
            text_rows, region_rows = ones if has_mlm else ~ones, ones if mrm_tasks else ~ones
        elif has_mlm and mrm_tasks:
            text_rows = batch["masked_modality"] == 0  # (B,)
            region_rows = ~text_rows
        else:
            text_rows, region_rows = (ones, ~ones) if has_mlm else (~ones, ones)
        inputs = _pick(batch, _TEXT + _REGIONS)
        inputs["input_ids"] = torch.where(text_rows[:, None], batch["mlm_input_ids"], input_ids)  # (B, T)
        region_masked = batch["region_masked"] & region_rows[:, None]  # (B, R)
        inputs["region_masked"] = region_masked
        output = self.encoder(inputs)
        out: Dict[str, Tensor] = {}
        if has_mlm:
            labels = batch["mlm_labels"].masked_fill(~text_rows[:, None], IGNORE_INDEX)  # (B, T)
            out.update(self.mlm(output.text_hidden, labels))
        if mrm_tasks:
            out.update(self.mrm(output.region_hidden, region_masked, batch["region_feats"],
                                batch.get("region_cls_probs"), mrm_tasks))
        return out

    def _matching(self, batch: Mapping[str, Tensor], similarity: Optional[Tensor],
                  negatives: str) -> Dict[str, Tensor]:
        if negatives == "hard":
            try:
                return self._hard_matching(batch, similarity)
            except NoNegativeCandidates:  # e.g. a batch of one image's captions: the data's random pairs
                pass
        inputs = {key: batch["itm_" + key] for key in _TEXT + _REGIONS}
        return self.itm(self.itm_summary(self.encoder(inputs), inputs), batch["itm_labels"])

    def _hard_matching(self, batch: Mapping[str, Tensor], similarity: Tensor) -> Dict[str, Tensor]:
        input_ids = batch["input_ids"]
        size = input_ids.shape[0]
        # the same caption given to two images (generic ones such as "one red shape." often are) makes each
        # image a positive for the other's text: such pairs are never sampled as negatives
        same_text = (input_ids[:, None, :] == input_ids[None, :, :]).all(dim=-1)  # (B, B)
        image_for_text, text_for_image = sample_hard_negatives(similarity, batch.get("image_index"),
                                                               exclude=same_text)  # (B,), (B,)
        own = torch.arange(size, device=similarity.device)  # (B,)
        text_rows = torch.cat([own, own, text_for_image])  # (3B,) positives, hard images, hard texts
        image_rows = torch.cat([own, image_for_text, own])  # (3B,)
        inputs = {key: batch[key][text_rows] for key in _TEXT if batch.get(key) is not None}
        inputs.update({key: batch[key][image_rows] for key in _REGIONS if batch.get(key) is not None})
        labels = torch.zeros(3 * size, dtype=torch.long, device=similarity.device)  # (3B,)
        labels[:size] = 1
        return self.itm(self.itm_summary(self.encoder(inputs), inputs), labels)
