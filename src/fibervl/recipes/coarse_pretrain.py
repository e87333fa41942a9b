"""``fibervl pretrain coarse``: ITC + ITM (global hard negatives) + MLM on image-text pairs.

    fibervl pretrain coarse --config configs/fiber-tiny_coarse_shapes.yaml train.max_steps=200

    fibervl pretrain coarse --train-data karpathy:coco/dataset_coco.json:coco \
        --train-data 'webdataset:cc3m/{00000..00331}.tar' --eval-data karpathy:coco/dataset_coco.json:coco

Data: caption sources (:mod:`fibervl.data.sources`: ``data.train`` / ``--train-data``, mixed by
weight; webdataset shards are streamed, never loaded whole), or the older keys: a captions split
in the Karpathy format (the shapes set writes one) or COCO's captions files
(``data.format=coco_captions``); every (image, caption) pair is a sample. Evaluation:
dual-encoder (ITC) retrieval R@1/5/10 on ``eval_split`` of the evaluation source.
The run directory holds the engine's checkpoints (``--resume`` continues exactly) and, at the
end, ``model/`` (loadable with ``FiberModel.from_pretrained``) and ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.trainer import TrainConfig
from ..experiment import ModelSpec
from ..tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from .common import recipe_train
from .image_text import CaptionData, image_text_setup, special_ids, train_and_export
from .registry import Recipe


@dataclass
class CoarseConfig:
    """FIBER's coarse-grained pre-training: ITC + ITM (global hard negatives) + MLM on image-caption pairs."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: CaptionData = field(default_factory=CaptionData)
    objectives: CoarseObjectives = field(default_factory=CoarseObjectives)
    train: TrainConfig = field(default_factory=lambda: recipe_train("pretrain-coarse", max_steps=1000))


def run(cfg: CoarseConfig) -> dict:
    setup = image_text_setup(cfg.model, cfg.data, cfg.train, "fiber")
    mcfg = setup.model.config
    task = CoarsePretrainTask(cfg.objectives, mcfg.hidden_size, mcfg.text.vocab_size, mcfg.text.mask_token_id,
                              special_ids(setup.tokenizer), seed=cfg.train.seed,
                              swap_table=cfg.objectives.swap_table(setup.tokenizer))
    return train_and_export(cfg, setup, task)


RECIPE = Recipe("coarse", "coarse-grained image-text pre-training of FIBER (ITC + ITM + MLM)", CoarseConfig, run,
                stage="pretrain")
