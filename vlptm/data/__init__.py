"""Data layer: the robust image loader and readers for caption, VQA and detection annotation formats."""
from vlptm.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, load_image_tensor
