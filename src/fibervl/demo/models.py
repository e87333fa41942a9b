"""Which model answers each task of the demo, and the answers themselves, without the web page.

``--model`` names model directories or ``fibervl run`` output directories, any number of them.
A model directory offers the demo tasks its card lists; a run directory offers each task the
model of that task's own stage (``stages/detection`` for detection, ``stages/vqa`` for VQA, ...),
the model fine-tuned for it. When several ``--model`` offer a task, the first one given wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# What the page offers: the tasks answered from one image and a text (NLVR2 takes two images,
# retrieval a gallery; ``fibervl predict`` has them).
DEMO_TASKS = ("detect", "ground", "refexp", "vqa", "caption")
# The ``fibervl run`` stage that fine-tunes each task (the keys of fibervl.mainjob.job.TASK_STAGES).
RUN_STAGES = {"detect": "detection", "ground": "grounding", "refexp": "refexp", "vqa": "vqa", "caption": "caption"}


def find_models(paths: Sequence[str | Path]) -> dict[str, Path]:
    """task -> the model directory that answers it, for the ``--model`` ``paths`` in turn (the
    first path offering a task wins). A path that offers none of :data:`DEMO_TASKS` is an error
    naming what it holds, so that a wrong directory is not silently ignored."""
    table: dict[str, Path] = {}
    for path in paths:
        offered = _offers(Path(path))
        if not offered:
            raise ValueError(f"{path} offers none of the demo's tasks ({', '.join(DEMO_TASKS)}): "
                             f"{_what_it_holds(Path(path))}")
        for task, directory in offered.items():
            table.setdefault(task, directory)
    return {task: table[task] for task in DEMO_TASKS if task in table}


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "model" / "config.json").is_file()


def _card_tasks(directory: Path) -> list[str]:
    from ..predict.card import card_of

    return card_of(directory).tasks


def _offers(path: Path) -> dict[str, Path]:
    from ..modeling.factory import resolve_model_dir

    if _is_model_dir(path):
        directory = resolve_model_dir(path)
        return {task: directory for task in _card_tasks(directory) if task in DEMO_TASKS}
    if (path / "stages").is_dir():
        offered = {}
        for task, stage in RUN_STAGES.items():
            stage_dir = path / "stages" / stage
            if _is_model_dir(stage_dir) and task in _card_tasks(resolve_model_dir(stage_dir)):
                offered[task] = resolve_model_dir(stage_dir)
        return offered
    raise FileNotFoundError(f"{path} is neither a model directory (config.json, or model/config.json) nor a "
                            "`fibervl run` output directory (stages/)")


def _what_it_holds(path: Path) -> str:
    from ..modeling.factory import resolve_model_dir

    if _is_model_dir(path):
        return f"its model can do {_card_tasks(resolve_model_dir(path)) or 'no task'}"
    stages = sorted(p.name for p in (path / "stages").iterdir() if _is_model_dir(p))
    return (f"its stages with a model are {stages}, none of them a task stage of the demo "
            f"({', '.join(RUN_STAGES.values())})")


@dataclass
class Answer:
    """One prediction as the page shows it: ``picture`` (the predictor's drawing), ``summary``
    (a few lines for a person) and ``result`` (the predictor's JSON-ready dict)."""

    picture: Image.Image
    summary: str
    result: dict


class DemoModels:
    """The models of a :func:`find_models` table, each directory loaded once on ``device`` when
    this is made (a broken directory is reported before the page is served), and one method per
    task that takes a PIL image and the text typed on the page."""

    def __init__(self, table: dict[str, Path], device="cpu") -> None:
        from ..predict.loading import load

        self.table = dict(table)
        loaded: dict[Path, tuple] = {}
        self._models = {}
        for task, directory in self.table.items():
            if directory not in loaded:
                loaded[directory] = load(directory, task=task, device=device)
            self._models[task] = loaded[directory]

    @property
    def tasks(self) -> list[str]:
        return list(self.table)

    def _predictor(self, task: str, cls, *args, **kwargs):
        if task not in self._models:
            raise ValueError(f"no model given for {task!r}; this demo has {', '.join(self.tasks)}")
        model, processor = self._models[task]
        return cls(model, processor, *args, batch_size=1, **kwargs)

    def detect(self, image: Image.Image, classes: str, threshold: float = 0.3, top: int = 0) -> Answer:
        """``classes``: comma-separated names; boxes scoring at least ``threshold``, of those
        the ``top`` best when ``top`` > 0."""
        from ..predict import DetectionPredictor

        names = [c.strip() for c in classes.split(",") if c.strip()]
        if not names:
            raise ValueError("type the class names to detect, separated by commas (e.g. star, heart, circle)")
        predictor = self._predictor("detect", DetectionPredictor, names, threshold=float(threshold), top=int(top))
        picture, result = self._run(predictor, image)
        dets = result["detections"]
        lines = [f"{d['class']} {d['score']:.2f} at {_box(d['box'])}" for d in dets]
        head = f"{len(dets)} box{'es' if len(dets) != 1 else ''}" if dets else \
            f"no box scores {threshold:.2f} or more (lower the threshold)"
        return Answer(picture, "\n".join([head, *lines]), result)

    def ground(self, image: Image.Image, text: str, phrases: str = "") -> Answer:
        """The best box of each of the comma-separated ``phrases`` of ``text`` (default: the
        whole text)."""
        from ..predict import GroundingPredictor

        text = _required(text, "type a text to ground (e.g. a red star left of a blue circle)")
        names = [p.strip() for p in phrases.split(",") if p.strip()] or [text]
        predictor = self._predictor("ground", GroundingPredictor)
        picture, result = self._run(predictor, image, text, [names])
        lines = [f"{p['phrase']}: {p['scores'][0]:.2f} at {_box(p['boxes'][0])}" for p in result["phrases"]]
        return Answer(picture, "\n".join(lines), result)

    def refexp(self, image: Image.Image, expression: str) -> Answer:
        """The one box ``expression`` refers to."""
        from ..predict import RefexpPredictor

        expression = _required(expression, "type a referring expression (e.g. the small red star)")
        picture, result = self._run(self._predictor("refexp", RefexpPredictor), image, expression)
        return Answer(picture, f"{result['score']:.2f} at {_box(result['box'])}", result)

    def vqa(self, image: Image.Image, question: str) -> Answer:
        """The answer list's best answers to ``question``."""
        from ..predict import VqaPredictor

        question = _required(question, "type a question (e.g. what color is the star?)")
        picture, result = self._run(self._predictor("vqa", VqaPredictor), image, question)
        lines = [f"{t['answer']} ({t['score']:.2f})" for t in result["top"]]
        return Answer(picture, "\n".join(lines), result)

    def caption(self, image: Image.Image, text: str = "") -> Answer:
        """A caption by beam search (``text`` is not used: the caption tab has nothing to type)."""
        from ..predict import CaptionPredictor

        picture, result = self._run(self._predictor("caption", CaptionPredictor), image)
        return Answer(picture, result["caption"], result)

    @staticmethod
    def _run(predictor, image: Image.Image, *args) -> tuple[Image.Image, dict]:
        loaded = predictor.processor.open(image)
        result = predictor.predict([loaded], *args)[0]
        return predictor.draw(result, loaded), result


def _required(text: str | None, hint: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ValueError(hint)
    return text


def _box(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in box) + "]"
