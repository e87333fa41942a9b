"""``fibervl pretrain image``: supervised image-only pre-training of FIBER's image tower.

    fibervl pretrain image --data-root data/shapes train.max_steps=600 train.batch_size=64

Every training image of a shapes data set is labelled with the colours, the shapes and the sizes
of its objects (``ROOT/detection/instances_train.json``: each object's category and its ``color``
and, where given, ``size`` attributes; held-out categories, marked ``"seen": false``, are never
labels). The tower learns to
tell which labels an image shows (:class:`~fibervl.tasks.image_labels.ImageLabelTask`), so that
the coarse-grained stage, given ``model.init`` = this run's ``model/``, starts from a tower that
already sees colour and shape, as the paper's starts from an ImageNet-trained Swin.

A tower trained on the few thousand training images of a data set memorises them rather than
learning shape (issue 31's probe: 92 % of its training shapes, 34 % of unseen ones). With
``data.fresh_scenes`` = N the stage trains instead on N one-object scenes that the data set's
own generator renders as they are drawn (its image size and backgrounds, read from
``dataset.json``), in a split of their own: no image of the data set is among them, and a step
sees images no step saw before, as an ImageNet pass would. The labels are the same names.
``data.fresh_objects`` = K draws scenes of 1 to K objects instead of one; ``data.token_weight``
> 0 then also asks each token of the tower's last grid which labels it shows (the labels of the
object centred in its cell; :class:`~fibervl.tasks.image_labels.ImageLabelTask`), so that each
object's token, not only the pooled image, tells its shape among others.

Only the training split is read. The run directory holds the engine's checkpoints and, at the
end, ``model/`` (the whole model, its tower trained, the rest as initialised; the label head is
dropped) and ``metrics.json``: the label fit on the first ``data.num_eval`` training images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import Processor
from ..data.samples import Sample
from ..data.shapes.layout import ShapesDataset
from ..data.shapes.render import render
from ..data.shapes.scene import sample_scene, scene_rng
from ..data.transforms import eval_transforms, train_transforms
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, load_tokenizer
from ..modeling.factory import weights_drawn_from
from ..tasks.image_labels import ImageLabelTask
from .common import export_model, recipe_train
from .registry import Recipe


# The attributes of an object that can be labels: its ``color`` attribute, its category
# (``shape``) and its ``size`` attribute.
LABEL_KINDS = ("color", "shape", "size")


@dataclass
class ImageLabelData(DataSpec):
    """A shapes data set ``root``; ``train_split``: the split whose images and annotations train
    (and whose label fit is reported); ``fresh_scenes``: N > 0 trains on N freshly rendered
    scenes instead (:class:`FreshSceneLabels`) of 1 to ``fresh_objects`` objects;
    ``token_weight``: weight of the per-token labels of those scenes (0: none);
    ``label_kinds``: which attributes of an object are labels (of :data:`LABEL_KINDS`)."""

    train_split: str = "train"
    fresh_scenes: int = 0
    fresh_objects: int = 1
    token_weight: float = 0.0
    label_kinds: tuple[str, ...] = LABEL_KINDS


@dataclass
class ImagePretrainConfig:
    """Supervised image-only pre-training: which colours, shapes and sizes does each image show?"""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: ImageLabelData = field(default_factory=ImageLabelData)
    train: TrainConfig = field(default_factory=lambda: recipe_train("pretrain-image", max_steps=600, batch_size=64))


def label_ids(index: dict[str, int], color: str | None, shape: str | None, size: str | None) -> list[int]:
    """The indices of the labels an object shows: its colour, shape and size, those of them
    ``index`` names (a held-out shape, a kind not chosen, or a colour or size no training
    annotation shows has no label); None: the attribute is not given."""
    named = [f"{kind}:{value}" for kind, value in (("color", color), ("shape", shape), ("size", size))
             if value is not None]
    return [index[name] for name in named if name in index]


def read_image_labels(root: str | Path, split: str, kinds=LABEL_KINDS) -> tuple[list[str], list[tuple[Path, list[int]]]]:
    """The label names of ``kinds`` (``color:red``, ..., ``shape:circle``, ..., ``size:large``,
    ...: a size label for each ``size`` attribute the file gives) and, per image of ``split``, its
    file and the indices of the labels it shows, from ``root/detection/instances_{split}.json``."""
    unknown = sorted(set(kinds) - set(LABEL_KINDS))
    if unknown or not kinds:
        raise ValueError(f"data.label_kinds must be some of {list(LABEL_KINDS)}, got {list(kinds)}")
    path = Path(root) / "detection" / f"instances_{split}.json"
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        seen = [c["name"] for c in coco["categories"] if c.get("seen", True)]
        images = {im["id"]: im["file_name"] for im in coco["images"]}
        objects = [(a["image_id"], a["category_id"], a["attributes"]["color"], a["attributes"].get("size"))
                   for a in coco["annotations"]]
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; data.root must be a shapes data set "
                         "(fibervl data shapes writes detection/instances_<split>.json)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a shapes detection file with a color attribute per object ({err!r})") from None
    colors = sorted({color for _, _, color, _ in objects})
    sizes = sorted({size for *_, size in objects if size is not None})
    names = [name for name in [f"color:{c}" for c in colors] + [f"shape:{n}" for n in seen]
             + [f"size:{z}" for z in sizes] if name.split(":")[0] in kinds]
    index = {name: i for i, name in enumerate(names)}
    shown: dict[int, set[int]] = {image_id: set() for image_id in images}
    for image_id, category, color, size in objects:
        if image_id not in shown:
            raise ValueError(f"{path}: an annotation names image {image_id}, which the file does not list")
        shown[image_id].update(label_ids(index, color, categories.get(category), size))
    image_dir = Path(root) / "images" / split
    return names, [(image_dir / images[i], sorted(shown[i])) for i in sorted(images)]


class ImageLabelDataset(torch.utils.data.Dataset):
    """Item i: ``{"images": [3, S, S] processed image, "labels": [L] multi-hot}``."""

    def __init__(self, items: list[tuple[Path, list[int]]], num_labels: int, processor: Processor) -> None:
        self.items, self.num_labels, self.processor = items, num_labels, processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, shown = self.items[i]
        processed = self.processor(Sample(sample_id=str(i), image_id=i, image_path=path))
        labels = torch.zeros(self.num_labels)
        labels[shown] = 1.0
        return {"images": processed.pixel_values, "labels": labels}


# The split name the fresh scenes are drawn under: none of the generator's own splits.
FRESH_SPLIT = "image-pretrain"


def object_label_ids(obj, index: dict[str, int]) -> list[int]:
    """The labels a scene object shows (:func:`label_ids` of its colour, shape and size)."""
    return label_ids(index, obj.color, obj.shape, obj.size)


def token_labels(scene, grid: int, index: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell of a ``grid`` x ``grid`` split of a rendered ``scene`` (row-major, the tower's
    token order): ``(labels [grid^2, L] multi-hot, scored [grid^2] bool)``. A cell holding one
    object's centre shows that object's labels (colour, size, and its shape unless held out); a cell
    no object's visible box touches shows none; the others (part of an object, or two centres)
    are not scored."""
    cell = scene.size / grid
    labels = torch.zeros(grid * grid, len(index))
    scored = torch.ones(grid * grid, dtype=torch.bool)
    centred: dict[int, list] = {}
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.visible_box
        rows = range(int(y0 // cell), min(grid - 1, int((y1 - 1) // cell)) + 1)
        cols = range(int(x0 // cell), min(grid - 1, int((x1 - 1) // cell)) + 1)
        for r in rows:
            scored[r * grid + cols.start: r * grid + cols.stop] = False
        r, c = min(grid - 1, int(obj.cy // cell)), min(grid - 1, int(obj.cx // cell))
        centred.setdefault(r * grid + c, []).append(obj)
    for k, objs in centred.items():
        if len(objs) == 1:
            scored[k] = True
            labels[k, object_label_ids(objs[0], index)] = 1.0
    return labels, scored


class FreshSceneLabels(torch.utils.data.Dataset):
    """Item i: scene i of the split ``FRESH_SPLIT``, of 1 to ``max_objects`` objects, rendered by
    the shapes generator with the settings of data set ``root`` (image size and backgrounds; not
    encoded: the files' JPEG at quality 95 without chroma subsampling changes no colour or
    outline, and the round trip would cost 40 % of the draw), labelled with its colours and its
    shapes: ``{"images": [3, S, S], "labels": [L] multi-hot}``. No scene shows a shape held out
    of the data set's fine-grained training: its object would be labelled with its colour and no
    shape, which trains its shape as "none of these", as an unlabelled box would be trained as
    background (the zero-shot protocol of the data set's box files, docs/datasets.md); with
    ``grid`` > 0 also ``"token_labels" [grid^2, L]`` and ``"token_mask" [grid^2]``
    (:func:`token_labels`). Deterministic in (the data set's seed, i): a resumed run draws the
    same scenes."""

    def __init__(self, root: str | Path, n: int, names: list[str], processor: Processor,
                 max_objects: int = 1, grid: int = 0) -> None:
        if n < 1:
            raise ValueError(f"fresh_scenes must be positive, got {n}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"fresh_objects must be a whole number >= 1, got {max_objects!r}")
        shapes = ShapesDataset(root)
        config = shapes.meta["config"]
        self.shapes = tuple(s for s in shapes.shapes if s not in shapes.held_out_shapes)
        self.n, self.processor, self.index = n, processor, {name: i for i, name in enumerate(names)}
        self.seed, self.size = int(config["seed"]), int(config["image_size"])
        self.backgrounds = tuple(config["backgrounds"])
        self.max_objects, self.grid = max_objects, grid

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        scene = sample_scene(scene_rng(self.seed, FRESH_SPLIT, i), i, FRESH_SPLIT, self.size, 1, self.max_objects,
                             self.backgrounds, self.shapes)
        processed = self.processor(Sample(sample_id=f"{FRESH_SPLIT}/{i}", image_id=i, image=render(scene)))
        labels = torch.zeros(len(self.index))
        for obj in scene.objects:
            labels[object_label_ids(obj, self.index)] = 1.0
        item = {"images": processed.pixel_values, "labels": labels}
        if self.grid:
            item["token_labels"], item["token_mask"] = token_labels(scene, self.grid, self.index)
        return item


@torch.no_grad()
def label_fit(model, task: ImageLabelTask, data: ImageLabelDataset, batch_size: int = 64) -> dict[str, float]:
    """How well the labels of ``data`` are told: ``exact`` (%, every label right) and ``label_acc``
    (%, per label)."""
    exact = right = count = 0.0
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        images = torch.stack([it["images"] for it in items]).to(next(model.parameters()).device)
        labels = torch.stack([it["labels"] for it in items]).to(images.device) > 0.5
        predicted = task.logits(model, images) > 0
        exact += (predicted == labels).all(dim=1).sum().item()
        right += (predicted == labels).sum().item()
        count += len(items)
    return {"exact": 100 * exact / max(count, 1), "label_acc": 100 * right / max(count * labels.shape[1], 1),
            "images": count}


def run(cfg: ImagePretrainConfig) -> dict:
    if cfg.data.train or cfg.data.eval:
        raise ValueError("pretrain image reads the annotations of a shapes data set (data.root) only; "
                         "data.train / data.eval (--train-data, --eval-data) are not supported")
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    model = cfg.model.build(tokenizer, family="fiber")  # the tower trained is FIBER's Swin
    names, items = read_image_labels(cfg.data.root, cfg.data.train_split, cfg.data.label_kinds)
    image_size, _ = cfg.data.input_sizes(model.config)
    if cfg.data.token_weight and not cfg.data.fresh_scenes:
        raise ValueError("data.token_weight needs data.fresh_scenes: only a rendered scene knows where its "
                         "objects' centres are")
    grid = 0
    if cfg.data.token_weight:
        grid = image_size // model.config.vision.stage_strides()[-1]
    # a token's labels are those of the cell it covers: no flip, which would move the cell (fresh
    # scenes are drawn anew at every step, so a flip adds no variety)
    processor = Processor(train_transforms(image_size, flip=not grid))
    train = (FreshSceneLabels(cfg.data.root, cfg.data.fresh_scenes, names, processor, cfg.data.fresh_objects, grid)
             if cfg.data.fresh_scenes else ImageLabelDataset(items, len(names), processor))
    # The label head is drawn from the model's seed too: the process's own stream differs per run.
    with weights_drawn_from(cfg.model.seed + 1):
        task = ImageLabelTask(model.vision.dims[-1], len(names), cfg.data.token_weight)
    # Only the tower trains: the text side and fusion get no gradient from this task.
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("vision."))
    trainer = Trainer(cfg.train, model, task, train, config_snapshot=cfg)
    summary = trainer.fit()
    model.requires_grad_(True)
    model.eval()
    fit = ImageLabelDataset(items[:cfg.data.num_eval or len(items)], len(names), Processor(eval_transforms(image_size)))
    metrics = {f"train_{k}": v for k, v in label_fit(model, task, fit).items()}
    export_model(model, cfg.train.run_dir, {"labels": len(names), **metrics}, tokenizer=tokenizer, data=cfg.data)
    summary["eval"] = metrics
    return summary


RECIPE = Recipe("image", "supervised image-only pre-training of FIBER's image tower (colour, shape and size labels)",
                ImagePretrainConfig, run, stage="pretrain")
