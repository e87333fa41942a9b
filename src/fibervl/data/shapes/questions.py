"""VQAv2-style questions about a scene, with 10 annotator answers.

Yes/no answers are balanced per template by :class:`YesNoBalancer`, and no question's words
give its answer away (see the comments of the templates).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .describe import (
    OPPOSITE, RELATION_WORDS, article, count_where, describe, relation, unique_pairs, uniquely_described,
)
from .scene import SceneSpec
from .vocab import COLOR_NAMES, CONFUSABLE_COLORS, CONFUSABLE_SHAPES, SHAPES, SIZE_RANK, plural


@dataclass
class Question:
    question: str
    answer: str
    answer_type: str  # "yes/no" | "number" | "other"
    question_type: str  # the template family (VQAv2 uses the question's first words)
    template: str  # finer template id, used to balance yes/no answers


class YesNoBalancer:
    """Chooses the wanted yes/no answer per template so that each template ends near 50/50:
    the text-only prior cannot beat chance on yes/no questions."""

    def __init__(self):
        self.counts: dict[str, list[int]] = {}

    def want_yes(self, template: str, rng: random.Random) -> bool:
        yes, no = self.counts.get(template, [0, 0])
        if yes == no:
            return rng.random() < 0.5
        return yes < no

    def record(self, template: str, answer: str) -> None:
        c = self.counts.setdefault(template, [0, 0])
        c[0 if answer == "yes" else 1] += 1


def questions(scene: SceneSpec, rng: random.Random, balancer: YesNoBalancer, n: int = 6) -> list[Question]:
    makers = [_q_color, _q_shape, _q_count, _q_count, _q_exist, _q_relation, _q_side, _q_bigger,
              _q_same_color, _q_more]
    out, seen = [], set()
    for _ in range(4 * n):
        if len(out) == n:
            break
        q = rng.choice(makers)(scene, rng, balancer)
        if q is not None and q.question not in seen:
            seen.add(q.question)
            if q.answer_type == "yes/no":
                balancer.record(q.template, q.answer)
            out.append(q)
    return out


def _q_color(scene, rng, bal):
    cands = uniquely_described(scene, use_color=False)
    if not cands:
        return None
    i, d = rng.choice(cands)
    form = rng.choice(["what color is the {d}?", "what is the color of the {d}?", "which color does the {d} have?"])
    return Question(form.format(d=d), scene.objects[i].color, "other", "what color is the", "color")


def _q_shape(scene, rng, bal):
    objs = scene.objects
    cands = []
    for i, o in enumerate(objs):
        if count_where(scene, color=o.color) == 1:
            cands.append((i, f"{o.color} object"))
        elif sum(1 for p in objs if p.color == o.color and p.size == o.size) == 1:
            cands.append((i, f"{o.size} {o.color} object"))
    if not cands:
        return None
    i, d = rng.choice(cands)
    form = rng.choice(["what shape is the {d}?", "what is the shape of the {d}?"])
    return Question(form.format(d=d), objs[i].shape, "other", "what shape is the", "shape")


def _q_count(scene, rng, bal):
    objs = scene.objects
    kind = rng.choice(["all", "color", "shape", "color_shape"])
    o = rng.choice(objs)
    # One question in five asks about something absent, so "0" is a real answer.
    color = rng.choice(COLOR_NAMES) if rng.random() < 0.2 else o.color
    shape = rng.choice(SHAPES) if rng.random() < 0.2 else o.shape
    if kind == "all":
        q = rng.choice(["how many shapes are there?", "how many objects are in the picture?"])
        n = len(objs)
    elif kind == "color":
        q, n = f"how many {color} shapes are there?", count_where(scene, color=color)
    elif kind == "shape":
        q, n = f"how many {plural(shape)} are there?", count_where(scene, shape=shape)
    else:
        q = rng.choice([f"how many {color} {plural(shape)} are there?", f"how many {color} {plural(shape)} can you see?"])
        n = count_where(scene, color, shape)
    return Question(q, str(n), "number", "how many", "count_" + kind)


def _q_exist(scene, rng, bal):
    objs = scene.objects
    kind = rng.choice(["color_shape", "shape", "size_shape"])
    template = "exist_" + kind
    yes = bal.want_yes(template, rng)
    present = {(o.color, o.shape) for o in objs} if kind == "color_shape" else (
        {o.shape for o in objs} if kind == "shape" else {(o.size, o.shape) for o in objs})
    if yes:
        item = rng.choice(sorted(present))
    else:
        # Near misses (right colour, wrong shape or the reverse) make "no" need the image.
        for _ in range(30):
            o = rng.choice(objs)
            if kind == "color_shape":
                item = (o.color, rng.choice(SHAPES)) if rng.random() < 0.5 else (rng.choice(COLOR_NAMES), o.shape)
            elif kind == "shape":
                item = rng.choice(SHAPES)
            else:
                item = (rng.choice(list(SIZE_RANK)), o.shape)
            if item not in present:
                break
        else:
            return None
    if kind == "shape":
        q = rng.choice([f"is there {article(item)} {item}?", f"are there any {plural(item)}?"])
    else:
        words = f"{item[0]} {item[1]}"
        q = rng.choice([f"is there {article(words)} {words}?", f"is there {article(words)} {words} in the image?"])
    return Question(q, "yes" if yes else "no", "yes/no", "is there", template)


def _q_relation(scene, rng, bal):
    pairs = unique_pairs(scene)
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    rels = relation(scene.objects[i], scene.objects[j], scene)
    yes = bal.want_yes("relation", rng)
    rel = rng.choice(sorted(rels)) if yes else OPPOSITE[rng.choice(sorted(rels))]
    if rel in rels and not yes:  # cannot happen: a relation and its opposite never both hold
        return None
    di, dj = describe(scene, i), describe(scene, j)
    q = f"is the {di} {RELATION_WORDS[rel]} the {dj}?"
    return Question(q, "yes" if rel in rels else "no", "yes/no", "is the", "relation")


def _q_side(scene, rng, bal):
    pairs = [(i, j) for i, j in unique_pairs(scene) if relation(scene.objects[i], scene.objects[j], scene) & {"left", "right"}]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    side = "left" if "left" in relation(scene.objects[i], scene.objects[j], scene) else "right"
    q = f"on which side of the {describe(scene, j)} is the {describe(scene, i)}?"
    return Question(q, side, "other", "on which side", "side")


def _q_bigger(scene, rng, bal):
    objs = scene.objects
    # Descriptions without size words: "is the large star bigger than ..." answers itself.
    named = [i for i in range(len(objs)) if describe(scene, i, use_size=False) is not None]
    pairs = [(i, j) for i in named for j in named if i != j and SIZE_RANK[objs[i].size] != SIZE_RANK[objs[j].size]]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    yes = bal.want_yes("bigger", rng)
    word = rng.choice(["bigger", "larger"]) if rng.random() < 0.5 else "smaller"
    holds = SIZE_RANK[objs[i].size] > SIZE_RANK[objs[j].size]
    holds = holds if word != "smaller" else not holds
    if holds != yes:
        i, j = j, i
    q = f"is the {describe(scene, i, use_size=False)} {word} than the {describe(scene, j, use_size=False)}?"
    return Question(q, "yes" if yes else "no", "yes/no", "is the", "bigger")


def _q_same_color(scene, rng, bal):
    cands = uniquely_described(scene, use_color=False)
    pairs = [(a, b) for a in cands for b in cands if a[0] < b[0]]
    if not pairs:
        return None
    objs = scene.objects
    # Two objects of one shape ("the large star and the small star") are more often of one
    # colour too (repeated objects): balance such pairs apart from the rest, or the words
    # would give the answer away.
    same_shape = rng.random() < 0.5
    template = "same_color_same_shape" if same_shape else "same_color_other_shape"
    yes = bal.want_yes(template, rng)
    fit = [(a, b) for a, b in pairs
           if (objs[a[0]].shape == objs[b[0]].shape) == same_shape and (objs[a[0]].color == objs[b[0]].color) == yes]
    if not fit:
        return None
    (i, di), (j, dj) = rng.choice(fit)
    return Question(f"are the {di} and the {dj} the same color?", "yes" if yes else "no", "yes/no", "are the", template)


def _q_more(scene, rng, bal):
    objs = scene.objects
    kind = rng.choice(["shape", "color"])
    vals = sorted({getattr(o, kind) for o in objs})
    counts = {v: sum(1 for o in objs if getattr(o, kind) == v) for v in vals}
    pairs = [(a, b) for a in vals for b in vals if counts[a] != counts[b]]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    yes = bal.want_yes("more", rng)
    if (counts[a] > counts[b]) != yes:
        a, b = b, a
    if kind == "shape":
        q = f"are there more {plural(a)} than {plural(b)}?"
    else:
        q = f"are there more {a} shapes than {b} shapes?"
    return Question(q, "yes" if yes else "no", "yes/no", "are there", "more")


def annotator_answers(q: Question, rng: random.Random, n: int = 10) -> list[str]:
    """``n`` answers with VQAv2-like disagreement; the right answer always has the most votes
    (at least 6 of 10), so the consensus answer is the truth."""
    answers = [q.answer] * n
    if rng.random() < 0.3:
        wrong: list[str] = []
        if q.answer_type == "number":
            k = int(q.answer)
            wrong = [str(v) for v in (k - 1, k + 1) if 0 <= v <= 9]
        elif q.answer_type == "yes/no":
            wrong = ["no" if q.answer == "yes" else "yes"]
        elif q.answer in CONFUSABLE_COLORS:
            wrong = list(CONFUSABLE_COLORS[q.answer])
        elif q.answer in CONFUSABLE_SHAPES:
            wrong = list(CONFUSABLE_SHAPES[q.answer])
        elif q.answer in ("left", "right"):
            wrong = ["left side" if q.answer == "left" else "right side"]  # same meaning, other wording
        if wrong:
            for pos in rng.sample(range(n), rng.randint(1, 4 if q.answer_type != "yes/no" else 2)):
                answers[pos] = rng.choice(wrong)
    return answers
