"""How a training set becomes an epoch's batches at a stage of the curriculum (`schedule.Curriculum`).

A target is the remaining steps, each followed by <sep>, then the answer and <eos>. Prompts are the question ids.
The number of thoughts travels per example, so a batch may mix stages (`uniform_prob`) and stays exact.

Each group of c continuous thoughts replaces a piece of language (a step, or r tokens with `tokens_per_stage`, whose
compression stages put c' thoughts in place of each r tokens: `Curriculum.compress_thoughts`);
`StagedExample.thought_words` keeps, per thought, the token ids it replaced (its c-th of the piece), so that a loss
can align the thought with that language (`Coconut(thought_loss_weight)`, `TrainConfig.thought_loss`).

`StagedExample.halt_after` is the example's own thought count at its stage, without `pad_latent_to_max`'s padding:
the thoughts that replaced its language, after which it should stop thinking (`Coconut(halt_loss_weight)`,
`TrainConfig.halt_loss`). The model is built with one latent per step, so the halting head decides after every
thought, and generation's `max_reasoning_steps` counts thoughts too.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tokenizer import Tokenizer
from coconut_pytorch.inputs import PAD_ID
from coconut_pytorch.training.schedule import ALIGNABLE_METHODS, Curriculum


class StagedExample(NamedTuple):
    prompt: Tensor      # (n,) question ids
    target: Tensor      # (m,) remaining steps with <sep> after each, then answer and <eos>
    num_thoughts: int
    thought_words: tuple[tuple[int, ...], ...] = ()     # per thought, the ids of the language it replaced (its part
                                                        # of the piece its group replaced; may be empty: a padded
                                                        # thought replaced nothing); () for methods without
                                                        # continuous thoughts
    halt_after: int = 0     # the thoughts that replaced its language: `num_thoughts` without pad_latent_to_max's padding


def words_per_thought(pieces: Sequence[Sequence[int]], num_thoughts: int, thoughts_per_piece: int) -> tuple[tuple[int, ...], ...]:
    """The c thoughts of group j replaced piece j, in order: thought k of the group gets the k-th of c contiguous,
    near-equal parts of it (the whole piece when c = 1), so later thoughts of a group answer for later words.
    Thoughts past the last piece (`pad_latent_to_max`), or past the words of a piece shorter than c, replaced nothing."""
    c, words = thoughts_per_piece, []
    for i in range(num_thoughts):
        group, k = divmod(i, c)
        piece = pieces[group] if group < len(pieces) else ()
        words.append(tuple(piece[len(piece) * k // c:len(piece) * (k + 1) // c]))
    return tuple(words)


@lru_cache(maxsize = 16)
def unpadded(curriculum: Curriculum) -> Curriculum:
    """The curriculum without `pad_latent_to_max`: each example gets the thoughts its own language asks for."""
    return replace(curriculum, pad_latent_to_max = False) if curriculum.pad_latent_to_max else curriculum


def encode_at_stage(example: Example, tokenizer: Tokenizer, curriculum: Curriculum, stage: int, extra_removed: int = 0) -> StagedExample:
    """One example laid out for a stage of a method (`extra_removed`: removal smoothing's offset, in tokens)."""
    question, steps, answer = tokenizer.encode_example(example)
    c, alignable = curriculum.thoughts_per_step, curriculum.method in ALIGNABLE_METHODS

    if curriculum.tokens_per_stage is not None and curriculum.uses_curriculum:
        r = curriculum.tokens_per_stage
        language = [token for step in steps for token in step + [tokenizer.sep_id]]
        removed, thoughts = curriculum.token_layout(stage, len(language), extra_removed)
        target = language[removed:] + answer
        # c thoughts a group of r tokens, or at a compression stage (`Curriculum.compress_thoughts`) c'
        pieces = [language[start:start + r] for start in range(0, len(language), r)]
        words = words_per_thought(pieces, thoughts, curriculum.thoughts_per_group(stage)) if alignable else ()
        halt_after = unpadded(curriculum).token_layout(stage, len(language), extra_removed)[1]
        return StagedExample(torch.tensor(question), torch.tensor(target), thoughts, words, halt_after)

    removed, thoughts = curriculum.layout(stage, len(steps))
    target = []
    for step in steps[removed:]:
        target.extend(step + [tokenizer.sep_id])
    target.extend(answer)

    words = words_per_thought(steps, thoughts, c) if alignable else ()
    halt_after = unpadded(curriculum).layout(stage, len(steps))[1]
    return StagedExample(torch.tensor(question), torch.tensor(target), thoughts, words, halt_after)


def staged_examples(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    curriculum: Curriculum,
    stage: int,
    rng: random.Random | None = None
) -> list[StagedExample]:
    """Lay out examples at `stage`; with `uniform_prob`, some at a random stage instead, and with
    `removal_smoothing`, some with extra tokens removed (both drawn from `rng`)."""
    rng = rng if rng is not None else random.Random(0)
    mix = curriculum.uniform_prob > 0 and curriculum.uses_curriculum
    smooth = curriculum.removal_smoothing is not None and curriculum.uses_curriculum

    staged = []
    for example in examples:
        example_stage, extra_removed = stage, 0
        if mix and rng.random() < curriculum.uniform_prob:
            example_stage = rng.randint(0, curriculum.final_stage)
        if smooth:
            # P(o) = (1 - q) q^o with q = exp(-lambda): o = floor(-ln(u) / lambda) for u uniform in (0, 1]
            extra_removed = int(-math.log(1. - rng.random()) / curriculum.removal_smoothing)
        staged.append(encode_at_stage(example, tokenizer, curriculum, example_stage, extra_removed))
    return staged


class Batch(NamedTuple):
    prompt: Tensor          # (b, n) -1 padded
    target: Tensor          # (b, m) -1 padded
    num_thoughts: Tensor    # (b,)
    thought_targets: Tensor | None = None   # (b, most thoughts, V) bool: the words each thought replaced
    halt_after: Tensor | None = None        # (b,) the thoughts after which each row should stop (`StagedExample.halt_after`)
    thought_tokens: Tensor | None = None    # (b, most thoughts, m) the first m ids each thought replaced, in order, -1 padded

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) if t is not None else None for t in self))


def thought_targets(staged: Sequence[StagedExample], num_tokens: int) -> Tensor:
    """(b, most thoughts, V) bool: True at the words each thought replaced; all False for a thought that replaced
    nothing and in the slots past a row's own thoughts."""
    most = max((s.num_thoughts for s in staged), default = 0)
    # one scatter for the whole batch: indexing per thought cost about 1 ms an example at 80 thoughts
    rows, slots, words = [], [], []
    for row, example in enumerate(staged):
        if len(example.thought_words) != example.num_thoughts:
            raise ValueError(f'example {row} has {example.num_thoughts} thoughts but words for {len(example.thought_words)}: '
                             f'thought targets need a method with thought slots to align ({", ".join(ALIGNABLE_METHODS)})')
        for slot, slot_words in enumerate(example.thought_words):
            rows += [row] * len(slot_words)
            slots += [slot] * len(slot_words)
            words += slot_words
    targets = torch.zeros((len(staged), most, num_tokens), dtype = torch.bool)
    targets[torch.tensor(rows, dtype = torch.long), torch.tensor(slots, dtype = torch.long), torch.tensor(words, dtype = torch.long)] = True
    return targets


def thought_tokens(staged: Sequence[StagedExample], width: int) -> Tensor:
    """(b, most thoughts, width) long: each thought's first `width` replaced ids in their order, -1 after them, for a
    thought that replaced nothing and in the slots past a row's own thoughts."""
    most = max((s.num_thoughts for s in staged), default = 0)
    tokens = torch.full((len(staged), most, width), PAD_ID, dtype = torch.long)
    for row, example in enumerate(staged):
        if len(example.thought_words) != example.num_thoughts:
            raise ValueError(f'example {row} has {example.num_thoughts} thoughts but words for {len(example.thought_words)}: '
                             f'ordered thought targets need a method with thought slots to align ({", ".join(ALIGNABLE_METHODS)})')
        for slot, words in enumerate(example.thought_words):
            if words:
                tokens[row, slot, :len(words[:width])] = torch.tensor(words[:width])
    return tokens


def collate(staged: Sequence[StagedExample], num_tokens: int | None = None, with_halt_after: bool = False, token_width: int = 0) -> Batch:
    """Pad into a batch; with `num_tokens` (the vocabulary size), also the thoughts' word targets; with
    `with_halt_after`, each row's halting target; with `token_width` m > 0, each thought's first m replaced ids in order."""
    prompt = pad_sequence([s.prompt for s in staged], batch_first = True, padding_value = PAD_ID)
    target = pad_sequence([s.target for s in staged], batch_first = True, padding_value = PAD_ID)
    num_thoughts = torch.tensor([s.num_thoughts for s in staged])
    targets = thought_targets(staged, num_tokens) if num_tokens is not None else None
    halt_after = torch.tensor([s.halt_after for s in staged]) if with_halt_after else None
    tokens = thought_tokens(staged, token_width) if token_width > 0 else None
    return Batch(prompt, target, num_thoughts, targets, halt_after, tokens)


@dataclass(frozen = True)
class EpochLayout:
    """How a training set becomes an epoch's batches: shuffled by (seed, epoch), laid out at the epoch's stage (with
    `uniform_prob` mixing drawn from the same generator), cut into batches. Deterministic and picklable, so a worker
    process can lay out the next epoch while this one trains, and a resumed run gets the batches it would have."""

    tokenizer: Tokenizer
    curriculum: Curriculum
    batch_size: int
    seed: int
    with_thought_targets: bool = False      # batches carry `thought_targets` (for `TrainConfig.thought_loss`)
    with_halt_after: bool = False           # batches carry `halt_after` (for `TrainConfig.halt_loss`)
    token_width: int = 0                    # batches carry `thought_tokens` this wide (for `TrainConfig.thought_token_loss`)

    def batches(self, examples: Sequence[Example], epoch: int) -> list[Batch]:
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(examples)))
        rng.shuffle(order)
        staged = staged_examples([examples[i] for i in order], self.tokenizer, self.curriculum, self.curriculum.stage_at_epoch(epoch), rng)
        num_tokens = len(self.tokenizer) if self.with_thought_targets else None
        return [collate(staged[i:i + self.batch_size], num_tokens, self.with_halt_after, self.token_width)
                for i in range(0, len(staged), self.batch_size)]
