"""Can a model's fusion learn to bind words to objects, on inputs that make it the only thing to learn?

    python bench/fusion_binding_toy.py [--preset fiber-tiny] [--steps 1500] [--lr 3e-4] [--negative replace]
        [--composite] [--shift-text] [--shift-embeddings] [--bigram-buckets 4096 [--bigram-std 0.02]] [--attention-align 1]
        [--negative relation --cell-positions --slot-readout | --flat-readout | --query-readout 4]
        [--override text.num_heads=8] [--init MODEL_DIR]

The image prefix (what enters the first fused block) is synthetic: a grid of noise in which two
cells hold an object, each the sum of a fixed random vector for its colour and one for its shape.
The caption is "a C1 S1 and a C2 S2" in word ids of its own, through the model's real text
prefix. The negative is the same caption with the two colours swapped ("a C2 S1 and a C1 S2"):
the same words and the same objects, bound the other way. The model's ITM head scores both and
the pairwise logistic loss of :mod:`fibervl.tasks.pretrain_coarse` (``itm_swap``) trains
everything above the image prefix. A fusion that can bind reaches ~100 % on fresh draws; one that
pools words and regions into a bag stays at 50 %, whatever the steps.

Variants: ``--negative replace`` (a colour the image lacks: recognition, the control);
``--composite`` (one word per (colour, shape) pair: nothing for the text side to compose);
``--shift-text`` (each token entering the fused layers gets the one before it added);
``--shift-embeddings`` (the same on the word embeddings, below the unfused text layers);
``--bigram-buckets N`` (the model's ``text.bigram_buckets``: a learned embedding of each
(previous word, word), hashed into N rows drawn at std 1, or ``--bigram-std``);
``--attention-align W`` (each shape word's text-to-image attention is asked onto its object);
``--negative relation`` ("a S1 left of a S2" against "a S2 left of a S1"); ``--cell-positions``
(each cell of the image prefix carries a vector of where it lies); ``--slot-readout`` (the score
read from the two shape words' fused states side by side instead of the pooled ITM features);
``--flat-readout`` (every place's fused state side by side); ``--query-readout K`` (K learned
queries attending over the fused text tokens, side by side);
``--override KEY=VALUE`` (a model config field); ``--init RUN/stages/coarse/model`` (a trained
model, the captions spelled in its tokenizer's words). Results: docs/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import torch
import yaml

import fibervl
from fibervl.data.shapes.vocab import COLOR_NAMES
from fibervl.data.shapes.vocab import SHAPES as SHAPE_NAMES
from fibervl.modeling.factory import create_model, preset_config
from fibervl.modeling.fusion import TextToImageAttentionRecorder
from fibervl.tasks.objectives import match_score

COLOURS, SHAPES = 8, 10
SHAPE_WORD_PLACES = (3, 7)  # "<s> a C1 S1 and a C2 S2 </s>"
RELATION_SHAPE_WORDS = (2, 6)  # "<s> a S1 left of a S2 </s>"
CAPTION_LENGTH = 9  # every toy caption, padded
FIRST_WORD = 10  # word ids below are left to the special tokens
PAD = 1


class ToyScenes:
    """Draws (image prefix [B, H, W, C], caption ids [B, 9], swapped ids [B, 9]) of two objects."""

    def __init__(self, grid: int, channels: int, object_scale: float, seed: int = 0, composite: bool = False,
                 tokenizer=None):
        """``tokenizer``: spell the captions in its words ("a red star and a blue ring", the shapes
        set's colours and shapes) instead of word ids of the toy's own."""
        g = torch.Generator().manual_seed(seed)
        self.grid, self.channels = grid, channels
        self.colour = torch.randn(COLOURS, channels, generator=g) * object_scale
        self.shape = torch.randn(SHAPES, channels, generator=g) * object_scale
        self.word_first_a, self.word_a, self.word_and = FIRST_WORD, FIRST_WORD, FIRST_WORD + 1
        self.colour_word = FIRST_WORD + 2 + torch.arange(COLOURS)
        self.shape_word = FIRST_WORD + 2 + COLOURS + torch.arange(SHAPES)
        if tokenizer is not None:
            one = lambda text: tokenizer.encode(text)[0][1]  # noqa: E731  (after <s>)
            self.word_first_a, self.word_a, self.word_and = one("a"), one(" a"), one(" and")
            self.colour_word = torch.tensor([one(" " + c) for c in COLOR_NAMES[:COLOURS]])
            self.shape_word = torch.tensor([one(" " + s) for s in SHAPE_NAMES[:SHAPES]])
        # With ``composite``, one word names a (colour, shape) pair: the text side has nothing to compose.
        self.composite = composite
        self.pair_word = FIRST_WORD + 2 + COLOURS + SHAPES + torch.arange(COLOURS * SHAPES).view(COLOURS, SHAPES)
        self.word_left, self.word_of = FIRST_WORD + 2 + COLOURS + SHAPES + COLOURS * SHAPES + torch.arange(2)
        if tokenizer is not None:
            self.word_left, self.word_of = one(" left"), one(" of")
        # With ``cell_positions``, each cell of every scene carries a fixed random vector of its own:
        # an image prefix that knows where each token lies.
        self.cell_position = torch.randn(grid * grid, channels, generator=g)
        self.cell_positions = False

    def draw(self, batch: int, generator: torch.Generator, negative: str = "swap"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``negative``: "swap" (the two colours trade places: binding) or "replace" (the first
        colour becomes one the image does not show: recognition, the control)."""
        cells = self.grid * self.grid
        image = torch.randn(batch, cells, self.channels, generator=generator)
        if self.cell_positions:
            image += self.cell_position
        colours = torch.stack([torch.randperm(COLOURS, generator=generator)[:3] for _ in range(batch)])
        shapes = torch.stack([torch.randperm(SHAPES, generator=generator)[:2] for _ in range(batch)])
        if negative == "relation":  # two columns, the first object's to the left of the second's
            columns = torch.stack([torch.randperm(self.grid, generator=generator)[:2].sort().values for _ in range(batch)])
            places = columns + self.grid * torch.randint(self.grid, (batch, 2), generator=generator)
        else:
            places = torch.stack([torch.randperm(cells, generator=generator)[:2] for _ in range(batch)])
        rows = torch.arange(batch)
        for k in range(2):
            image[rows, places[:, k]] += self.colour[colours[:, k]] + self.shape[shapes[:, k]]
        self.last_places = places
        self.last_shape_words = RELATION_SHAPE_WORDS if negative == "relation" else SHAPE_WORD_PLACES
        if negative == "relation":  # "a S1 left of a S2" against "a S2 left of a S1"
            image = image.view(batch, self.grid, self.grid, self.channels)
            return image, self._relation(shapes), self._relation(shapes.flip(1))
        caption = self._caption(colours[:, :2], shapes)
        if negative == "swap":
            swapped = self._caption(colours[:, :2].flip(1), shapes)
        else:
            swapped = self._caption(colours[:, [2, 1]], shapes)
        return image.view(batch, self.grid, self.grid, self.channels), caption, swapped

    def _relation(self, shapes: torch.Tensor) -> torch.Tensor:
        """"<s> a S1 left of a S2 </s>", padded to the captions' 9 places."""
        column = lambda v: _column(shapes.shape[0], v)  # noqa: E731
        return torch.stack([column(0), column(self.word_first_a), self.shape_word[shapes[:, 0]], column(self.word_left),
                            column(self.word_of), column(self.word_a), self.shape_word[shapes[:, 1]], column(2),
                            column(PAD)], dim=1)

    def _caption(self, colours: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
        column = lambda v: _column(colours.shape[0], v)  # noqa: E731
        if self.composite:  # "a CS1 and a CS2", padded (id 1) to the same 9 places
            pair = self.pair_word[colours, shapes]
            return torch.stack([column(0), column(self.word_first_a), pair[:, 0], column(self.word_and), column(self.word_a),
                                pair[:, 1], column(2), column(PAD), column(PAD)], dim=1)
        return torch.stack([column(0), column(self.word_first_a), self.colour_word[colours[:, 0]], self.shape_word[shapes[:, 0]],
                            column(self.word_and), column(self.word_a), self.colour_word[colours[:, 1]],
                            self.shape_word[shapes[:, 1]], column(2)], dim=1)


def _column(batch: int, word) -> torch.Tensor:
    """[batch] copies of one word id (an int or a 0-d tensor): a caption place every row shares."""
    return torch.full((batch,), int(word))


def changed(config, key: str, value):
    """``config`` with the dotted field ``key`` (``fusion.num_layers``) set to ``value``."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: tuple(value) if isinstance(value, list) else value})
    return dataclasses.replace(config, **{head: changed(getattr(config, head), rest, value)})


def previous_token(x: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> the state of the token before each one (zeros for the first)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


class SlotReadout(torch.nn.Module):
    """A score read from the fused states of the caption places ``words``, side by side, instead
    of the ITM head over pooled features: the two shape words (slot 1, slot 2; their roles kept
    apart by construction) or every place (the whole caption, in order)."""

    def __init__(self, width: int, words: tuple[int, ...]):
        super().__init__()
        self.words = list(words)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(len(words) * width, width), torch.nn.GELU(), torch.nn.Linear(width, 1))

    def forward(self, text_feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H], mask [B, T] (unused: the places are fixed) -> [B]."""
        return self.mlp(text_feats[:, self.words].flatten(1)).squeeze(1)


class QueryReadout(torch.nn.Module):
    """A score read by ``queries`` learned queries, each attending over the fused text tokens
    (single-head, over the real ones), their results side by side: a readout that can keep words
    apart without being told where they are."""

    def __init__(self, width: int, queries: int):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(queries, width))
        self.key = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(queries * width, width), torch.nn.GELU(), torch.nn.Linear(width, 1))

    def forward(self, text_feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H], mask [B, T] -> [B]."""
        logits = torch.einsum("qh,bth->bqt", self.queries, self.key(text_feats)) / text_feats.shape[-1] ** 0.5
        weights = logits.masked_fill(~mask.bool()[:, None], float("-inf")).softmax(dim=-1)
        return self.mlp(torch.einsum("bqt,bth->bqh", weights, text_feats).flatten(1)).squeeze(1)


def scores(model, image: torch.Tensor, ids: torch.Tensor, shift_text: bool = False, readout=None) -> torch.Tensor:
    """[B] ITM match log-odds (or ``readout`` of the fused text features); ``shift_text`` adds to
    each token of the text prefix the one before it."""
    mask = ids.ne(PAD).long()
    text = model.text_prefix(ids, mask)
    if shift_text:
        text = text + previous_token(text)
    fused = model.fuse(None, ids, mask, image_prefix=image, text_prefix=text)
    if readout is not None:
        return readout(fused.text_feats, mask).float()
    return match_score(model.itm_logits(fused.cls_feats))


def attention_on_objects(maps: list[torch.Tensor], places: torch.Tensor, words: tuple[int, int]) -> torch.Tensor:
    """-log of each shape word's attention mass on its object's cell, averaged over fused layers
    and heads: ``maps`` ``[B, heads, T, cells]`` per layer, ``places [B, 2]``, ``words``: the
    places of the two shape words in the caption."""
    rows = torch.arange(places.shape[0])
    terms = []
    for attention in maps:
        for k, word in enumerate(words):
            mass = attention[rows, :, word, places[:, k]]  # [B, heads]
            terms.append(-torch.log(mass.clamp_min(1e-6)).mean())
    return torch.stack(terms).mean()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fiber-tiny")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--object-scale", type=float, default=1.0, help="object vectors' std against the noise's 1")
    parser.add_argument("--override", action="append", default=[],
                        help="a model config field, e.g. fusion.num_layers=3 or text.num_heads=4 (repeatable)")
    parser.add_argument("--negative", choices=("swap", "replace", "relation"), default="swap",
                        help="swap: the colours trade places (binding); replace: a colour the image lacks (the "
                             "control); relation: \"a S1 left of a S2\" against \"a S2 left of a S1\"")
    parser.add_argument("--slot-readout", action="store_true",
                        help="score from the two shape words' fused states side by side, not the ITM head's pooled ones")
    parser.add_argument("--flat-readout", action="store_true",
                        help="score from every fused text token's state side by side (the whole caption, in order)")
    parser.add_argument("--query-readout", type=int, default=0,
                        help="score from this many learned queries attending over the fused text tokens (0: the ITM head)")
    parser.add_argument("--cell-positions", action="store_true",
                        help="each cell of the image prefix carries a fixed random vector of its own (where it lies)")
    parser.add_argument("--attention-align", type=float, default=0.0,
                        help="weight of a term asking each shape word's text-to-image attention onto its object's cell")
    parser.add_argument("--composite", action="store_true",
                        help="one word for each (colour, shape) pair: binding without composing words")
    parser.add_argument("--shift-text", action="store_true",
                        help="add to each token entering the fused layers the token before it (\"star\" then carries \"red\")")
    parser.add_argument("--bigram-buckets", type=int, default=0,
                        help="the model's text.bigram_buckets: a learned embedding of (previous word, word), hashed "
                             "into this many rows, added to each word's (0: none)")
    parser.add_argument("--bigram-std", type=float, default=1.0,
                        help="the bigram rows' initial std (the model draws them at 1; 0: zeros)")
    parser.add_argument("--shift-embeddings", action="store_true",
                        help="the same on the word embeddings, before the unfused text layers (whose MLPs can then "
                             "make features of the pair)")
    parser.add_argument("--init", help="a trained model directory (RUN/stages/coarse/model): its weights, and "
                        "captions in its tokenizer's words")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-size", type=int, default=1024, help="held-out scenes scored at each evaluation")
    args = parser.parse_args(argv)
    if args.attention_align and args.composite:
        parser.error("--attention-align finds the shape words of the two-word captions: not with --composite")
    torch.manual_seed(args.seed)
    config, overrides = preset_config(args.preset), {}
    for item in args.override:
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
        config = changed(config, key, overrides[key])
    if args.bigram_buckets:
        config = changed(config, "text.bigram_buckets", args.bigram_buckets)
    tokenizer = None
    if args.init:
        if args.override or args.composite or args.bigram_buckets:
            parser.error("--init takes the model as it is: no --override, --composite or --bigram-buckets")
        model, processor = fibervl.load(args.init, task="retrieval")
        model.train()
        tokenizer = processor.tokenizer
    else:
        model = create_model(config).train()
    probe = model.image_prefix(torch.zeros(1, 3, model.config.vision.image_size, model.config.vision.image_size))
    _, grid, _, channels = probe.shape
    scenes = ToyScenes(grid, channels, args.object_scale, seed=args.seed, composite=args.composite, tokenizer=tokenizer)
    scenes.cell_positions = args.cell_positions
    fused_params = [p for n, p in model.named_parameters() if not n.startswith("vision.")
                    or n.startswith(f"vision.stages.{len(model.config.vision.depths) - 1}.")]
    readout = None
    if args.slot_readout or args.flat_readout:
        words = RELATION_SHAPE_WORDS if args.negative == "relation" else SHAPE_WORD_PLACES
        readout = SlotReadout(model.config.hidden_size, tuple(range(CAPTION_LENGTH)) if args.flat_readout else words)
    elif args.query_readout:
        readout = QueryReadout(model.config.hidden_size, args.query_readout)
    if readout is not None:
        fused_params += list(readout.parameters())
    optimizer = torch.optim.AdamW(fused_params, lr=args.lr, weight_decay=0.01)
    if args.bigram_buckets and args.bigram_std != 1.0:
        with torch.no_grad():
            model.text.embeddings.bigram.weight.normal_(std=args.bigram_std)  # std 0: zeros
    if args.shift_embeddings:
        model.text.embeddings.register_forward_hook(lambda _module, _inputs, out: out + previous_token(out))
    recorder = TextToImageAttentionRecorder(model) if args.attention_align else contextlib.nullcontext()
    train_g, eval_g = torch.Generator().manual_seed(args.seed + 1), torch.Generator().manual_seed(12345)
    held_out = scenes.draw(args.eval_size, eval_g, args.negative)
    start = time.perf_counter()
    print(f"{args.init or args.preset} {overrides or ''}, {args.negative} negatives: image prefix {grid}x{grid}x{channels}, lr {args.lr}, "
          f"{args.steps} steps of {args.batch_size}")
    for step in range(1, args.steps + 1):
        image, caption, swapped = scenes.draw(args.batch_size, train_g, args.negative)
        with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
            true_scores = scores(model, image, caption, args.shift_text, readout)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            margin = true_scores - scores(model, image, swapped, args.shift_text, readout)
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        if args.attention_align:
            loss = loss + args.attention_align * attention_on_objects(recorder.maps, scenes.last_places, scenes.last_shape_words)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(fused_params, 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                image, caption, swapped = held_out
                true = scores(model, image, caption, args.shift_text, readout)
                false = scores(model, image, swapped, args.shift_text, readout)
            model.train()
            # a tie (the same score to the bf16 bit) counts as wrong: a model that scores every caption alike
            # shows as a low number with most pairs tied, not as 50 %
            right, ties = (true > false).float().mean(), (true == false).float().mean()
            print(f"step {step}: loss {loss.item():.3f}, held-out pairs ranked right {100 * float(right):.1f} % "
                  f"(tied {100 * float(ties):.1f} %) ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
