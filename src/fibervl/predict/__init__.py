"""Using a trained model: :func:`load` (the model and the processor of its inputs), and one
batched predictor per task, the same objects ``fibervl predict TASK`` runs.

    import fibervl
    from fibervl.predict import DetectionPredictor

    model, processor = fibervl.load("runs/default/stages/detection", task="detect")
    detect = DetectionPredictor(model, processor, classes=["star", "heart", "circle"])
    for result in detect(["a.jpg", "b.png"]):
        print(result["detections"])          # boxes in each image's own pixels

The model never sees files or task names: the processor (:mod:`.processor`) turns those into
tensors, the predictors (:mod:`.grounding`, :mod:`.vqa`, :mod:`.caption`, :mod:`.nlvr2`,
:mod:`.retrieval`) call the task functions of :mod:`fibervl.tasks` and turn the outputs back
into JSON-ready dicts and pictures (:mod:`.draw`).
"""

from .base import Predictor
from .caption import CaptionPredictor
from .card import TASKS, ModelCard, card_of, make_card, supported_tasks
from .grounding import DetectionPredictor, GroundingPredictor, RefexpPredictor
from .loading import load, save
from .nlvr2 import Nlvr2Predictor
from .processor import ImageBatch, InputProcessor, LoadedImage
from .retrieval import Embedder, Gallery, RetrievalPredictor
from .vqa import VqaPredictor

PREDICTORS = {
    "retrieval": RetrievalPredictor, "vqa": VqaPredictor, "nlvr2": Nlvr2Predictor, "caption": CaptionPredictor,
    "ground": GroundingPredictor, "refexp": RefexpPredictor, "detect": DetectionPredictor,
}

__all__ = [
    "PREDICTORS", "TASKS", "CaptionPredictor", "DetectionPredictor", "Embedder", "Gallery", "GroundingPredictor",
    "ImageBatch", "InputProcessor", "LoadedImage", "ModelCard", "Nlvr2Predictor", "Predictor", "RefexpPredictor",
    "RetrievalPredictor", "VqaPredictor", "card_of", "load", "make_card", "save", "supported_tasks",
]
