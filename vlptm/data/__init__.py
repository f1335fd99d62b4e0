"""Data layer: the robust image loader and readers for caption, VQA and detection annotation formats."""
from vlptm.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, load_image_tensor
from vlptm.data.readers import (
    FORMATS,
    CaptionRecord,
    Category,
    DatasetFormatError,
    DetectionRecord,
    QuestionRecord,
    RecordSet,
    detect_format,
    read_coco_captions,
    read_coco_instances,
    read_daquar,
    read_flickr_captions,
    read_karpathy,
    read_records,
    read_simple_captions,
    read_simple_vqa,
    read_vqa2,
)
