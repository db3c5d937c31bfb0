"""A run's examples and tokenizer: the first training set (generated from the task, or read from `train_file`), the
held-out set, and the tokenizer their ids come from. Later training sets of `fresh_data` runs are `fresh_sets`'.
"""

from __future__ import annotations

import random
from typing import Iterator

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.loaders import load_examples
from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.data.tokenizer import Tokenizer, WordTokenizer
from coconut_pytorch.evaluate import encode_questions
from coconut_pytorch.training.config import TrainConfig
from coconut_pytorch.training.fresh_sets import generate_excluding, held_out_seed


def example_texts(examples: list[Example]) -> Iterator[str]:
    """Every question, step and answer: the texts a file-trained run takes its vocabulary from."""
    for example in examples:
        yield example.question
        yield from example.steps
        yield example.answer


def held_out_questions(config: TrainConfig, eval_set: list[Example]) -> frozenset[str]:
    """The questions generated training sets leave out (none when `exclude_held_out` is off)."""
    return frozenset(example.question for example in eval_set) if config.exclude_held_out else frozenset()


def pretrained_tokenizer(config: TrainConfig) -> Tokenizer:
    """The tokenizer saved with `config.hf_model`, its id space the model's vocabulary."""
    from coconut_pytorch.data.hf_tokenizer import HFTokenizer
    try:
        return HFTokenizer.from_pretrained(config.hf_model, download = config.download)
    except ValueError as error:
        raise ValueError(f'hf_model: {error}') from None


def load_data(config: TrainConfig, tokenizer: Tokenizer | None = None) -> tuple[list[Example], list[Example], Tokenizer, int]:
    """(first training set, held-out set, tokenizer, most steps of an example) for a run.

    From the task's generator, or from `train_file`. With `hf_model`, the pretrained model's tokenizer; otherwise a
    word tokenizer of the task's vocabulary, or of every word of the training and held-out files (a held-out word
    never seen in training keeps an untrained embedding, rather than failing to encode). A given `tokenizer` (a
    resumed run's, from its checkpoint) is used instead of either.
    """
    pretrained = tokenizer if tokenizer is not None else pretrained_tokenizer(config) if config.hf_model is not None else None
    eval_set = load_examples(config.eval_file) if config.eval_file is not None else None
    if eval_set is not None and len(eval_set) == 0:
        raise ValueError(f'eval_file {config.eval_file} holds no examples')

    if config.train_file is None:
        task = get_task(config.task, **config.task_kwargs)
        tokenizer = pretrained if pretrained is not None else WordTokenizer(task.vocabulary())
        if eval_set is not None:
            encode_questions(eval_set, tokenizer, config.eval_file)  # a word outside the task's vocabulary: fail now, not after training
        if eval_set is None:
            eval_set = task.generate(config.eval_size, seed = held_out_seed(config.seed))
        train_set = generate_excluding(task, config.train_size, config.seed, held_out_questions(config, eval_set))
        return train_set, eval_set, tokenizer, task.num_steps_range[1]

    train_set = load_examples(config.train_file)
    if len(train_set) == 0:
        raise ValueError(f'train_file {config.train_file} holds no examples')
    if eval_set is None:
        if len(train_set) <= config.eval_size:
            raise ValueError(f'train_file {config.train_file} has {len(train_set)} examples: too few to split off '
                             f'eval_size={config.eval_size} held-out ones (give eval_file, or a smaller eval_size)')
        order = list(range(len(train_set)))
        random.Random(config.seed).shuffle(order)
        eval_set = [train_set[i] for i in order[:config.eval_size]]
        train_set = [train_set[i] for i in sorted(order[config.eval_size:])]

    for source, examples in ((config.train_file, train_set), (config.eval_file or config.train_file, eval_set)):
        for index, example in enumerate(examples):
            if not example.question.strip():
                raise ValueError(f'{source}: example {index} has an empty question')
    tokenizer = pretrained if pretrained is not None else WordTokenizer.from_texts(example_texts(train_set + eval_set))
    return train_set, eval_set, tokenizer, max(len(example.steps) for example in train_set)
