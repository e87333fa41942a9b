"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE if it can run).

Captions are lower-cased and tokenised by the PTB tokenizer (Stanford CoreNLP, Java) first, as
the COCO caption evaluation does; METEOR also runs in Java. SPICE needs Stanford CoreNLP models
that pycocoevalcap downloads on first use; when they are absent it is reported as unavailable,
with the reason, never estimated. Scores are the scorers' corpus-level values times 100.

    pip install fibervl[eval]    # pycocotools, pycocoevalcap (and a Java runtime on PATH)
"""

from __future__ import annotations

import shutil
from pathlib import Path

INSTALL_HINT = "caption metrics need pycocoevalcap and Java: pip install fibervl[eval]"


def _require_pycocoevalcap():
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    if shutil.which("java") is None:
        raise RuntimeError(f"{INSTALL_HINT}: no 'java' on PATH (the PTB tokenizer and METEOR are Java programs)")
    return Bleu, Cider, Meteor, Rouge, PTBTokenizer


def spice_status() -> str | None:
    """None when SPICE can run; else why not (its Stanford CoreNLP jars are downloaded on first use)."""
    try:
        import pycocoevalcap.spice.spice as spice
    except ImportError as err:
        return f"pycocoevalcap not installed ({err})"
    lib = Path(spice.__file__).parent / "lib"
    if not any(lib.glob("stanford-corenlp-*-models.jar")):
        return f"SPICE's Stanford CoreNLP models are not in {lib} (pycocoevalcap downloads them on first use; no network here)"
    return None


def constant_caption_cider(candidates: list[str], references: dict) -> list[float]:
    """CIDEr (x100) of giving each candidate sentence for every image of ``references``
    {image id: [captions]}: one tokenizer pass for all, so scoring many candidates is cheap."""
    _, Cider, _, _, PTBTokenizer = _require_pycocoevalcap()
    tok = PTBTokenizer()
    keys = {k: str(i) for i, k in enumerate(references)}
    gts = tok.tokenize({keys[k]: [{"caption": c} for c in refs] for k, refs in references.items()})
    cands = tok.tokenize({str(i): [{"caption": c}] for i, c in enumerate(candidates)})
    scores = []
    for i in range(len(candidates)):
        res = {key: cands[str(i)] for key in gts}
        scores.append(100 * float(Cider().compute_score(gts, res)[0]))
    return scores


def caption_scores(predictions: dict, references: dict, spice: bool = False) -> dict:
    """Corpus scores of ``predictions`` {image id: caption} against ``references`` {image id:
    [captions]} (every predicted id needs references).

    Returns {"bleu_1".."bleu_4", "meteor", "rouge_l", "cider": float (x100), "images": n,
    "spice": float or None, "spice_status": "ok" or the reason it is unavailable}. SPICE is
    attempted only with ``spice=True`` (it is slow) and when :func:`spice_status` allows.
    """
    Bleu, Cider, Meteor, Rouge, PTBTokenizer = _require_pycocoevalcap()
    if not predictions:
        raise ValueError("no predictions to score")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise ValueError(f"{len(missing)} predicted images have no reference captions (e.g. {missing[0]!r})")
    # Ids as strings: the Java tokenizer round-trip and the scorers only need hashable, sortable keys.
    keys = {k: str(i) for i, k in enumerate(predictions)}
    tok = PTBTokenizer()
    res = tok.tokenize({keys[k]: [{"caption": c}] for k, c in predictions.items()})
    gts = tok.tokenize({keys[k]: [{"caption": c} for c in references[k]] for k in predictions})
    out: dict = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"bleu_{n + 1}": 100 * float(b) for n, b in enumerate(bleu)})
    # Meteor's Java process ends when the scorer is collected (its __del__), i.e. right here.
    out["meteor"] = 100 * float(Meteor().compute_score(gts, res)[0])
    out["rouge_l"] = 100 * float(Rouge().compute_score(gts, res)[0])
    out["cider"] = 100 * float(Cider().compute_score(gts, res)[0])
    out["images"] = len(predictions)
    status = spice_status() if spice else "not requested"
    out["spice"] = None
    if status is None:
        from pycocoevalcap.spice.spice import Spice

        try:
            out["spice"] = 100 * float(Spice().compute_score(gts, res)[0])
            status = "ok"
        except Exception as err:  # the jar's own failures (e.g. its model download) surface here
            status = f"SPICE failed: {err}"
    out["spice_status"] = "unavailable: " + status if out["spice"] is None else status
    return out

