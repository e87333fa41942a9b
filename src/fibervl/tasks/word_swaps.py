"""Captions made false by moving their own words: ITM negatives that test binding.

A hard negative drawn from another pair (:func:`~fibervl.tasks.objectives.sample_hard_negatives`)
usually differs from the true caption in what it names. A caption whose words are swapped
("a red star left of a blue ring" -> "a blue star left of a red ring", "... right of ...") names
the same things and is false only in how they are bound: which colour goes with which shape,
which object is on which side. A fusion encoder that pools words and regions into a bag cannot
tell the two apart; ITM on such pairs asks it to (the "bag of words" failure of Yuksekgonul et
al., 2023, whose NegCLIP adds such negatives to contrastive training).

Word groups are plain words given by the user (``[[red, blue, green], [left, right]]``). For one
caption, a group whose caption holds two different members swaps two of them (each keeps the
other's place); a group of exactly two words whose caption holds one replaces it by the other (an
antonym pair). A caption with neither gets no negative. A swapped caption can still be true (an
image with a red star, a blue star, a red ring and a blue ring makes "a blue star and a red ring"
true as well); on captions that name every object, as the shapes set's do, that is rare.

Words are matched as single tokens, with and without a leading space (byte-level BPE writes
"Ġred" inside a sentence and "red" at its start); a swap keeps each place's form. Swapping whole
tokens keeps the caption's length and attention mask. An English article just before a changed
word is made to agree with it ("an orange star" -> "a blue star", not "an blue star"): a caption
that is wrong in its grammar only where it was edited would give the swap away without a look at
the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NO_WORD = -1


@dataclass(frozen=True)
class WordSwapTable:
    """Token-level form of the word groups, as plain lookups (a caption is edited word by word).

    ``words``: every word; ``group [W]``: each word's group; ``group_size [G]``; ``token [W]``: the
    token of each word in its spaced and bare form (``-1`` where that form is not one token);
    ``word_of``: token id -> (word, form: 0 spaced, 1 bare); ``articles``: token id -> (form, is
    "an") for the single-token forms of "a" / "an", ``article_token`` the reverse.
    """

    words: tuple[str, ...]
    group: tuple[int, ...]
    group_size: tuple[int, ...]
    token: tuple[tuple[int, int], ...]
    word_of: dict[int, tuple[int, int]]
    articles: dict[int, tuple[int, bool]]
    article_token: dict[tuple[int, bool], int]

    @classmethod
    def from_words(cls, groups, tokenizer) -> "WordSwapTable":
        """``groups``: lists of words; ``tokenizer``: a :class:`~fibervl.data.tokenizer.Tokenizer`.

        Raises ValueError for a group of fewer than two words, a word in two groups, or a word whose
        spaced form is not one token of the vocabulary (it could never be found, and a silently
        empty group would train nothing)."""
        words, group_of, tokens = [], [], []
        for g, raw_group in enumerate(groups):
            group = [str(w).strip() for w in raw_group]
            if len(set(group)) < 2 or any(not w for w in group):
                raise ValueError(f"word swap group {list(raw_group)!r}: needs at least two different, non-empty words")
            for w in group:
                if w in words:
                    raise ValueError(f"word swap groups: {w!r} is in more than one group")
                spaced, bare = _single_token(tokenizer, " " + w), _single_token(tokenizer, w)
                if spaced is None:
                    raise ValueError(f"word swap groups: {w!r} is not one token of the tokenizer "
                                     f"({tokenizer.encode(' ' + w)[0]!r} with a leading space); use words of its vocabulary")
                words.append(w)
                group_of.append(g)
                tokens.append((spaced, NO_WORD if bare is None else bare))
        word_of = {}
        for w, (spaced, bare) in enumerate(tokens):
            word_of[spaced] = (w, 0)
            if bare != NO_WORD:
                word_of[bare] = (w, 1)
        article_token = {}
        for is_an, text in ((False, "a"), (True, "an")):
            for spelling, text_form in ((0, " " + text), (1, text)):
                tok = _single_token(tokenizer, text_form)
                if tok is not None:
                    article_token[(spelling, is_an)] = tok
        return cls(words=tuple(words), group=tuple(group_of),
                   group_size=tuple(group_of.count(g) for g in range(len(groups))), token=tuple(tokens),
                   word_of=word_of, articles={tok: key for key, tok in article_token.items()},
                   article_token=article_token)

    def swap(self, ids: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One swapped caption per row: ``ids`` / ``mask [N, T]`` -> ``(swapped ids [N, T], group [N])``,
        ``group`` the index of the word group swapped, ``-1`` for a row with nothing to swap (it
        comes back unchanged). The choices (which group, which two places) come from ``generator``,
        three uniforms a row, drawn for all ``N`` rows whatever is made: callers that draw for a
        global batch and keep their own rows choose alike.
        """
        n = ids.shape[0]
        draws = torch.rand((n, 3), generator=generator, device=ids.device, dtype=torch.float64).cpu().tolist()
        out = ids.clone()
        swapped_group = torch.full((n,), NO_WORD, dtype=torch.long)
        for r, (row, real) in enumerate(zip(ids.cpu().tolist(), mask.bool().cpu().tolist())):
            member = [self.word_of.get(t, (NO_WORD, 0))[0] if keep else NO_WORD for t, keep in zip(row, real)]
            g, edits = self._edit_row(row, member, draws[r])
            for place, new_token in edits:
                out[r, place] = new_token
            swapped_group[r] = g if edits else NO_WORD
        return out, swapped_group.to(ids.device)

    def _agreeing_articles(self, row: list[int], edits: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """Edits that make an article before an edited place agree with its new word; None when
        the article it needs is no single token (the swap would show in its grammar)."""
        out = []
        for place, new_token in edits:
            article = self.articles.get(row[place - 1]) if place > 0 else None
            if article is None:
                continue
            spelling, is_an = article
            wants_an = self.words[self.word_of[new_token][0]][0] in "aeiou"
            if wants_an == is_an:
                continue
            if (spelling, wants_an) not in self.article_token:
                return None
            out.append((place - 1, self.article_token[(spelling, wants_an)]))
        return out

    def _edit_row(self, row: list[int], member: list[int], draw: list[float]) -> tuple[int, list[tuple[int, int]]]:
        """``(group, [(place, new token)])`` for one caption (``member``: each place's word, or
        ``-1``); no edits where nothing swaps."""
        places_by_group: dict[int, list[int]] = {}
        for place, w in enumerate(member):
            if w != NO_WORD:
                places_by_group.setdefault(self.group[w], []).append(place)
        options = []
        for g, places in places_by_group.items():
            present = {member[p] for p in places}
            if len(present) >= 2 or self.group_size[g] == 2:
                options.append(g)
        # The drawn group first; should its words lack the spelling a place needs (a bare form that
        # is no single token), the next group that can be spelled.
        first = int(draw[0] * len(options)) if options else 0
        for g in options[first:] + options[:first]:
            edits = self._group_edits(row, member, draw, places_by_group[g], g)
            articles = self._agreeing_articles(row, edits) if all(t != NO_WORD for _, t in edits) else None
            if articles is not None:
                return g, edits + articles
        return NO_WORD, []

    def _group_edits(self, row, member, draw, places, g) -> list[tuple[int, int]]:
        """The edits of one group's swap (or antonym replacement); ``NO_WORD`` tokens where a word
        lacks the spelling its new place needs."""

        def respelled(place: int, word: int) -> int:  # ``word`` in the form the caption has at ``place``
            return self.token[word][self.word_of[row[place]][1]]

        if len({member[p] for p in places}) >= 2:
            a = places[int(draw[1] * len(places))]
            others = [p for p in places if member[p] != member[a]]
            b = others[int(draw[2] * len(others))]
            return [(a, respelled(a, member[b])), (b, respelled(b, member[a]))]
        # an antonym pair with one of its words present: every occurrence becomes the other
        word = member[places[0]]
        other = next(w for w in range(len(self.words)) if self.group[w] == g and w != word)
        return [(p, respelled(p, other)) for p in places]


def _single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text)[0]
    special = {tokenizer.token_to_id(t) for t in ("<s>", "</s>", "[CLS]", "[SEP]")} - {None}
    core = [i for i in ids if i not in special]
    return core[0] if len(core) == 1 else None


__all__ = ["WordSwapTable"]
