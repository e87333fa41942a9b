"""fibervl.data: files on disk -> readers -> Samples -> Processor -> Collator -> Batch.

Never imports the model. Main entry points:

- :class:`Tokenizer` (RoBERTa byte-level BPE, local files only), :func:`train_bytelevel_bpe`
- readers: :class:`KarpathyCaptions`, :class:`CocoCaptionsReader`, :class:`VqaReader`, :class:`Nlvr2Reader`,
  :class:`MdetrReader`, :class:`CocoDetectionReader`, :class:`WebDatasetReader`
- :class:`Sample`, :class:`Processor`, :class:`Collator`, :class:`Batch`, transforms; the task collators
  (:class:`PairCollator`, :class:`VqaCollator`, :class:`Nlvr2Collator`, :class:`FineCollator`)
- the embedded data set: :mod:`fibervl.data.shapes` (``ShapesDataset``, ``generate``)
"""

from .answers import AnswerVocabulary, answer_score, normalize_answer
from .collate import (
    Batch, Collator, FineCollator, Nlvr2Collator, PairCollator, VqaCollator, build_positive_map, normalize_positive_map,
    pad_images, stable_id,
)
from .dataset import ProcessedDataset, ProcessedIterableDataset
from .errors import DataError, SkipLog, skip_report
from .image_io import decode_image, load_image
from .processor import ProcessedSample, Processor, sync_image_size
from .prompts import clean_name, detection_prompt, detection_to_grounding
from .readers import (
    CocoCaptionsReader, CocoDetectionReader, KarpathyCaptions, MdetrReader, Nlvr2Reader, VqaReader, WebDatasetReader,
)
from .samples import Sample, most_common_answer
from .tokenizer import TokenBatch, Tokenizer, train_bytelevel_bpe, train_shapes_tokenizer

__all__ = [
    "AnswerVocabulary", "answer_score", "normalize_answer",
    "Batch", "CocoCaptionsReader", "CocoDetectionReader", "Collator", "DataError", "FineCollator", "Nlvr2Collator",
    "PairCollator", "VqaCollator", "stable_id", "KarpathyCaptions", "MdetrReader", "Nlvr2Reader",
    "ProcessedDataset", "ProcessedIterableDataset", "ProcessedSample", "Processor", "Sample", "SkipLog", "TokenBatch",
    "Tokenizer", "VqaReader",
    "WebDatasetReader", "build_positive_map", "clean_name", "decode_image", "detection_prompt",
    "detection_to_grounding", "load_image", "most_common_answer", "normalize_positive_map", "pad_images", "skip_report",
    "sync_image_size", "train_bytelevel_bpe", "train_shapes_tokenizer",
]
