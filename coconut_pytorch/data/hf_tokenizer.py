"""A Hugging Face tokenizer behind the interface the curriculum, training and evaluation use (`WordTokenizer`'s):
text in and text out for runs over a pretrained model (`train_toy.py --hf-model`).

    tokenizer = HFTokenizer.from_pretrained('path/to/model')
    question, steps, answer = tokenizer.encode_example(example)

How an example becomes ids (the paper's code writes the question, each step and the answer on lines of their own,
the answer after "### "; here the line breaks are ids and the answer follows the last one): the question as the
tokenizer encodes a text on its own (with its begin-of-sequence token, if it adds one: Llama and Gemma do, GPT-2 and
Qwen2 do not) and a newline's id (the step separator, `sep_id`); each language step encoded alone and a newline's
id; the answer encoded alone and the end-of-sequence id (`eos_id`). The model writes the same ids when it answers,
and `coconut_pytorch.evaluate` reads the answer after the last newline. A step or an answer may therefore not hold a
line break itself.

Only the `tokenizers` library runs after construction (the fast tokenizer's own engine), and the whole tokenizer is
kept as its JSON in a checkpoint (`to_dict`), so a trained run needs neither the original folder nor the network.
Needs the extra: `pip install "coconut-pytorch[hf]"`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

try:
    from tokenizers import Tokenizer
except ImportError as error:     # the optional extra is missing
    raise ImportError('coconut_pytorch.data.hf_tokenizer needs tokenizers: pip install "coconut-pytorch[hf]"') from error

STEP_SEPARATOR = '\n'


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces and trimmed: what exact-match scoring compares."""
    if not isinstance(text, str):
        raise TypeError(f'text must be a str, got {type(text).__name__}')
    return ' '.join(text.split())


class HFTokenizer:
    """A fast Hugging Face tokenizer with `WordTokenizer`'s interface (`encode`, `encode_question`, `encode_example`,
    `decode`, `normalize`, `eos_id`, `sep_id`, `len`, `to_dict` / `from_dict`).

    backend: the `tokenizers.Tokenizer` (a fast tokenizer's `backend_tokenizer`).
    eos_id: the end-of-sequence id (the answer ends with it; generation stops at it).
    question_prefix: ids the tokenizer puts before a text on its own (its begin-of-sequence token, or nothing).
    num_tokens: the model's vocabulary size, where its embedding table has more rows than the tokenizer has ids
        (Qwen2 pads it to a multiple of 128): `len()` is the id space thought targets span, the model's logits.
    """

    def __init__(self, backend: Tokenizer, eos_id: int, question_prefix: Sequence[int] = (), num_tokens: int | None = None):
        if not isinstance(backend, Tokenizer):
            raise TypeError(f'backend must be a tokenizers.Tokenizer, got {type(backend).__name__}')
        size = backend.get_vocab_size(with_added_tokens = True)
        if len(backend.encode('a', add_special_tokens = False).ids) == 0:
            # transformers builds an empty tokenizer from a folder that holds no tokenizer files
            raise ValueError('the tokenizer encodes text as nothing: is its vocabulary missing (no tokenizer.json or vocabulary files)?')
        for name, ids in (('eos_id', [eos_id]), ('question_prefix', list(question_prefix))):
            for index in ids:
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
                    raise ValueError(f'{name} must hold ids in [0, {size}), got {index!r}')
        if num_tokens is not None and (isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < size):
            raise ValueError(f'num_tokens must be an int of at least the tokenizer\'s {size} ids, got {num_tokens!r}')

        self.backend = backend
        self.eos_id = eos_id
        self.question_prefix = tuple(question_prefix)
        self.num_tokens = num_tokens if num_tokens is not None else size
        self.sep_id = self.separator_id(STEP_SEPARATOR)

    def separator_id(self, separator: str) -> int:
        """The one id `separator` adds after a word: sentencepiece tokenizers encode a newline alone as a space
        marker and the newline, so it is measured in context."""
        alone, joined = self.encode('a'), self.encode('a' + separator)
        added = joined[len(alone):]
        if joined[:len(alone)] != alone or len(added) != 1:
            raise ValueError(f'the step separator {separator!r} is not one token of this tokenizer (it encodes as {added})')
        return added[0]

    @classmethod
    def from_transformers(cls, tokenizer, num_tokens: int | None = None) -> HFTokenizer:
        """From a loaded `transformers` tokenizer (a fast one: it has a `backend_tokenizer`)."""
        backend = getattr(tokenizer, 'backend_tokenizer', None)
        if not isinstance(backend, Tokenizer):
            raise TypeError(f'tokenizer must be a fast transformers tokenizer (with a backend_tokenizer), got {type(tokenizer).__name__}')
        if tokenizer.eos_token_id is None:
            raise ValueError('the tokenizer has no end-of-sequence token (eos_token): the answer needs one to end with')
        # what the tokenizer adds around a text on its own: keep what comes before it (its begin-of-sequence token)
        plain = tokenizer('a', add_special_tokens = False)['input_ids']
        special = tokenizer('a', add_special_tokens = True)['input_ids']
        start = next((i for i in range(len(special) - len(plain) + 1) if special[i:i + len(plain)] == plain), 0)
        return cls(backend, tokenizer.eos_token_id, special[:start], num_tokens)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, download: bool = False) -> HFTokenizer:
        """The tokenizer saved with a model: in a local folder, or under a hub name already in the Hugging Face
        cache (fetched only with `download`). Its id space is the model's vocabulary (its config's `vocab_size`)."""
        from transformers import AutoConfig, AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(path), local_files_only = not download)
            vocab_size = getattr(AutoConfig.from_pretrained(os.fspath(path), local_files_only = not download), 'vocab_size', None)
        except (OSError, ValueError) as error:
            hint = '' if download else ' (a hub name not in the local cache is downloaded only when asked: download = True, or --download)'
            raise ValueError(f'no tokenizer and model config could be loaded from {os.fspath(path)!r}{hint}: {str(error).splitlines()[0]}') from None
        size = len(tokenizer)
        if vocab_size is not None and vocab_size < size:
            raise ValueError(f'the tokenizer in {os.fspath(path)!r} has {size} ids but the model embeds only {vocab_size}')
        return cls.from_transformers(tokenizer, max(size, vocab_size or size))

    # vocabulary

    def __len__(self) -> int:
        return self.num_tokens

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HFTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f'HFTokenizer(num_tokens={self.num_tokens}, eos_id={self.eos_id}, sep_id={self.sep_id})'

    def __reduce__(self):
        # pickled by its JSON (data workers lay epochs out with it)
        return (type(self).from_dict, (self.to_dict(),))

    # text <-> ids

    @staticmethod
    def normalize(text: str) -> str:
        return normalize(text)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` alone, without special tokens."""
        if not isinstance(text, str):
            raise TypeError(f'text must be a str, got {type(text).__name__}')
        return self.backend.encode(text, add_special_tokens = False).ids

    def encode_question(self, text: str) -> list[int]:
        """The ids a prompt is: the tokenizer's begin-of-sequence token (if it adds one), the question's ids and the
        step separator (the question's line ends)."""
        return [*self.question_prefix, *self.encode(text), self.sep_id]

    def encode_line(self, text: str, name: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f'{name} must be a str, got {type(text).__name__}')
        if STEP_SEPARATOR in text:
            # its line break would read as the end of a step, and the answer is read after the last one
            raise ValueError(f'{name} {text[:60]!r} holds a line break, which separates steps: write it on one line')
        return self.encode(text)

    def encode_example(self, example: Any) -> tuple[list[int], list[list[int]], list[int]]:
        """(question ids, one id list per step, answer ids ending with the end-of-sequence id)."""
        steps = [self.encode_line(step, 'a step') for step in example.steps]
        return self.encode_question(example.question), steps, self.encode_line(example.answer, 'an answer') + [self.eos_id]

    def decode(self, ids: Sequence[int] | Any, skip_special: bool = True) -> str:
        """Text of `ids` (a list or a 1-d tensor); negative ids (generation's padding) are skipped."""
        if hasattr(ids, 'tolist'):
            if getattr(ids, 'ndim', 1) != 1:
                raise ValueError(f'decode expects a 1-d sequence of ids, got shape {tuple(ids.shape)}')
            ids = ids.tolist()
        kept = []
        for position, index in enumerate(ids):
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f'ids[{position}] must be an int, got {type(index).__name__}')
            # ids past the tokenizer's own (a model's padded rows, which an untrained model can still emit) have no text
            if 0 <= index < self.backend.get_vocab_size(with_added_tokens = True):
                kept.append(index)
        return self.backend.decode(kept, skip_special_tokens = skip_special).strip()

    # serialisation (stored inside checkpoints: plain data, loadable with weights_only)

    def to_dict(self) -> dict[str, Any]:
        return dict(type = 'HFTokenizer', backend = self.backend.to_str(), eos_id = self.eos_id,
                    question_prefix = list(self.question_prefix), num_tokens = self.num_tokens)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> HFTokenizer:
        if not isinstance(state, Mapping) or state.get('type') != 'HFTokenizer' or not isinstance(state.get('backend'), str):
            raise ValueError("tokenizer state must be a dict of type 'HFTokenizer' with its 'backend' JSON (as written by to_dict)")
        try:
            backend = Tokenizer.from_str(state['backend'])
        except Exception as error:      # tokenizers raises its own exception types
            raise ValueError(f'tokenizer state: the backend JSON cannot be read: {str(error).splitlines()[0]}') from None
        if 'eos_id' not in state:
            raise ValueError("tokenizer state has no 'eos_id' (as written by to_dict)")
        return cls(backend, state['eos_id'], state.get('question_prefix', ()), state.get('num_tokens'))
