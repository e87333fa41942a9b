"""``fibervl.load``: a saved model (or a preset) and the processor that prepares its inputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..data import Tokenizer
from ..tasks.grounding import detector_input
from .card import TASKS, card_of, make_card, supported_tasks
from .processor import InputProcessor


def load(name_or_dir: str | Path, task: str | None = None, tokenizer: str | Path | Tokenizer | None = None,
         device: str | torch.device = "cpu", answers: list[str] | str | Path | None = None,
         normalization: str | None = None, seed: int = 0):
    """A ready model and its :class:`InputProcessor`: ``model, processor = fibervl.load(path, task="vqa")``.

    ``name_or_dir``: a model directory (``save_pretrained`` output, a fine-tuning run's
    ``model/``, a ``fibervl run`` stage directory ``runs/X/stages/<stage>`` or its ``model/``), of
    any model family; or a preset name (``fiber-tiny``): a *randomly initialised* model, with a
    warning, whose vocabulary is fitted to ``tokenizer`` (then required). ``task``: one of
    :data:`~fibervl.predict.card.TASKS`, checked against what the model can do (default: the
    first task its card lists). ``tokenizer`` / ``answers`` replace the directory's own (a path
    or object / a list or a JSON file); ``normalization`` its card's image normalisation.
    ``seed``: the initialisation of a preset's weights.

    The model is in eval mode on ``device``; ``processor.card`` is the directory's model card.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
    answers = _read_answers(answers)
    if _is_model_dir(name_or_dir):
        model, card, tok, answers = _from_directory(name_or_dir, device, tokenizer, answers)
    else:
        model, card, tok = _from_preset(str(name_or_dir), device, tokenizer, answers, seed)
    task = _choose_task(task, model.config, answers, name_or_dir)
    config = model.config
    detection = getattr(config, "detection", None)
    processor = InputProcessor(tok, config.vision.image_size, config.text.max_text_len,
                               detection.max_query_len if detection is not None else None, task=task,
                               normalization=normalization or card.normalization, answers=answers, card=card,
                               detector_size=detector_input(config) if detection is not None else None)
    return model.eval(), processor


def save(model, processor: InputProcessor, directory: str | Path) -> Path:
    """Write a directory :func:`load` reads back: the model (its card in config.json), the
    tokenizer and the answer list."""
    from ..modeling.pretrained import save_pretrained

    directory = Path(directory)
    processor.save_pretrained(directory)
    card = make_card(model.config, directory, data=processor.card.data, metrics=processor.card.metrics,
                     normalization=processor.normalization, extra=processor.card.extra)
    save_pretrained(model, directory, card=card.to_dict())
    return directory


def _is_model_dir(path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() or (p / "model" / "config.json").is_file()


def _from_directory(path, device, tokenizer, answers):
    from ..modeling.factory import create_model, resolve_model_dir

    directory = resolve_model_dir(path)
    model = create_model(directory, device=str(device))
    card = card_of(directory)
    if answers is None and card.answers is not None and (directory / card.answers).is_file():
        answers = _read_answers(directory / card.answers)
    if tokenizer is None:
        if card.tokenizer is None:
            raise FileNotFoundError(f"{directory} has no tokenizer/ directory: give one (tokenizer=PATH, "
                                    "--tokenizer PATH), e.g. the data set's tokenizer the model was trained with")
        tokenizer = directory / card.tokenizer
    tok = _tokenizer(tokenizer)
    _check_fits(tok, model.config, directory)
    if answers is not None and model.config.vqa_num_answers != len(answers):
        raise ValueError(f"{len(answers)} answers, but the VQA head of {directory} has "
                         f"{model.config.vqa_num_answers} outputs")
    return model, card, tok, answers


def _from_preset(name, device, tokenizer, answers, seed):
    from ..modeling.factory import create_model, list_presets

    if name not in list_presets():
        raise FileNotFoundError(f"{name} is neither a model directory (config.json, or model/config.json) nor a "
                                f"preset name ({sorted(list_presets())})")
    if tokenizer is None:
        raise ValueError(f"the preset {name!r} has no tokenizer: give one (tokenizer=PATH, --tokenizer PATH)")
    tok = _tokenizer(tokenizer)
    warnings.warn(f"{name!r} is a preset name, not a trained model: its weights are random and its predictions "
                  "mean nothing (give a model directory for a trained one)", stacklevel=3)
    changes = {"vqa_num_answers": len(answers)} if answers is not None else {}
    model = create_model(name, tokenizer=tok, config_changes=changes, seed=seed, device=device)
    return model, make_card(model.config, None), tok


def _tokenizer(tokenizer) -> Tokenizer:
    return tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_pretrained(tokenizer)


def _check_fits(tok: Tokenizer, config, directory) -> None:
    t = config.text
    if (tok.vocab_size, tok.pad_token_id) != (t.vocab_size, t.pad_token_id):
        raise ValueError(f"the tokenizer (vocabulary {tok.vocab_size}, pad id {tok.pad_token_id}) does not fit the "
                         f"model in {directory} (vocabulary {t.vocab_size}, pad id {t.pad_token_id})")


def _read_answers(answers) -> list[str] | None:
    if answers is None or isinstance(answers, list):
        return answers
    path = Path(answers)
    if not path.is_file():
        raise FileNotFoundError(f"answer list not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _choose_task(task, config, answers, where) -> str | None:
    possible = supported_tasks(config, answers is not None)
    if task is None:
        return possible[0] if possible else None
    if task not in possible:
        needs_answers = task == "vqa" and "vqa" in getattr(config, "heads", ())
        why = " (a VQA model needs its answer list: answers.json)" if needs_answers else ""
        raise ValueError(f"{where} cannot do {task!r}{why}; it can do: {possible or 'none of the tasks'}")
    return task
