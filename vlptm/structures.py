"""Typed containers that travel between the region extractor, the feature store and the batches.

Letters used in shape comments: N regions, D feature size, C detector classes (background included),
A attributes, P position size.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["RegionFeatures", "POSITION_DIMS"]

# Box-position conventions of the peers, by their width: see ``RegionFeatures.normalized_positions``.
POSITION_DIMS = (4, 5, 7)

_TENSOR_FIELDS = ("boxes", "features", "scores", "cls_probs", "attr_probs")


@dataclass
class RegionFeatures:
    """The regions of one image: boxes, RoI features and the detector's soft labels.

    Args:
        boxes: ``(N, 4)`` float boxes, ``[x1, y1, x2, y2]`` in pixels of the original image.
        features: ``(N, D)`` RoI features (pooled backbone features of each box).
        scores: ``(N,)`` detection confidence: the best non-background class probability.
        image_size: ``(h, w)`` of the original image in pixels.
        cls_probs: optional ``(N, C)`` class probabilities; index 0 is the background class and
            index ``c >= 1`` is the detector's ``c``-th object class (the label space the detector was
            trained on). Rows sum to 1. Masked-region classification uses these as soft labels.
        attr_probs: optional ``(N, A)`` attribute probabilities, as the detector's attribute head gives
            them (see :class:`vlptm.detection.AttributeHead` for their meaning).

    Raises:
        ValueError: when shapes disagree (wrong rank, a different N, a box row that is not 4 wide, an
            image size that is not two positive integers).

    Example:
        >>> import torch
        >>> r = RegionFeatures(boxes=torch.tensor([[0., 0., 50., 20.], [10., 10., 20., 40.]]),
        ...                    features=torch.randn(2, 8), scores=torch.tensor([0.9, 0.3]),
        ...                    image_size=(40, 100))
        >>> len(r), r[r.scores > 0.5].boxes.tolist()
        (2, [[0.0, 0.0, 50.0, 20.0]])
        >>> r.normalized_positions(5)[0].tolist()
        [0.0, 0.0, 0.5, 0.5, 0.25]
    """

    boxes: Tensor
    features: Tensor
    scores: Tensor
    image_size: Tuple[int, int]
    cls_probs: Optional[Tensor] = None
    attr_probs: Optional[Tensor] = None

    def __post_init__(self) -> None:
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"RegionFeatures.{name} must be a torch.Tensor, got {type(value).__name__}")
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"RegionFeatures.boxes must have shape (N, 4), got {tuple(self.boxes.shape)}")
        n = self.boxes.shape[0]
        if self.features.dim() != 2 or self.features.shape[0] != n:
            raise ValueError(
                f"RegionFeatures.features must have shape (N={n}, D), got {tuple(self.features.shape)}"
            )
        if self.scores.dim() != 1 or self.scores.shape[0] != n:
            raise ValueError(f"RegionFeatures.scores must have shape (N={n},), got {tuple(self.scores.shape)}")
        for name in ("cls_probs", "attr_probs"):
            value = getattr(self, name)
            if value is not None and (value.dim() != 2 or value.shape[0] != n):
                raise ValueError(f"RegionFeatures.{name} must have shape (N={n}, K), got {tuple(value.shape)}")
        size = tuple(int(s) for s in self.image_size) if _is_pair(self.image_size) else None
        if size is None or size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"RegionFeatures.image_size must be (h, w) positive integers, got {self.image_size!r}")
        self.image_size = size

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def feature_dim(self) -> int:
        """D, the width of ``features``."""
        return int(self.features.shape[1])

    def to(self, *args: Any, **kwargs: Any) -> "RegionFeatures":
        """Moves every tensor like ``Tensor.to``; a dtype applies to the floating-point tensors only.

        Example: ``regions.to("cuda")``, ``regions.to(torch.float16)``, ``regions.to("cpu", torch.float32)``.
        """
        return self._map(lambda t: t.to(*args, **kwargs) if t.is_floating_point() else _device_only(t, args, kwargs))

    def __getitem__(self, item: Union[Tensor, slice, int, Sequence[int]]) -> "RegionFeatures":
        """Selects regions by a boolean mask ``(N,)``, an index tensor/list, a slice or an int (kept 2-d)."""
        if isinstance(item, int):
            item = slice(item, item + 1) if item != -1 else slice(-1, None)
        elif isinstance(item, Tensor) and item.dtype == torch.bool:
            if item.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape ({len(self)},), got {tuple(item.shape)}")
        elif not isinstance(item, (slice, Tensor)):
            item = torch.as_tensor(item, dtype=torch.long)
        return self._map(lambda t: t[item.to(t.device) if isinstance(item, Tensor) else item])

    def normalized_positions(self, dim: int = 7) -> Tensor:
        """Box positions normalised by the image size, in one of the peers' conventions.

        Args:
            dim: 4 gives ``[x1/W, y1/H, x2/W, y2/H]`` (LXMERT); 5 adds the area fraction ``w*h/(W*H)``
                (ViLBERT); 7 gives ``[x1, y1, x2, y2, w, h, w*h]`` all normalised (UNITER).

        Returns:
            ``(N, dim)`` float32 tensor (values in ``[0, 1]`` for boxes inside the image).
        """
        if dim not in POSITION_DIMS:
            raise ValueError(f"dim must be one of {POSITION_DIMS}, got {dim}")
        h, w = self.image_size
        scale = self.boxes.new_tensor([w, h, w, h], dtype=torch.float32)  # (4,)
        xyxy = self.boxes.float() / scale  # (N, 4)
        if dim == 4:
            return xyxy
        bw = xyxy[:, 2] - xyxy[:, 0]  # (N,)
        bh = xyxy[:, 3] - xyxy[:, 1]  # (N,)
        area = (bw * bh).unsqueeze(1)  # (N, 1)
        if dim == 5:
            return torch.cat([xyxy, area], dim=1)  # (N, 5)
        return torch.cat([xyxy, bw.unsqueeze(1), bh.unsqueeze(1), area], dim=1)  # (N, 7)

    @staticmethod
    def cat(items: Iterable["RegionFeatures"]) -> "RegionFeatures":
        """Concatenates the regions of several ``RegionFeatures`` of the same image (same ``image_size``)."""
        items = list(items)
        if not items:
            raise ValueError("RegionFeatures.cat needs at least one item")
        sizes = {it.image_size for it in items}
        if len(sizes) != 1:
            raise ValueError(f"RegionFeatures.cat needs one image size, got {sorted(sizes)}")
        kwargs: Dict[str, Any] = {"image_size": items[0].image_size}
        for name in _TENSOR_FIELDS:
            values = [getattr(it, name) for it in items]
            if all(v is None for v in values):
                kwargs[name] = None
            elif any(v is None for v in values):
                raise ValueError(f"RegionFeatures.cat: {name} is present on some items but not all")
            else:
                kwargs[name] = torch.cat(values, dim=0)
        return RegionFeatures(**kwargs)

    def to_numpy_dict(self, feature_dtype: Optional[np.dtype] = None) -> Dict[str, np.ndarray]:
        """Numpy arrays for storage: ``boxes``, ``features``, ``scores``, ``image_size`` (int64 ``(2,)``),
        and ``cls_probs``/``attr_probs`` when present. ``feature_dtype`` (e.g. ``np.float16``) casts the
        features and soft labels; boxes and scores stay float32."""
        out: Dict[str, np.ndarray] = {"image_size": np.asarray(self.image_size, dtype=np.int64)}
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            array = value.detach().cpu().float().numpy()
            if feature_dtype is not None and name in ("features", "cls_probs", "attr_probs"):
                array = array.astype(feature_dtype)
            out[name] = array
        return out

    @classmethod
    def from_numpy_dict(cls, arrays: Dict[str, Any], dtype: Optional[torch.dtype] = None) -> "RegionFeatures":
        """Inverse of :meth:`to_numpy_dict`; ``dtype`` (default: keep) casts the float tensors."""
        missing = [k for k in ("boxes", "features", "scores", "image_size") if k not in arrays]
        if missing:
            raise KeyError(f"RegionFeatures.from_numpy_dict: missing arrays {missing}")
        kwargs: Dict[str, Any] = {"image_size": tuple(int(v) for v in np.asarray(arrays["image_size"]).tolist())}
        for name in _TENSOR_FIELDS:
            value = arrays.get(name)
            if value is None:
                kwargs[name] = None
                continue
            tensor = torch.from_numpy(np.array(value, copy=True))
            if name in ("boxes", "scores"):
                tensor = tensor.float()
            elif dtype is not None:
                tensor = tensor.to(dtype)
            kwargs[name] = tensor
        return cls(**kwargs)

    def _map(self, fn) -> "RegionFeatures":
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _TENSOR_FIELDS:
            if kwargs[name] is not None:
                kwargs[name] = fn(kwargs[name])
        return RegionFeatures(**kwargs)


def _is_pair(value: Any) -> bool:
    try:
        return len(value) == 2 and all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        return False


def _device_only(tensor: Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tensor:
    """Applies only the device part of ``Tensor.to`` arguments (non-float tensors keep their dtype)."""
    device = kwargs.get("device")
    for arg in args:
        if isinstance(arg, (str, torch.device)):
            device = arg
        elif isinstance(arg, Tensor):
            device = arg.device
    return tensor if device is None else tensor.to(device)
