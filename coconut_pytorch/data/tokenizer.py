"""Word-level tokenizer for the synthetic reasoning tasks (ProsQA, iCoT multiplication, toys).

The tasks have small closed vocabularies, so one id per word keeps sequences short and
makes every id human-readable when debugging continuous thoughts.

Splitting rule: whitespace separates words; each of `. , ? ! ( ) : ; + * =` is a token of
its own; a run of `#` (iCoT's `####`) is one token. Digits are left as written.

Canonical text (`normalize`, and what `decode` returns): tokens joined by single spaces,
except that `. , ? ! : ;` attach to the word before them. So "Tom is a  lempus ." and
"Tom is a lempus." both normalise to "Tom is a lempus.", while iCoT's
"0 1 3 ( 8 5 7 ) + 2" is already canonical.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

PAD, EOS, SEP = "<pad>", "<eos>", "<sep>"
SPECIAL_TOKENS = (PAD, EOS, SEP)

# a run of '#', or one punctuation char, or a run of anything else that is not space/punctuation
_TOKEN_RE = re.compile(r"#+|[.,?!():;+*=]|[^\s.,?!():;+*=#]+")

# punctuation written without a space before it in canonical text
_ATTACH_LEFT = frozenset(".,?!:;")


def exists(value: Any) -> bool:
    return value is not None


def default(value: Any, fallback: Any) -> Any:
    return value if exists(value) else fallback


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def split_words(text: str) -> list[str]:
    """Split text into word tokens (see the module docstring for the rule)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN_RE.findall(text)


def join_words(words: Iterable[str]) -> str:
    """Inverse of `split_words` up to whitespace: the canonical text for a word list."""
    out: list[str] = []
    for word in words:
        if out and word in _ATTACH_LEFT:
            out[-1] += word
        else:
            out.append(word)
    return " ".join(out)


def normalize(text: str) -> str:
    """Whitespace-normalised canonical form of `text`, used for exact-match scoring."""
    return join_words(split_words(text))


class Tokenizer(Protocol):
    """What the curriculum, training and evaluation use of a tokenizer: `WordTokenizer` (from-scratch runs) and
    `coconut_pytorch.data.hf_tokenizer.HFTokenizer` (pretrained models) offer it."""

    eos_id: int     # ends every answer; generation stops at it
    sep_id: int     # follows every language step

    def __len__(self) -> int: ...                                   # the id space: the model's vocabulary size
    def encode(self, text: str) -> list[int]: ...
    def encode_question(self, text: str) -> list[int]: ...           # a prompt's ids
    def encode_example(self, example: Any) -> tuple[list[int], list[list[int]], list[int]]: ...
    def decode(self, ids: Sequence[int] | Any, skip_special: bool = True) -> str: ...
    def normalize(self, text: str) -> str: ...                       # the form exact-match scoring compares
    def to_dict(self) -> dict[str, Any]: ...                         # plain data, for a checkpoint


class WordTokenizer:
    """Closed-vocabulary word tokenizer. Ids: <pad>=0, <eos>=1, <sep>=2, then the words sorted."""

    def __init__(self, words: Iterable[str]):
        if isinstance(words, str):
            raise TypeError("words must be an iterable of words, not a single str")

        unique = set()
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"every vocabulary word must be a str, got {type(word).__name__}")
            if word in SPECIAL_TOKENS:
                continue
            # a word that would never come out of split_words could never be encoded
            if split_words(word) != [word]:
                raise ValueError(f"vocabulary word {word!r} is not a single token under the splitting rule")
            unique.add(word)

        self._vocab = [*SPECIAL_TOKENS, *sorted(unique)]
        self._word_to_id = {word: index for index, word in enumerate(self._vocab)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "WordTokenizer":
        """Build the vocabulary from every word that occurs in `texts`."""
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of str, not a single str")
        words: set[str] = set()
        for text in texts:
            words.update(split_words(text))
        return cls(words)

    # vocabulary

    def __len__(self) -> int:
        return len(self._vocab)

    def __contains__(self, word: object) -> bool:
        return word in self._word_to_id

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={len(self)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and self._vocab == other._vocab

    @property
    def vocab(self) -> list[str]:
        return list(self._vocab)

    @property
    def pad_id(self) -> int:
        return self._word_to_id[PAD]

    @property
    def eos_id(self) -> int:
        return self._word_to_id[EOS]

    @property
    def sep_id(self) -> int:
        return self._word_to_id[SEP]

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self._word_to_id[token] for token in SPECIAL_TOKENS)

    # text <-> ids

    @staticmethod
    def normalize(text: str) -> str:
        """Canonical form of `text`; `decode(encode(text)) == normalize(text)`."""
        return normalize(text)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of `text`. Raises ValueError naming the first unknown word."""
        ids = []
        for word in split_words(text):
            index = self._word_to_id.get(word)
            if not exists(index):
                raise ValueError(f"unknown word {word!r} in text {_preview(text)}")
            if index < len(SPECIAL_TOKENS):
                # spelled in the data it would act as padding, an end or a step break, not as a word
                raise ValueError(f"reserved token {word!r} in text {_preview(text)}: data may not spell {', '.join(SPECIAL_TOKENS)}")
            ids.append(index)
        return ids

    def decode(self, ids: Sequence[int] | Any, skip_special: bool = True) -> str:
        """Canonical text for `ids` (a list or a 1-d tensor/array).

        Negative ids (the model's -1 padding) are always skipped; <pad>/<eos>/<sep> are
        skipped when `skip_special` is True.
        """
        if hasattr(ids, "tolist"):  # torch tensor or numpy array, without importing either
            if getattr(ids, "ndim", 1) != 1:
                raise ValueError(f"decode expects a 1-d sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()

        special = self.special_ids
        words = []
        for position, index in enumerate(ids):
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"ids[{position}] must be an int, got {type(index).__name__}")
            if index < 0:
                continue
            if index >= len(self._vocab):
                raise ValueError(f"ids[{position}] = {index} is out of range for a vocabulary of {len(self)}")
            if skip_special and index in special:
                continue
            words.append(self._vocab[index])
        return join_words(words)

    def encode_question(self, text: str) -> list[int]:
        """The ids a prompt is: here the question's words (a pretrained model's tokenizer may put a
        begin-of-sequence token first)."""
        return self.encode(text)

    def encode_example(self, example: Any) -> tuple[list[int], list[list[int]], list[int]]:
        """(question ids, one id list per step, answer ids ending with <eos>)."""
        question_ids = self.encode_question(example.question)
        step_ids = [self.encode(step) for step in example.steps]
        answer_ids = self.encode(example.answer) + [self.eos_id]
        return question_ids, step_ids, answer_ids

    # serialisation (stored inside checkpoints)

    def to_dict(self) -> dict[str, Any]:
        return dict(type="WordTokenizer", vocab=list(self._vocab))

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "WordTokenizer":
        if not isinstance(state, Mapping) or "vocab" not in state:
            raise ValueError("tokenizer state must be a dict with a 'vocab' list (as written by to_dict)")

        vocab = state["vocab"]
        if not isinstance(vocab, list) or tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"tokenizer state 'vocab' must be a list starting with {list(SPECIAL_TOKENS)}")

        tokenizer = cls(vocab[len(SPECIAL_TOKENS):])
        # ids are baked into trained weights: refuse a vocab whose order would change
        if tokenizer.vocab != vocab:
            raise ValueError("tokenizer state 'vocab' is not in canonical order (specials, then sorted unique words)")
        return tokenizer


def tokenizer_from_dict(state: Mapping[str, Any]):
    """The tokenizer a checkpoint holds: a `WordTokenizer`, or a pretrained model's `HFTokenizer` (which needs the
    `[hf]` extra)."""
    if isinstance(state, Mapping) and state.get("type") == "HFTokenizer":
        from coconut_pytorch.data.hf_tokenizer import HFTokenizer
        return HFTokenizer.from_dict(state)
    return WordTokenizer.from_dict(state)


def target_lengths(examples: Iterable[Any], tokenizer: WordTokenizer) -> Iterator[tuple[int, int]]:
    """(tokens of the language steps, each with its separator; tokens of the answer) of each example."""
    for example in examples:
        _, steps, answer = tokenizer.encode_example(example)
        yield sum(len(step) + 1 for step in steps), len(answer)


def max_target_length(examples: Iterable[Any], tokenizer: WordTokenizer) -> int:
    """Tokens of the longest full language target (every step and its separator, then the answer): a cap for generation."""
    return max((steps + answer for steps, answer in target_lengths(examples, tokenizer)), default = 0)
