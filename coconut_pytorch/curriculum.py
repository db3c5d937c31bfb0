"""The paper's multi-stage curriculum, its baselines and ablations, as training examples.

Stage 0 is full language chain-of-thought: question -> steps -> answer, loss on steps and answer.
Stage k replaces the first k language steps by k x c continuous thoughts (c = thoughts per step); the remaining
steps and the answer stay in language, with loss. Every method below is the same Coconut model fed differently:

    coconut                 the curriculum, continuous thoughts
    coconut_no_curriculum   the last stage from the first epoch
    no_thoughts             the curriculum removes steps but puts no thought in their place
    pause_as_thought        the curriculum, with learned pause embeddings in the thought slots
    pause                   no steps, max_latent_stage x c pause embeddings before the answer, from the start
    cot                     stage 0 throughout
    no_cot                  question -> answer

A target is the remaining steps, each followed by <sep>, then the answer and <eos>. Prompts are the question ids.
The number of thoughts travels per example, so a batch may mix stages (`uniform_prob`) and stays exact.

Each group of c continuous thoughts replaces a piece of language (a step, or r tokens with `tokens_per_stage`);
`StagedExample.thought_words` keeps, per thought, the token ids it replaced (its c-th of the piece), so that a loss
can align the thought with that language (`Coconut(thought_loss_weight)`, `TrainConfig.thought_loss`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tokenizer import WordTokenizer
from coconut_pytorch.inputs import PAD_ID

METHODS = ('coconut', 'coconut_no_curriculum', 'no_thoughts', 'pause_as_thought', 'pause', 'cot', 'no_cot')

PAUSE_METHODS = ('pause', 'pause_as_thought')


@dataclass(frozen = True)
class Curriculum:
    """When each stage runs and what an example looks like at a stage.

    Args:
        method: one of METHODS.
        thoughts_per_step: c, continuous thoughts that replace one language step.
        max_latent_stage: the last stage (number of steps replaced); later steps stay in language.
        epochs_per_stage: epochs spent at each stage before the next.
        pad_latent_to_max: an example with fewer steps than the stage still gets stage x c thoughts
            (True), or only as many as its own steps (False).
        uniform_prob: probability that an example is drawn at a uniformly random stage <= max_latent_stage
            instead of the current one (the paper's mixing of earlier stages).
        one_thought_at_a_time: stages add one thought at a time instead of c (a step leaves language once
            its c thoughts are in); the paper's authors report that adding more than 2 at a switch destabilises.
        tokens_per_stage: r; each stage removes the next r tokens of the language steps (separators counted)
            instead of the next whole step, and curriculum methods put c thoughts in place of each r tokens.
            With `no_thoughts` this is iCoT's stepwise internalization (Deng et al., 2024). `max_latent_stage`
            then counts stages of r tokens.
        removal_smoothing: lambda of iCoT's removal smoothing (with `tokens_per_stage`): each example loses
            o more tokens than its stage says, o drawn with P(o) proportional to exp(-lambda o) (iCoT uses 4, so
            about 2% of examples see a later stage's removal early). None: no smoothing.
    """

    method: str = 'coconut'
    thoughts_per_step: int = 1
    max_latent_stage: int = 3
    epochs_per_stage: int = 3
    pad_latent_to_max: bool = False
    uniform_prob: float = 0.
    one_thought_at_a_time: bool = False
    tokens_per_stage: int | None = None
    removal_smoothing: float | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
        for name in ('thoughts_per_step', 'epochs_per_stage'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if not isinstance(self.max_latent_stage, int) or self.max_latent_stage < 0:
            raise ValueError(f'max_latent_stage must be an int >= 0, got {self.max_latent_stage!r}')
        if not 0. <= self.uniform_prob <= 1.:
            raise ValueError(f'uniform_prob must be in [0, 1], got {self.uniform_prob}')
        if self.tokens_per_stage is not None:
            if not isinstance(self.tokens_per_stage, int) or isinstance(self.tokens_per_stage, bool) or self.tokens_per_stage < 1:
                raise ValueError(f'tokens_per_stage must be a positive int or None, got {self.tokens_per_stage!r}')
            if self.one_thought_at_a_time:
                raise ValueError('tokens_per_stage and one_thought_at_a_time cannot be combined: a stage is already r tokens and c thoughts')
        if self.removal_smoothing is not None:
            if self.tokens_per_stage is None:
                raise ValueError('removal_smoothing needs tokens_per_stage: it smooths the removal of tokens')
            if isinstance(self.removal_smoothing, bool) or not isinstance(self.removal_smoothing, (int, float)) or not self.removal_smoothing > 0:
                raise ValueError(f'removal_smoothing must be a number > 0 (a rate lambda) or None, got {self.removal_smoothing!r}')

    @property
    def uses_curriculum(self) -> bool:
        return self.method in ('coconut', 'no_thoughts', 'pause_as_thought')

    @property
    def thought_mode(self) -> str:
        return 'pause' if self.method in PAUSE_METHODS else 'continuous'

    @property
    def num_stages(self) -> int:
        """Stages the curriculum walks through, the final one included."""
        if not self.uses_curriculum:
            return 1
        units = self.thoughts_per_step if self.one_thought_at_a_time else 1
        return self.max_latent_stage * units + 1

    @property
    def total_epochs(self) -> int:
        return self.num_stages * self.epochs_per_stage

    def stage_at_epoch(self, epoch: int) -> int:
        """Stage index for an epoch; the final stage continues past the schedule."""
        if not self.uses_curriculum:
            return self.final_stage
        return min(epoch // self.epochs_per_stage, self.final_stage)

    @property
    def final_stage(self) -> int:
        return self.num_stages - 1 if self.uses_curriculum else 0

    def layout(self, stage: int, num_steps: int) -> tuple[int, int]:
        """(language steps removed, thoughts) for an example with `num_steps` steps at `stage`."""
        c, method = self.thoughts_per_step, self.method

        if method == 'cot':
            return 0, 0
        if method == 'no_cot':
            return num_steps, 0
        if method == 'pause':
            return num_steps, self.max_latent_stage * c
        if method == 'coconut_no_curriculum':
            thoughts = self.max_latent_stage if self.pad_latent_to_max else min(self.max_latent_stage, num_steps)
            return num_steps, thoughts * c

        # curriculum methods; a stage counts thoughts when they come one at a time
        thought_units = stage if self.one_thought_at_a_time else stage * c
        removed = min(thought_units // c, num_steps)

        if self.pad_latent_to_max:
            thoughts = thought_units
        else:
            thoughts = min(thought_units, num_steps * c)

        if stage == self.final_stage:
            # as in the paper, the last stage drops whatever language steps remain: thoughts, then the answer
            removed = num_steps

        if method == 'no_thoughts':
            thoughts = 0
        return removed, thoughts

    def token_layout(self, stage: int, num_language_tokens: int, extra_removed: int = 0) -> tuple[int, int]:
        """(language tokens removed, thoughts) at `stage` for an example whose steps take `num_language_tokens`
        tokens, separators included (curriculum methods with `tokens_per_stage`); `extra_removed` is removal
        smoothing's offset, which removes tokens early but adds no thoughts."""
        r, c = self.tokens_per_stage, self.thoughts_per_step
        removed = num_language_tokens if stage == self.final_stage else min(stage * r + extra_removed, num_language_tokens)
        thoughts = stage * c if self.pad_latent_to_max else min(stage, -(-num_language_tokens // r)) * c
        return removed, 0 if self.method == 'no_thoughts' else thoughts


ALIGNABLE_METHODS = ('coconut', 'coconut_no_curriculum')   # methods whose thoughts are fed-back hidden states


class StagedExample(NamedTuple):
    prompt: Tensor      # (n,) question ids
    target: Tensor      # (m,) remaining steps with <sep> after each, then answer and <eos>
    num_thoughts: int
    thought_words: tuple[tuple[int, ...], ...] = ()     # per thought, the ids of the language it replaced (its part
                                                        # of the piece its group replaced; may be empty: a padded
                                                        # thought replaced nothing); () for methods without
                                                        # continuous thoughts


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


def encode_at_stage(example: Example, tokenizer: WordTokenizer, curriculum: Curriculum, stage: int, extra_removed: int = 0) -> StagedExample:
    """One example laid out for a stage of a method (`extra_removed`: removal smoothing's offset, in tokens)."""
    question, steps, answer = tokenizer.encode_example(example)
    c, alignable = curriculum.thoughts_per_step, curriculum.method in ALIGNABLE_METHODS

    if curriculum.tokens_per_stage is not None and curriculum.uses_curriculum:
        r = curriculum.tokens_per_stage
        language = [token for step in steps for token in step + [tokenizer.sep_id]]
        removed, thoughts = curriculum.token_layout(stage, len(language), extra_removed)
        target = language[removed:] + answer
        words = words_per_thought([language[start:start + r] for start in range(0, len(language), r)], thoughts, c) if alignable else ()
        return StagedExample(torch.tensor(question), torch.tensor(target), thoughts, words)

    removed, thoughts = curriculum.layout(stage, len(steps))
    target = []
    for step in steps[removed:]:
        target.extend(step + [tokenizer.sep_id])
    target.extend(answer)

    words = words_per_thought(steps, thoughts, c) if alignable else ()
    return StagedExample(torch.tensor(question), torch.tensor(target), thoughts, words)


def staged_examples(
    examples: Sequence[Example],
    tokenizer: WordTokenizer,
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
                             'thought targets need a method with continuous thoughts (coconut, coconut_no_curriculum)')
        for slot, slot_words in enumerate(example.thought_words):
            rows += [row] * len(slot_words)
            slots += [slot] * len(slot_words)
            words += slot_words
    targets = torch.zeros((len(staged), most, num_tokens), dtype = torch.bool)
    targets[torch.tensor(rows, dtype = torch.long), torch.tensor(slots, dtype = torch.long), torch.tensor(words, dtype = torch.long)] = True
    return targets


def collate(staged: Sequence[StagedExample], num_tokens: int | None = None) -> Batch:
    """Pad into a batch; with `num_tokens` (the vocabulary size), also the thoughts' word targets."""
    prompt = pad_sequence([s.prompt for s in staged], batch_first = True, padding_value = PAD_ID)
    target = pad_sequence([s.target for s in staged], batch_first = True, padding_value = PAD_ID)
    num_thoughts = torch.tensor([s.num_thoughts for s in staged])
    targets = thought_targets(staged, num_tokens) if num_tokens is not None else None
    return Batch(prompt, target, num_thoughts, targets)


@dataclass(frozen = True)
class EpochLayout:
    """How a training set becomes an epoch's batches: shuffled by (seed, epoch), laid out at the epoch's stage (with
    `uniform_prob` mixing drawn from the same generator), cut into batches. Deterministic and picklable, so a worker
    process can lay out the next epoch while this one trains, and a resumed run gets the batches it would have."""

    tokenizer: WordTokenizer
    curriculum: Curriculum
    batch_size: int
    seed: int
    with_thought_targets: bool = False      # batches carry `thought_targets` (for `TrainConfig.thought_loss`)

    def batches(self, examples: Sequence[Example], epoch: int) -> list[Batch]:
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(examples)))
        rng.shuffle(order)
        staged = staged_examples([examples[i] for i in order], self.tokenizer, self.curriculum, self.curriculum.stage_at_epoch(epoch), rng)
        num_tokens = len(self.tokenizer) if self.with_thought_targets else None
        return [collate(staged[i:i + self.batch_size], num_tokens) for i in range(0, len(staged), self.batch_size)]
