"""A Hugging Face tokenizer behind the interface the curriculum, training and evaluation use (`WordTokenizer`'s):
text in and text out for runs over a pretrained model (`train_toy.py --hf-model`).

    tokenizer = HFTokenizer.from_pretrained('path/to/model')
    question, steps, answer = tokenizer.encode_example(example)

How an example becomes ids, as in the paper's code: the question as the tokenizer encodes a text on its own (with its
begin-of-sequence token, if it adds one: Llama and Gemma do, GPT-2 and Qwen2 do not), each language step and the
answer encoded alone, a newline's id after each step (the step separator, `sep_id`) and the end-of-sequence id after
the answer (`eos_id`). The model writes the same ids when it answers, and `coconut_pytorch.evaluate` reads the
answer after the last newline.

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
    def from_pretrained(cls, path: str | os.PathLike, download: bool = False, num_tokens: int | None = None) -> HFTokenizer:
        """The tokenizer saved in a local folder (a hub name is fetched only with `download`)."""
        from transformers import AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(path), local_files_only = not download)
        except (OSError, ValueError) as error:
            hint = '' if download else ' (nothing is downloaded unless asked to)'
            raise ValueError(f'no tokenizer could be loaded from {os.fspath(path)!r}{hint}: {str(error).splitlines()[0]}') from None
        return cls.from_transformers(tokenizer, num_tokens)

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
        """The ids a prompt is: the tokenizer's begin-of-sequence token (if it adds one) and the question's ids."""
        return [*self.question_prefix, *self.encode(text)]

    def encode_example(self, example: Any) -> tuple[list[int], list[list[int]], list[int]]:
        """(question ids, one id list per step, answer ids ending with the end-of-sequence id)."""
        return self.encode_question(example.question), [self.encode(step) for step in example.steps], self.encode(example.answer) + [self.eos_id]

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
            if index >= self.num_tokens:
                raise ValueError(f'ids[{position}] = {index} is out of range for a vocabulary of {self.num_tokens}')
            # ids past the tokenizer's own (the model's padded rows) have no text
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
        return cls(backend, state['eos_id'], state.get('question_prefix', ()), state.get('num_tokens'))
