"""Text for a rendered scene: captions with grounded phrases, VQA, referring expressions.

Every statement is computed from the scene, so it is true of the image by construction.
Objects are referred to by their index in ``scene.objects``.

Why the rules below: a phrase such as "a red circle" must name every red circle in the
image or be unambiguous, so captions talk about (colour, shape) *groups*; references in
questions and referring expressions use the shortest description that singles out one object
("the star", "the red star", "the small red star", "the red star on the left", "the red star
above the blue square").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .scene import ObjectSpec, SceneSpec
from .vocab import (
    COLOR_NAMES, CONFUSABLE_COLORS, CONFUSABLE_SHAPES, NUMBER_WORDS, SHAPES, SIZE_RANK, plural,
)

# Objects closer than this fraction of the image side are not called left/right/above/below
# of each other: the relation would be unclear to a person too.
RELATION_MARGIN = 0.08


@dataclass
class Phrase:
    """A character span of a text naming a set of objects (indices into scene.objects)."""

    start: int
    end: int
    objects: tuple[int, ...]


@dataclass
class Text:
    text: str
    phrases: list[Phrase] = field(default_factory=list)
    kind: str = ""  # template family, e.g. "relation"


class TextBuilder:
    """Concatenate pieces, recording the span of the pieces that name objects."""

    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.phrases: list[Phrase] = []

    def add(self, piece: str, objects: tuple[int, ...] | None = None) -> "TextBuilder":
        if objects:
            self.phrases.append(Phrase(self.length, self.length + len(piece), tuple(objects)))
        self.parts.append(piece)
        self.length += len(piece)
        return self

    def build(self, kind: str) -> Text:
        return Text("".join(self.parts), self.phrases, kind)


# ---------------------------------------------------------------------- scene geometry
def _margin(scene: SceneSpec) -> float:
    return RELATION_MARGIN * scene.size


def relation(a: ObjectSpec, b: ObjectSpec, scene: SceneSpec) -> set[str]:
    """Relations that clearly hold from a to b: subset of {left, right, above, below}."""
    (ax, ay), (bx, by), m = a.center, b.center, _margin(scene)
    out = set()
    if ax + m < bx:
        out.add("left")
    if ax > bx + m:
        out.add("right")
    if ay + m < by:
        out.add("above")
    if ay > by + m:
        out.add("below")
    return out


RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def groups(scene: SceneSpec) -> dict[tuple[str, str], list[int]]:
    """(colour, shape) -> object indices, in drawing order."""
    out: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(scene.objects):
        out.setdefault(o.key, []).append(i)
    return out


def count_where(scene: SceneSpec, color: str | None = None, shape: str | None = None) -> int:
    return sum(1 for o in scene.objects if (color is None or o.color == color) and (shape is None or o.shape == shape))


def describe(scene: SceneSpec, index: int, use_color: bool = True, use_size: bool = True) -> str | None:
    """Shortest attribute description ("star", "red star", "small red star") that matches only
    object ``index``; None if attributes alone cannot single it out."""
    cache = scene.__dict__.setdefault("_describe_cache", {})  # called often per scene
    if (index, use_color, use_size) not in cache:
        cache[(index, use_color, use_size)] = _describe(scene, index, use_color, use_size)
    return cache[(index, use_color, use_size)]


def _describe(scene: SceneSpec, index: int, use_color: bool, use_size: bool) -> str | None:
    objs = scene.objects
    t = objs[index]
    candidates = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")]
    for attrs in candidates:
        if ("color" in attrs and not use_color) or ("size" in attrs and not use_size):
            continue
        matches = [o for o in objs if all(getattr(o, a) == getattr(t, a) for a in attrs)]
        if len(matches) == 1:
            return " ".join(getattr(t, a) for a in attrs)
    return None


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_phrase(n: int, color: str | None, shape: str | None) -> str:
    """"a red circle", "two red circles", "three stars", "four blue shapes"."""
    noun = shape if shape else "shape"
    words = ([color] if color else [])
    if n == 1:
        head = " ".join(words + [noun])
        return f"{_a(head)} {head}"
    return " ".join([NUMBER_WORDS[n]] + words + [plural(noun) if shape else "shapes"])


# ---------------------------------------------------------------------- captions
def captions(scene: SceneSpec, rng: random.Random, n: int = 5) -> list[Text]:
    """``n`` different captions, each from a different template where possible."""
    makers = [_cap_list, _cap_relation, _cap_count_all, _cap_color_count, _cap_shape_count,
              _cap_size, _cap_background]
    rng.shuffle(makers)
    out, seen = [], set()
    for maker in makers * 2:
        if len(out) == n:
            break
        text = maker(scene, rng)
        if text is not None and text.text not in seen:
            seen.add(text.text)
            out.append(text)
    return out


def _cap_list(scene, rng):
    g = list(groups(scene).items())
    rng.shuffle(g)
    g = g[: rng.randint(2, 3)] if len(g) >= 2 else g
    b = TextBuilder().add(rng.choice(["", "", "a picture of ", "an image with "]))
    for k, ((color, shape), idx) in enumerate(g):
        if k:
            b.add(" and " if k == len(g) - 1 else ", ")
        b.add(_count_phrase(len(idx), color, shape), tuple(idx))
    return b.build("list")


def _unique_pairs(scene, need_relation=True):
    objs = scene.objects
    uniq = [i for i in range(len(objs)) if describe(scene, i) is not None]
    pairs = []
    for i in uniq:
        for j in uniq:
            if i != j and (not need_relation or relation(objs[i], objs[j], scene)):
                pairs.append((i, j))
    return pairs


def _cap_relation(scene, rng):
    # "a red star" is only unambiguous when no other red star is in the image.
    g = groups(scene)
    pairs = [(i, j) for i, j in _unique_pairs(scene)
             if len(g[scene.objects[i].key]) == 1 and len(g[scene.objects[j].key]) == 1]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    o, p = scene.objects[i], scene.objects[j]
    rel = rng.choice(sorted(relation(o, p, scene)))
    a_desc, b_desc = f"{o.color} {o.shape}", f"{p.color} {p.shape}"
    b = TextBuilder()
    form = rng.randrange(3)
    if form == 0:    # "a red star to the left of a blue square"
        b.add(f"{_a(a_desc)} {a_desc}", (i,)).add(f" {RELATION_WORDS[rel]} ").add(f"{_a(b_desc)} {b_desc}", (j,))
    elif form == 1:  # "a red star is to the left of a blue square"
        b.add(f"{_a(a_desc)} {a_desc}", (i,)).add(f" is {RELATION_WORDS[rel]} ").add(f"{_a(b_desc)} {b_desc}", (j,))
    else:            # "there is a red star to the left of a blue square"
        b.add("there is ").add(f"{_a(a_desc)} {a_desc}", (i,)).add(f" {RELATION_WORDS[rel]} ")
        b.add(f"{_a(b_desc)} {b_desc}", (j,))
    return b.build("relation")


def _cap_count_all(scene, rng):
    n = len(scene.objects)
    b = TextBuilder()
    lead = rng.choice(["", "there are ", "a picture of "])
    b.add(lead).add(f"{NUMBER_WORDS[n]} shapes", tuple(range(n)))
    b.add(rng.choice([f" on a {scene.background} background", ""]))
    return b.build("count")


def _cap_color_count(scene, rng):
    by_color: dict[str, list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_color.setdefault(o.color, []).append(i)
    colors = sorted(by_color, key=lambda c: (-len(by_color[c]), c))[:2]
    b = TextBuilder()
    for k, c in enumerate(colors):
        if k:
            b.add(" and ")
        b.add(_count_phrase(len(by_color[c]), c, None), tuple(by_color[c]))
    return b.build("color_count")


def _cap_shape_count(scene, rng):
    by_shape: dict[str, list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_shape.setdefault(o.shape, []).append(i)
    shape = rng.choice(sorted(by_shape))
    b = TextBuilder()
    phrase = _count_phrase(len(by_shape[shape]), None, shape)
    if rng.random() < 0.5:
        b.add("there " + ("is " if len(by_shape[shape]) == 1 else "are ")).add(phrase, tuple(by_shape[shape]))
        b.add(" in the picture")
    else:
        b.add(phrase, tuple(by_shape[shape])).add(f" among {NUMBER_WORDS[len(scene.objects)]} shapes")
    return b.build("shape_count")


def _cap_size(scene, rng):
    objs = scene.objects
    big = [i for i, o in enumerate(objs) if o.size == "large" and len(groups(scene)[o.key]) == 1]
    small = [i for i, o in enumerate(objs) if o.size == "small" and len(groups(scene)[o.key]) == 1]
    if not big or not small:
        return None
    i, j = rng.choice(big), rng.choice(small)
    bi, sj = f"large {objs[i].color} {objs[i].shape}", f"small {objs[j].color} {objs[j].shape}"
    if rng.random() < 0.5:
        b = TextBuilder().add(f"a {bi}", (i,)).add(" and ").add(f"a {sj}", (j,))
    else:
        b = TextBuilder().add(f"a {sj}", (j,)).add(rng.choice([" next to ", " and "])).add(f"a {bi}", (i,))
    return b.build("size")


def _cap_background(scene, rng):
    g = groups(scene)
    key = rng.choice(sorted(g))
    b = TextBuilder().add(_count_phrase(len(g[key]), *key), tuple(g[key]))
    b.add(f" on a {scene.background} background")
    return b.build("background")


# ---------------------------------------------------------------------- VQA
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


def _uniquely_described(scene, use_color=True):
    return [(i, d) for i in range(len(scene.objects)) if (d := describe(scene, i, use_color)) is not None]


def _q_color(scene, rng, bal):
    cands = _uniquely_described(scene, use_color=False)
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
        q = rng.choice([f"is there {_a(item)} {item}?", f"are there any {plural(item)}?"])
    else:
        words = f"{item[0]} {item[1]}"
        q = rng.choice([f"is there {_a(words)} {words}?", f"is there {_a(words)} {words} in the image?"])
    return Question(q, "yes" if yes else "no", "yes/no", "is there", template)


def _q_relation(scene, rng, bal):
    pairs = _unique_pairs(scene)
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
    pairs = [(i, j) for i, j in _unique_pairs(scene) if relation(scene.objects[i], scene.objects[j], scene) & {"left", "right"}]
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
    cands = _uniquely_described(scene, use_color=False)
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


# ---------------------------------------------------------------------- referring expressions
def referring_expressions(scene: SceneSpec, rng: random.Random, max_targets: int = 3) -> list[tuple[int, Text]]:
    """RefCOCO-style expressions, each true of exactly one object: (target index, text).

    The span of the target's own noun phrase ("the red star") is recorded as its phrase.
    """
    objs = scene.objects
    order = list(range(len(objs)))
    rng.shuffle(order)
    # Prefer targets that need more than one attribute: they are what makes the task hard.
    order.sort(key=lambda i: describe(scene, i) is not None and len(describe(scene, i).split()) == 1)
    out = []
    for i in order[:max_targets]:
        forms = _ref_forms(scene, i)
        if forms:
            # Pick the kind first (attribute / position / relation), then a form of that kind:
            # relation forms are the most numerous and would otherwise crowd out the rest.
            kinds = sorted({f.kind for f in forms})
            kind = rng.choice(kinds)
            out.append((i, rng.choice([f for f in forms if f.kind == kind])))
    return out


def _ref_forms(scene, i):
    objs = scene.objects
    t = objs[i]
    forms: list[Text] = []
    d = describe(scene, i)
    if d is not None:
        forms.append(TextBuilder().add(f"the {d}", (i,)).build("attribute"))
    same = [j for j, o in enumerate(objs) if o.key == t.key]
    m = _margin(scene)
    name = f"{t.color} {t.shape}"
    if len(same) > 1:
        for axis, lo_word, hi_word in ((0, "left", "right"), (1, "top", "bottom")):
            coords = sorted((objs[j].center[axis], j) for j in same)
            if coords[0][1] == i and coords[1][0] - coords[0][0] > m:
                word = lo_word
            elif coords[-1][1] == i and coords[-1][0] - coords[-2][0] > m:
                word = hi_word
            else:
                continue
            if len(same) == 2:
                b = TextBuilder().add(f"the {name}", (i,)).add(f" on the {word}" if axis == 0 else f" at the {word}")
            else:
                sup = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "lowest"}[word]
                b = TextBuilder().add(f"the {sup} {name}", (i,))
            forms.append(b.build("position"))
    # Relation to a uniquely described anchor that no other look-alike shares.
    for j in range(len(objs)):
        dj = describe(scene, j)
        if j == i or dj is None:
            continue
        for rel in sorted(relation(t, objs[j], scene)):
            if all(rel not in relation(objs[k], objs[j], scene) for k in same if k != i):
                b = TextBuilder().add(f"the {name}", (i,)).add(f" {RELATION_WORDS[rel]} ").add(f"the {dj}", (j,))
                forms.append(b.build("relation"))
    return forms


# ---------------------------------------------------------------------- NLVR2
NLVR2_TEMPLATES = ("count_left", "count_right", "more", "both", "exactly_one", "total", "relation_in")


@dataclass
class Nlvr2Statement:
    """A statement about an image pair; ``truth(left, right)`` evaluates it on any pair.

    The generator draws the statement from one random pair, then the wanted label, then
    searches a pair making the statement that label: the text alone says nothing of the label.
    """

    template: str
    text: str
    color: str | None = None
    shape: str | None = None
    number: int = 0
    side: str = "left"
    pair_keys: tuple = ()
    rel: str = ""

    def count(self, scene: SceneSpec) -> int:
        return count_where(scene, self.color, self.shape)

    def truth(self, left: SceneSpec, right: SceneSpec) -> bool | None:
        t = self.template
        if t == "count_left":
            return self.count(left) == self.number
        if t == "count_right":
            return self.count(right) == self.number
        if t == "more":
            cl, cr = self.count(left), self.count(right)
            return None if cl == cr else cl > cr  # ties make the statement odd: avoid such pairs
        if t == "both":
            return self.count(left) > 0 and self.count(right) > 0
        if t == "exactly_one":
            return (self.count(left) > 0) != (self.count(right) > 0)
        if t == "total":
            return self.count(left) + self.count(right) == self.number
        if t == "relation_in":
            scene = left if self.side == "left" else right
            (ka, kb) = self.pair_keys
            return any(x.key == ka and y.key == kb and self.rel in relation(x, y, scene)
                       for x in scene.objects for y in scene.objects if x is not y)
        raise ValueError(f"unknown NLVR2 template {t!r}")


def nlvr2_statement(template: str, left: SceneSpec, right: SceneSpec, rng: random.Random) -> Nlvr2Statement | None:
    """Draw a statement of ``template`` with parameters taken from the content of a pair
    (so that it is plausible), or None if this pair offers none."""
    pool = left.objects + right.objects
    o = rng.choice(pool)
    use_color = rng.random() < 0.5
    color = o.color if use_color else None
    shape = o.shape if (not use_color or rng.random() < 0.5) else None

    def noun(n):
        if shape:
            head = f"{color} {shape}" if color else shape
            return head if n == 1 else (f"{color} {plural(shape)}" if color else plural(shape))
        return f"{color} shape" if n == 1 else f"{color} shapes"

    st = Nlvr2Statement(template, "", color, shape)
    if template in ("count_left", "count_right"):
        st.side = "left" if template == "count_left" else "right"
        st.number = rng.randint(1, 3)
        st.text = f"the {st.side} image contains exactly {NUMBER_WORDS[st.number]} {noun(st.number)}."
    elif template == "more":
        st.text = f"there are more {noun(2)} in the left image than in the right image."
    elif template == "both":
        st.text = f"both images contain at least one {noun(1)}."
    elif template == "exactly_one":
        head = noun(1)
        st.text = f"exactly one image contains {_a(head)} {head}."
    elif template == "total":
        st.number = rng.randint(1, 4)
        st.text = f"there are {NUMBER_WORDS[st.number]} {noun(st.number)} in total."
    elif template == "relation_in":
        st.side = rng.choice(["left", "right"])
        src = rng.choice([left, right])
        pairs = _unique_pairs(src)
        if not pairs:
            return None
        i, j = rng.choice(pairs)
        a, b = src.objects[i], src.objects[j]
        st.rel = rng.choice(sorted(relation(a, b, src)))
        st.pair_keys = (a.key, b.key)
        an, bn = f"{a.color} {a.shape}", f"{b.color} {b.shape}"
        st.text = f"in the {st.side} image, {_a(an)} {an} is {RELATION_WORDS[st.rel]} {_a(bn)} {bn}."
    else:
        raise ValueError(f"unknown NLVR2 template {template!r}")
    return st
