"""One reader per real data format; each takes paths (a root or files) and yields Samples."""

from .coco_captions import CocoCaptionsReader
from .coco_detection import CocoDetectionReader
from .common import CaptionReader, Reader, load_json
from .karpathy import KarpathyCaptions
from .mdetr import MdetrReader
from .nlvr2 import Nlvr2Reader
from .vqa import VQAV2_IMAGE_TEMPLATE, VqaReader
from .webdataset import WebDatasetReader, expand_shards

__all__ = [
    "CaptionReader", "CocoCaptionsReader", "CocoDetectionReader", "KarpathyCaptions", "MdetrReader", "Nlvr2Reader", "Reader",
    "VQAV2_IMAGE_TEMPLATE", "VqaReader", "WebDatasetReader", "expand_shards", "load_json",
]
