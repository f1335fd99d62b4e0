"""Pretraining objectives: MLM, MRM (MRFR, MRC, MRC-kl), ITM and ITC, each a module returning named losses.

Example:
    >>> import torch
    >>> from vlptm.models import create_model
    >>> from vlptm.objectives import PretrainingModel
    >>> model = PretrainingModel(create_model("dual-tiny", region_feat_dim=8), tasks=["itc", "itm"],
    ...                          itm_negatives="hard")
    >>> batch = {"input_ids": torch.randint(1000, 2000, (4, 6)), "region_feats": torch.randn(4, 3, 8),
    ...          "region_pos": torch.rand(4, 3, 4), "image_index": torch.arange(4)}
    >>> sorted(k for k in model(batch) if not k.endswith(("acc", "temperature")))
    ['itc', 'itm']
"""
from vlptm.objectives.itc import ImageTextContrastive
from vlptm.objectives.itm import ImageTextMatching, ItmHead, sample_hard_negatives
from vlptm.objectives.masking import IGNORE_INDEX, TEXT_MASKING_SCHEMES, mask_regions, mask_text, sample_span_lengths
from vlptm.objectives.mlm import MaskedLanguageModeling, MlmHead
from vlptm.objectives.model import ITM_NEGATIVES, MASKING_MODES, TASKS, PretrainingModel
from vlptm.objectives.mrm import MRM_TASKS, MaskedRegionModeling, RegionPredictionHead

__all__ = [
    "ImageTextContrastive", "ImageTextMatching", "ItmHead", "sample_hard_negatives", "IGNORE_INDEX",
    "TEXT_MASKING_SCHEMES", "mask_regions", "mask_text", "sample_span_lengths", "MaskedLanguageModeling",
    "MlmHead", "ITM_NEGATIVES", "MASKING_MODES", "TASKS", "PretrainingModel", "MRM_TASKS",
    "MaskedRegionModeling", "RegionPredictionHead",
]
