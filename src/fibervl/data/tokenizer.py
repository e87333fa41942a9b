"""RoBERTa's byte-level BPE tokenizer, loaded from local files only (no hub).

Conventions follow roberta-base: ``<s>`` (bos, id 0), ``<pad>`` (1), ``</s>`` (eos, 2),
``<unk>`` (3) and ``<mask>`` (50264 in roberta-base; the last id of a vocabulary trained here).
A sequence is encoded as ``<s> tokens </s>``; no space is prepended to the first word
(``add_prefix_space=False``), exactly as roberta-base's tokenizer does.

Special tokens are added by this module, not by the ``tokenizers`` post-processor, so the
same code gives the same result for a ``tokenizer.json`` and for ``vocab.json`` +
``merges.txt``, and truncation always keeps ``</s>`` as the last token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS_TOKEN = "<s>"
PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
MASK_TOKEN = "<mask>"
# Ids 0..3 in this order, as in roberta-base; <mask> is appended last.
LEADING_SPECIAL_TOKENS = (BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)


class TokenizerFileError(FileNotFoundError):
    """The tokenizer files are missing or unreadable; the message names the path."""


@dataclass
class TokenBatch:
    """A padded batch of encoded texts.

    input_ids:      [B, L] int64, ``<s> ... </s>`` then ``<pad>``.
    attention_mask: [B, L] int64, 1 for real tokens (specials included), 0 for padding.
    offsets:        B lists of L (start, end) character spans into the original text;
                    special and padding tokens get (0, 0).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: list[list[tuple[int, int]]]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class Tokenizer:
    """Byte-level BPE with RoBERTa's special tokens, padding, truncation and char offsets."""

    def __init__(self, backend: _HFTokenizer, source: str = "<memory>"):
        # A tokenizer.json may carry its own padding / truncation settings; this class pads
        # and truncates itself, so switch them off to keep results independent of the file.
        backend.no_padding()
        backend.no_truncation()
        self._tok = backend
        self.source = source
        ids = {}
        for token in (*LEADING_SPECIAL_TOKENS, MASK_TOKEN):
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise ValueError(f"tokenizer {source}: special token {token!r} is not in the vocabulary")
            ids[token] = token_id
        self.bos_token_id: int = ids[BOS_TOKEN]
        self.pad_token_id: int = ids[PAD_TOKEN]
        self.eos_token_id: int = ids[EOS_TOKEN]
        self.unk_token_id: int = ids[UNK_TOKEN]
        self.mask_token_id: int = ids[MASK_TOKEN]
        self.special_token_ids = frozenset(ids.values())

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        """Load from a directory with ``tokenizer.json`` (preferred) or ``vocab.json`` +
        ``merges.txt``, or from a direct path to a ``tokenizer.json`` file."""
        path = Path(path)
        if path.is_file():
            return cls._from_tokenizer_json(path)
        if not path.is_dir():
            raise TokenizerFileError(
                f"tokenizer path {path} does not exist: expected a directory holding tokenizer.json "
                "or vocab.json + merges.txt, or the path of a tokenizer.json file"
            )
        if (path / "tokenizer.json").is_file():
            return cls._from_tokenizer_json(path / "tokenizer.json")
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return cls.from_vocab_merges(vocab, merges)
        present = sorted(p.name for p in path.iterdir())[:10]
        raise TokenizerFileError(
            f"no tokenizer files in {path}: expected tokenizer.json, or vocab.json and merges.txt "
            f"(found: {present or 'nothing'})"
        )

    @classmethod
    def _from_tokenizer_json(cls, file: Path) -> "Tokenizer":
        try:
            backend = _HFTokenizer.from_file(str(file))
        except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
            raise TokenizerFileError(f"cannot read tokenizer file {file}: {exc}") from exc
        return cls(backend, source=str(file))

    @classmethod
    def from_vocab_merges(cls, vocab_file: str | Path, merges_file: str | Path) -> "Tokenizer":
        """Build roberta-base's pipeline from its two files (GPT-2 style vocab and merges)."""
        vocab_file, merges_file = Path(vocab_file), Path(merges_file)
        try:
            with open(vocab_file, encoding="utf-8") as f:
                vocab = json.load(f)
            merges = _read_merges(merges_file)
        except (OSError, ValueError) as exc:
            raise TokenizerFileError(f"cannot read tokenizer files {vocab_file} / {merges_file}: {exc}") from exc
        backend = _HFTokenizer(models.BPE(vocab, merges, unk_token=None))
        _set_bytelevel_pipeline(backend)
        # Register the specials so that they are never split and decode() can skip them.
        backend.add_special_tokens([t for t in (*LEADING_SPECIAL_TOKENS, MASK_TOKEN) if t in vocab])
        return cls(backend, source=str(vocab_file.parent))

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizer.json`` (loadable with :meth:`from_pretrained`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / "tokenizer.json"
        self._tok.save(str(out))
        return out

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (50265 for roberta-base)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, max_length: int | None = None) -> tuple[list[int], list[tuple[int, int]]]:
        """One text -> (ids, offsets) with ``<s>``/``</s>``; truncated to ``max_length`` tokens
        (``</s>`` kept last). Offsets are character spans into ``text``; specials get (0, 0)."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str to tokenize, got {type(text).__name__}")
        enc = self._tok.encode(text, add_special_tokens=False)
        return self._wrap(text, enc.ids, enc.offsets, max_length)

    def _wrap(self, text, ids, offsets, max_length):
        ids, offsets = list(ids), [_trim(text, s, e) for s, e in offsets]
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"max_length must be >= 2 to hold <s> and </s>, got {max_length}")
            ids, offsets = ids[: max_length - 2], offsets[: max_length - 2]
        return [self.bos_token_id, *ids, self.eos_token_id], [(0, 0), *offsets, (0, 0)]

    def __call__(
        self,
        texts: str | Sequence[str],
        max_length: int | None = None,
        padding: str | int = "longest",
    ) -> TokenBatch:
        """Encode a batch.

        max_length: truncate every text to this many tokens (specials included).
        padding:    ``"longest"`` pads to the longest text of the batch, ``"max_length"`` pads
                    to ``max_length``, an int pads to that length (must be >= the longest).
        """
        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} of the batch is a {type(t).__name__}, not a str")
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        wrapped = [self._wrap(t, e.ids, e.offsets, max_length) for t, e in zip(texts, encs)]
        longest = max((len(ids) for ids, _ in wrapped), default=0)
        if padding == "longest":
            length = longest
        elif padding == "max_length":
            if max_length is None:
                raise ValueError('padding="max_length" needs max_length')
            length = max_length
        elif isinstance(padding, int) and not isinstance(padding, bool):
            if padding < longest:
                raise ValueError(f"padding length {padding} is shorter than the longest text ({longest} tokens)")
            length = padding
        else:
            raise ValueError(f'padding must be "longest", "max_length" or an int, got {padding!r}')
        input_ids = torch.full((len(wrapped), length), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(wrapped), length), dtype=torch.int64)
        all_offsets = []
        for row, (ids, offsets) in enumerate(wrapped):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            attention_mask[row, : len(ids)] = 1
            all_offsets.append(offsets + [(0, 0)] * (length - len(ids)))
        return TokenBatch(input_ids, attention_mask, all_offsets)

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Ids -> text; special tokens (and padding) are dropped unless asked otherwise."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_token_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def batch_decode(self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in ids]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    # roberta-base's post-processor trims offsets (trim_offsets=True): "Ġgreen" covers
    # "green", not " green". We add specials ourselves, so we trim ourselves too.
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path} line {line_no}: a merge must be two symbols separated by one space, got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


def _set_bytelevel_pipeline(backend: _HFTokenizer) -> None:
    # roberta-base: ByteLevel pre-tokenizer without a prefix space (offsets are trimmed of
    # the leading space by Tokenizer._wrap, as roberta's post-processor does).
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    backend.decoder = decoders.ByteLevel()


def train_bytelevel_bpe(texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` with RoBERTa's special tokens.

    ``<s> <pad> </s> <unk>`` get ids 0..3 and ``<mask>`` the last id, so a model built for a
    vocabulary of ``tokenizer.vocab_size`` has the same layout as roberta-base.
    ``vocab_size`` counts the 256 byte symbols and the 5 specials.
    """
    backend = _HFTokenizer(models.BPE(unk_token=None))
    _set_bytelevel_pipeline(backend)
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - 1, 261),  # leave room for <mask>, appended below
        min_frequency=min_frequency,
        special_tokens=list(LEADING_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_special_tokens([MASK_TOKEN])
    return Tokenizer(backend, source="<trained>")


def train_shapes_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """The small tokenizer of the embedded shapes data set (texts are short and regular)."""
    return train_bytelevel_bpe(texts, vocab_size=vocab_size, min_frequency=2)
