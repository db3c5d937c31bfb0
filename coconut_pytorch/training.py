"""Training a Coconut model on a task with a curriculum: the loop behind `train_toy.py`.

One fixed training set per run (generated from the seed, or read from `train_file`), or with `fresh_data` a new one
every epoch (`data.fresh_sets`), shuffled anew each epoch by (seed, epoch), so a run resumed from its checkpoint
continues exactly where it stopped. The optimizer is rebuilt at every stage change
(as in the paper), and gradients accumulate over `grad_accum` batches (the paper's effective batch is 128).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from coconut_pytorch.checkpoints import (CHECKPOINT_NAME, INFERENCE_KEYS, TRAINING_KEYS, RunLock, check_weights,
                                         file_digest, first_line, read_checkpoint, save_checkpoint)
from coconut_pytorch.coconut import Coconut
from coconut_pytorch.curriculum import ALIGNABLE_METHODS, METHODS, Curriculum, EpochLayout
from coconut_pytorch.data.example import Example
from coconut_pytorch.data.fresh_sets import FreshSets, generate_excluding, held_out_seed
from coconut_pytorch.data.loaders import load_examples
from coconut_pytorch.data.tasks import TASKS, get_task
from coconut_pytorch.data.tasks.base import check_int
from coconut_pytorch.data.tokenizer import Tokenizer, WordTokenizer, max_target_length, target_lengths, tokenizer_from_dict
from coconut_pytorch.evaluate import encode_questions, evaluate_examples
from coconut_pytorch.plotting import plot_history
from coconut_pytorch.train_step import TrainStep


def setting(default, help: str, cli: str | None = None, choices: Sequence[str] | None = None):
    """A `TrainConfig` field with its help text (and its command-line name where that is not the field's own, and
    its choices): the one place a setting is described, for the docs and for `train_toy.py`'s options
    (`add_config_arguments`). A callable default (`dict`) is a factory."""
    metadata = dict(help = help, cli = cli, choices = choices)
    if callable(default):
        return field(default_factory = default, metadata = metadata)
    return field(default = default, metadata = metadata)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in its checkpoint."""

    task: str = setting('running_sum', 'a generated task, unless --train-file is given', choices = sorted(TASKS))
    task_kwargs: dict = setting(dict, 'JSON settings for the task, e.g. \'{"num_digits_a": 5, "num_digits_b": 5}\'')
    method: str = setting('coconut', 'coconut, or a baseline or ablation of the paper', choices = METHODS)

    # curriculum
    c_thought: int = setting(1, 'continuous thoughts per replaced step')
    max_latent_stage: int | None = setting(None, "the last stage (default: the task's largest number of steps)")
    epochs_per_stage: int = setting(2, 'epochs at each stage of the schedule')
    final_epochs: int = setting(6, 'extra epochs at the last stage, after the schedule')
    pad_latent_to_max: bool = setting(True, 'give every example the last stage\'s thought count (inference cannot know '
                                            'an example\'s step count, so train with the most)', cli = 'no-pad-latent-to-max')
    uniform_prob: float = setting(0., 'probability that an example is laid out at a random stage instead of the current one')
    one_thought_at_a_time: bool = setting(False, 'stages add one thought at a time instead of c')
    tokens_per_stage: int | None = setting(None, 'each stage removes this many language tokens instead of a whole step '
                                                 "(with --method no_thoughts: iCoT's stepwise internalization)")
    removal_smoothing: float | None = setting(None, "with --tokens-per-stage: iCoT's removal smoothing rate lambda (iCoT uses 4)")
    reset_optimizer: bool = setting(True, 'a new optimizer at every stage change, as in the paper', cli = 'no-reset-optimizer')
    thought_loss: float = setting(0., 'weight of a loss aligning each continuous thought with the words of the step it '
                                      'replaced (Coconut.thought_loss; 0: off, as in the paper)')

    # data and optimisation
    train_size: int = setting(8000, 'generated training examples (unused with --train-file)')
    fresh_data: bool = setting(False, 'generate a new training set of --train-size every epoch, not one set reused')
    exclude_held_out: bool = setting(True, 'generated training sets never ask a held-out question (checkpoints from before '
                                           'this setting trained on sets that could)', cli = 'no-exclude-held-out')
    eval_size: int = setting(500, 'held-out examples generated, or split off --train-file')
    train_file: str | None = setting(None, "train on the paper's JSON or iCoT's lines instead of --task")
    eval_file: str | None = setting(None, 'report accuracy on these examples (default: generated, or --eval-size split off --train-file)')
    batch_size: int = setting(64, 'examples per batch')
    grad_accum: int = setting(1, 'batches whose gradients make one optimizer step (the paper\'s effective batch is 128)')
    lr: float = setting(2e-3, 'peak learning rate (AdamW)')
    weight_decay: float = setting(0.01, 'AdamW weight decay of matrices (vectors get none)')
    warmup_steps: int = setting(50, 'linear learning-rate warmup, in optimizer steps')
    rewarm_each_stage: bool = setting(False, 'warm the learning rate up again after each optimizer reset: a new Adam\'s '
                                             'first updates move every weight by about lr, whatever its gradient\'s size')
    max_grad_norm: float = setting(1., 'gradients are clipped to this norm')
    lr_decay_epochs: float = setting(0., "the run's last N epochs take the learning rate linearly to 0 (0: constant to the "
                                         'end); exact answers hinge on the last tenths of a percent of token accuracy, '
                                         'which a constant rate keeps shaking loose')

    # model: the native Transformer of this shape, or a pretrained one (then the shape settings are unused)
    hf_model: str | None = setting(None, 'train a pretrained transformers causal LM (a local folder with its tokenizer) '
                                         'instead of a new model; --dim, --depth, --heads, --dim-head and '
                                         '--num-residual-streams are then unused (pip install "coconut-pytorch[hf]")')
    download: bool = setting(False, 'let --hf-model name a model to fetch from the Hugging Face hub')
    dim: int = setting(96, 'model width')
    depth: int = setting(2, 'transformer blocks')
    heads: int = setting(4, 'attention heads')
    dim_head: int = setting(24, 'width of an attention head')
    num_residual_streams: int = setting(2, 'hyper-connection residual streams')
    checkpoint: bool = setting(False, 'recompute thought steps in backward (activation checkpointing)', cli = 'checkpoint-activations')

    # run
    seed: int = setting(0, 'seeds the data, the model and the shuffles')
    device: str = setting('cpu', 'cpu, cuda, cuda:1, ...')
    bf16: bool = setting(False, 'bfloat16 autocast')
    compile: bool = setting(False, 'torch.compile the native Transformer\'s blocks')
    cuda_graphs: bool = setting(False, "replay each batch shape's training step as a CUDA graph (the step is host-bound "
                                       'on a GPU; train_step.TrainStep)')
    time_budget: float | None = setting(None, 'seconds; stop after the epoch that crosses it, --resume later')
    max_nonfinite_steps: int = setting(10, 'optimizer steps with a non-finite loss or gradient are skipped; this many in '
                                           'a row stop the run as diverged (its last good checkpoint kept)')

    def __post_init__(self):
        # every mistake named before any data is generated or any model built
        for name in ('train_size', 'eval_size', 'batch_size', 'grad_accum', 'dim', 'depth', 'heads', 'dim_head',
                     'num_residual_streams', 'c_thought', 'epochs_per_stage'):
            check_int(name, getattr(self, name), 1)
        for name in ('final_epochs', 'warmup_steps'):
            check_int(name, getattr(self, name), 0)
        check_int('max_nonfinite_steps', self.max_nonfinite_steps, 1)
        if self.max_latent_stage is not None:
            check_int('max_latent_stage', self.max_latent_stage, 0)
        if self.tokens_per_stage is not None:
            check_int('tokens_per_stage', self.tokens_per_stage, 1)
        for name, minimum, inclusive in (('lr', 0., False), ('weight_decay', 0., True), ('max_grad_norm', 0., False), ('lr_decay_epochs', 0., True),
                                         ('uniform_prob', 0., True), ('time_budget', 0., True), ('removal_smoothing', 0., False),
                                         ('thought_loss', 0., True)):
            value = getattr(self, name)
            if value is None and name in ('time_budget', 'removal_smoothing'):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f'{name} must be a number, got {type(value).__name__}')
            if value < minimum or (value == minimum and not inclusive) or not math.isfinite(value):
                raise ValueError(f"{name} must be finite and {'>=' if inclusive else '>'} {minimum}, got {value}")
        check_int('seed', self.seed, 0)     # random.Random ignores a seed's sign: -1 would repeat seed 1's data
        if self.uniform_prob > 1:
            raise ValueError(f'uniform_prob must be at most 1, got {self.uniform_prob}')
        if self.method not in METHODS:
            raise ValueError(f'method must be one of {list(METHODS)}, got {self.method!r}')
        # how the curriculum settings combine is the Curriculum's to say: build one (stage count not yet known)
        self.curriculum(task_max_steps = 0, longest_language = 0)
        if self.thought_loss > 0 and self.method not in ALIGNABLE_METHODS:
            raise ValueError(f'thought_loss needs continuous thoughts to align: method must be one of {list(ALIGNABLE_METHODS)}, got {self.method!r}')
        if self.task not in TASKS:
            raise ValueError(f'task must be one of {sorted(TASKS)}, got {self.task!r}')
        if not isinstance(self.task_kwargs, dict):
            raise TypeError(f'task_kwargs must be a dict, got {type(self.task_kwargs).__name__}')
        for name in ('train_file', 'eval_file', 'hf_model'):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f'{name} must be a path, got {type(value).__name__}')
            if value is not None:
                # kept as text: the checkpoint holds plain data only, and loads with weights_only = True
                setattr(self, name, os.fspath(value))
        if self.train_file is not None and self.fresh_data:
            raise ValueError('fresh_data generates a new set from the task every epoch; it cannot be used with train_file')
        if self.cuda_graphs and not str(self.device).startswith('cuda'):
            raise ValueError(f'cuda_graphs needs a CUDA device, got device={self.device!r}')
        if self.cuda_graphs and self.compile:
            raise ValueError('cuda_graphs and compile cannot be combined: choose one')
        if self.cuda_graphs and self.checkpoint:
            raise ValueError('cuda_graphs and checkpoint (activation checkpointing) cannot be combined')
        if self.hf_model is not None and (self.cuda_graphs or self.compile):
            # both act on the native Transformer (its static cache, its blocks); a transformers model builds a new
            # cache object every call
            raise ValueError(f"{'cuda_graphs' if self.cuda_graphs else 'compile'} is for the native Transformer; it cannot be used with hf_model")

    def curriculum(self, task_max_steps: int, longest_language: int | None = None) -> Curriculum:
        """The run's curriculum. Without `max_latent_stage`, the last stage is the one that removes every step of
        the longest example: `task_max_steps` steps, or with `tokens_per_stage`, its `longest_language` tokens."""
        max_latent_stage = self.max_latent_stage
        if max_latent_stage is None and self.tokens_per_stage is not None:
            if longest_language is None:
                raise ValueError('tokens_per_stage without max_latent_stage needs the longest language steps, in tokens')
            max_latent_stage = -(-longest_language // self.tokens_per_stage)
        return Curriculum(
            method = self.method,
            thoughts_per_step = self.c_thought,
            max_latent_stage = max_latent_stage if max_latent_stage is not None else task_max_steps,
            epochs_per_stage = self.epochs_per_stage,
            pad_latent_to_max = self.pad_latent_to_max,
            uniform_prob = self.uniform_prob,
            one_thought_at_a_time = self.one_thought_at_a_time,
            tokens_per_stage = self.tokens_per_stage,
            removal_smoothing = self.removal_smoothing
        )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        # a checkpoint saved before exclude_held_out existed trained on unfiltered sets
        return cls(**{'exclude_held_out': False, **{key: value for key, value in values.items() if key in known}})


# how a setting's text on the command line becomes its value, by the field's annotation
OPTION_TYPES = {'int': int, 'int | None': int, 'float': float, 'float | None': float, 'str': str, 'str | None': str, 'dict': json.loads}
OPTION_METAVARS = {int: 'N', float: 'X', str: 'TEXT', json.loads: 'JSON'}


def add_config_arguments(parser: argparse.ArgumentParser):
    """An option for every `TrainConfig` setting, from the field's default, annotation and help: `--name value`, or
    for a switch `--name` (off by default) or `--no-name` (on by default)."""
    for setting_field in fields(TrainConfig):
        meta = setting_field.metadata
        default = setting_field.default_factory() if setting_field.default is MISSING else setting_field.default
        option = '--' + (meta.get('cli') or setting_field.name.replace('_', '-'))
        if setting_field.type == 'bool':
            parser.add_argument(option, dest = setting_field.name, action = 'store_false' if default else 'store_true', help = meta['help'])
            continue
        kind = OPTION_TYPES[setting_field.type]
        parser.add_argument(option, dest = setting_field.name, type = kind, default = default, choices = meta.get('choices'),
                            metavar = None if meta.get('choices') else OPTION_METAVARS[kind], help = meta['help'])


def config_from_arguments(arguments: argparse.Namespace | dict) -> TrainConfig:
    """The `TrainConfig` of parsed options (those `add_config_arguments` made; others are ignored)."""
    values = vars(arguments) if isinstance(arguments, argparse.Namespace) else arguments
    return TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.name in values})


def build_model(config: TrainConfig, num_tokens: int, curriculum: Curriculum, backbone_config: dict | None = None) -> Coconut:
    """The run's model. With `config.hf_model`: the pretrained model read from it (in float32: AdamW's updates are
    lost in bf16 weights), or, with `backbone_config` (a checkpoint's), that architecture with fresh weights to load
    a checkpoint into, without the original folder."""
    torch.manual_seed(config.seed)
    if config.hf_model is not None:
        from coconut_pytorch.hf import HFBackbone, causal_lm_from_config, load_causal_lm
        lm = causal_lm_from_config(backbone_config) if backbone_config is not None else load_causal_lm(config.hf_model, download = config.download)
        transformer = HFBackbone(lm.float())
    else:
        transformer = dict(
            num_tokens = num_tokens,
            dim = config.dim,
            depth = config.depth,
            heads = config.heads,
            dim_head = config.dim_head,
            num_residual_streams = config.num_residual_streams
        )
    return Coconut(
        num_reasoning_steps = 0,
        num_latents_per_step = 1,   # thoughts come one per position, as in the paper; the curriculum counts them
        transformer = transformer,
        checkpoint = config.checkpoint,
        thought_mode = curriculum.thought_mode,
        thought_loss_weight = config.thought_loss
    )


def backbone_config(model: Coconut) -> dict | None:
    """What a checkpoint needs to rebuild a pretrained backbone's architecture: its transformers config, as plain
    data (None for the native Transformer, which the run's configuration describes)."""
    lm = getattr(model.model, 'lm', None)
    return lm.config.to_dict() if lm is not None else None


# settings that change how a run is executed, not what it learns: a resumed run may differ in them
# (`hf_model` only names where a run's first weights came from: a resumed run takes them, and the tokenizer, from its
# checkpoint, so the folder may have moved or gone)
RESUME_MAY_CHANGE = ('time_budget', 'device', 'cuda_graphs', 'compile', 'max_nonfinite_steps', 'download', 'hf_model')

INFERENCE_TOKEN_MARGIN = 8     # generation may run this far past the longest training target


def inference_info(curriculum: Curriculum, stage: int, max_target_length: int) -> dict:
    """How a model trained up to `stage` is run: that stage's thoughts (the most any example got) and a token budget."""
    _, num_thoughts = curriculum.layout(stage, num_steps = 10 ** 6)
    return dict(num_thoughts = num_thoughts, max_new_tokens = max_target_length + INFERENCE_TOKEN_MARGIN, stage = stage, final_stage = curriculum.final_stage)


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


def learning_rate(config: TrainConfig, step: int, optimizer_start: int, epochs_left: float = math.inf) -> float:
    """The lr of optimizer step `step` (counted over the run); `optimizer_start` is the step the optimizer was made at,
    `epochs_left` how much of the run is left after this step, in epochs (fractional; for `lr_decay_epochs`)."""
    since = step - optimizer_start if config.rewarm_each_stage else step
    warmup = min(1., (since + 1) / max(1, config.warmup_steps))
    decay = min(1., max(0., epochs_left) / config.lr_decay_epochs) if config.lr_decay_epochs > 0 else 1.
    return config.lr * warmup * decay


def make_optimizer(model: Coconut, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [dict(params = decay, weight_decay = config.weight_decay), dict(params = no_decay, weight_decay = 0.)]
    fused = config.device.startswith('cuda')
    return torch.optim.AdamW(groups, lr = config.lr, betas = (0.9, 0.98), fused = fused)


def apply_gradients(model: Coconut, optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float, losses_finite: Tensor | None = None) -> Tensor | None:
    """One optimizer step at `lr` on the accumulated gradients, clipped to `max_grad_norm`; then clears them.

    With `losses_finite` (a () bool tensor), the step is skipped when it is False or the gradients' norm is not
    finite: every weight and its optimizer state stay as they were. A fused optimizer (on a GPU) decides that on
    the device, with no host sync; another (on the CPU, where a sync costs nothing) on the host. Returns that skip
    flag (() bool), or None without `losses_finite`."""
    for group in optimizer.param_groups:
        group['lr'] = lr
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    skip = ~(losses_finite & torch.isfinite(norm)) if losses_finite is not None else None

    if skip is None:
        optimizer.step()
    elif optimizer.defaults.get('fused'):
        # fused AdamW's own input for this (GradScaler's found_inf): the update and the step count are undone
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skip):
        optimizer.step()
    optimizer.zero_grad(set_to_none = True)
    return skip


class Diverged(Exception):
    """The run produced `max_nonfinite_steps` non-finite optimizer steps in a row, or non-finite weights."""


class NonFiniteSteps:
    """Counts the optimizer steps `apply_gradients` skipped for a non-finite loss or gradient, and stops a run that
    keeps making them. The count of skipped steps in a row stays on the device and is read every `check_every`
    steps and at each epoch's end, so a GPU step never waits for it."""

    def __init__(self, limit: int, device: torch.device, check_every: int = 16):
        self.limit, self.check_every = limit, check_every
        self.in_a_row = torch.zeros((), device = device)
        self.skipped = torch.zeros((), device = device)     # over the current epoch
        self.steps = 0

    def apply(self, model: Coconut, optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float, losses_finite: Tensor):
        """An optimizer step, unless the losses accumulated for it (`losses_finite`, () bool) or its gradients
        are not finite."""
        skip = apply_gradients(model, optimizer, lr, max_grad_norm, losses_finite)
        self.in_a_row = (self.in_a_row + 1) * skip
        self.skipped = self.skipped + skip
        self.steps += 1
        if self.steps % self.check_every == 0:
            self.check()

    def check(self):
        in_a_row = int(self.in_a_row.item())
        if in_a_row >= self.limit:
            raise Diverged(f'{in_a_row} optimizer steps in a row had a non-finite loss or gradient (max_nonfinite_steps = {self.limit})')

    def end_epoch(self) -> int:
        """Check, and return (and reset) the epoch's count of skipped steps."""
        self.check()
        skipped = int(self.skipped.item())
        self.skipped = torch.zeros_like(self.skipped)
        return skipped


def weights_finite(model: Coconut) -> bool:
    """One host sync for all parameters."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def json_safe(value):
    """`value` with every non-finite float as None: a log line must be valid JSON, and `NaN` is not.
    (A None loss in a log line or in `history` means the value was NaN or infinite.)"""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(inner) for inner in value]
    return value


def data_digests(config: TrainConfig) -> dict[str, str]:
    """SHA-256 of the data files a run reads, by setting name: a resumed run refuses files that changed under it."""
    return {name: file_digest(getattr(config, name)) for name in ('train_file', 'eval_file') if getattr(config, name) is not None}


class LoadedRun(NamedTuple):
    model: Coconut              # in eval mode, on the device asked for
    tokenizer: Tokenizer
    config: TrainConfig
    curriculum: Curriculum
    state: dict                 # everything the checkpoint holds, on the CPU


def load_run(path: str | Path, device: str = 'cpu', keys: tuple[str, ...] = INFERENCE_KEYS) -> LoadedRun:
    """A checkpoint written by `train`, checked and built: the one path by which evaluation and `--resume` read
    checkpoints. Structure and finiteness are checked when the file is read (`checkpoints.read_checkpoint`); the
    model the configuration describes is then built on the meta device, without memory, and its weights' names and
    shapes compared with the file's before the real one is allocated."""
    state = read_checkpoint(path, keys)
    try:
        config = TrainConfig.from_dict(state['config'])
        tokenizer = tokenizer_from_dict(state['tokenizer'])
        curriculum = Curriculum(**state['curriculum'])
        architecture = state.get('backbone')
        if config.hf_model is not None and not isinstance(architecture, dict):
            raise ValueError('it was trained over a pretrained model but holds no backbone config')
        with torch.device('meta'):
            skeleton = build_model(config, len(tokenizer), curriculum, architecture)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f'checkpoint {path}: its configuration is not valid: {first_line(error)}') from None
    check_weights(path, state['model'], skeleton.state_dict())

    model = build_model(config, len(tokenizer), curriculum, architecture).to(device)
    model.load_state_dict(state['model'])
    model.eval()
    return LoadedRun(model, tokenizer, config, curriculum, state)


def load_trained(path: str | Path, device: str = 'cpu'):
    """(model, tokenizer, config, inference info) from a checkpoint written by `train`."""
    run = load_run(path, device)
    return run.model, run.tokenizer, run.config, run.state['inference']


def check_resumable(run: LoadedRun, config: TrainConfig, tokenizer: Tokenizer, path: Path, allow_changed_data: bool):
    """Raise unless the checkpoint `run` can be continued by a run of `config` over data giving `tokenizer`."""
    if run.state['tokenizer'] != tokenizer.to_dict():
        # ids would silently mean other words (a file-trained vocabulary is rebuilt from the files)
        raise ValueError(f'--resume: the vocabulary built from the data differs from the checkpoint\'s ({path}); were the data files changed?')
    if run.config != config:
        changed = [f'{f.name} ({getattr(run.config, f.name)!r} in the checkpoint, {getattr(config, f.name)!r} now)'
                   for f in fields(TrainConfig) if getattr(run.config, f.name) != getattr(config, f.name) and f.name not in RESUME_MAY_CHANGE]
        if changed:
            raise ValueError(f'--resume: the configuration differs from the checkpoint in {", ".join(changed)}')
    saved, now = run.state.get('data_digests'), data_digests(config)
    if saved is not None and saved != now and not allow_changed_data:
        changed = sorted(name for name in set(saved) | set(now) if saved.get(name) != now.get(name))
        raise ValueError(f'--resume: the data in {", ".join(changed)} changed since the checkpoint was written ({path}); '
                         f'resume anyway with --allow-changed-data, or start a new run')


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: Callable | None = None,
    overwrite: bool = False,
    allow_changed_data: bool = False
) -> dict:
    """Train, evaluate on held-out generated examples, save checkpoint and plot; returns the results.

    `progress(iterable, **kwargs)` wraps the batch loop (e.g. tqdm); it gets `set_postfix` calls if it has them.
    A new run into an `out_dir` that holds a checkpoint is refused unless `resume` (continue it) or `overwrite`
    (replace it); two runs never share an `out_dir` at once (a lock). `allow_changed_data` lets `resume` continue
    over data files that changed since the checkpoint.

    A run that diverges (`config.max_nonfinite_steps` non-finite steps in a row, or non-finite weights) stops
    without saving: the checkpoint keeps the last good epoch, and the result says `finished: False`,
    `stopped: 'diverged'` and why, with no accuracy.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f'out_dir {out_dir} is a file; the run needs a directory for its checkpoint and plot')
    device = torch.device(config.device)
    # checked here, not in TrainConfig: a checkpoint trained on a GPU must still load where there is none
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {config.device!r}: this torch build sees no CUDA GPU')
    if resume and overwrite:
        raise ValueError('resume and overwrite cannot be combined: continue the run in out_dir, or replace it')
    out_dir.mkdir(parents = True, exist_ok = True)
    checkpoint_path = out_dir / CHECKPOINT_NAME

    with RunLock(out_dir):
        if resume and not checkpoint_path.is_file():
            raise ValueError(f'--resume: no checkpoint at {checkpoint_path}')
        if not resume and not overwrite and checkpoint_path.exists():
            raise ValueError(f'{out_dir} already holds a run ({checkpoint_path}): continue it with --resume, '
                             f'replace it with --overwrite, or choose another --out')
        return train_locked(config, out_dir, checkpoint_path, device, resume, progress, allow_changed_data)


def train_locked(config: TrainConfig, out_dir: Path, checkpoint_path: Path, device: torch.device, resume: bool,
                 progress: Callable | None, allow_changed_data: bool) -> dict:
    """`train` once the run holds its directory."""
    # a run over a pretrained model resumes from its checkpoint's tokenizer: the model's folder is not needed again
    run = load_run(checkpoint_path, config.device, TRAINING_KEYS) if resume and config.hf_model is not None else None
    train_set, eval_set, tokenizer, max_steps = load_data(config, run.tokenizer if run is not None else None)
    curriculum = config.curriculum(max_steps, longest_language = max(steps for steps, _ in target_lengths(train_set, tokenizer)))
    longest_target = max_target_length(train_set, tokenizer)
    digests = data_digests(config)

    start_epoch, history, elapsed, step, optimizer_start = 0, [], 0., 0, 0

    if resume:
        run = run if run is not None else load_run(checkpoint_path, config.device, TRAINING_KEYS)
        check_resumable(run, config, tokenizer, checkpoint_path, allow_changed_data)
        model, state = run.model, run.state
        optimizer = make_optimizer(model, config)
        optimizer.load_state_dict(state['optimizer'])
        start_epoch, history, elapsed, step = state['epoch'] + 1, state['history'], state['elapsed'], state['step']
        optimizer_start = state.get('optimizer_start', 0)
        # with fresh data the cap grew with every set seen before the stop
        longest_target = max(longest_target, state['inference']['max_new_tokens'] - INFERENCE_TOKEN_MARGIN)
    else:
        model = build_model(config, len(tokenizer), curriculum).to(device)
        optimizer = make_optimizer(model, config)

    if config.compile:
        model.model.compile_blocks()

    train_step = TrainStep(model, torch.bfloat16 if config.bf16 else None, loss_scale = 1 / config.grad_accum, cuda_graphs = config.cuda_graphs)
    # every method trains as many epochs as the coconut schedule, so baselines get the same budget
    schedule = Curriculum(**{**asdict(curriculum), 'method': 'coconut'})
    total_epochs = schedule.total_epochs + config.final_epochs
    layout = EpochLayout(tokenizer, curriculum, config.batch_size, config.seed, with_thought_targets = config.thought_loss > 0)
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps, device)
    saved_epoch = history[-1]['epoch'] if history else None
    inference = state['inference'] if resume else None
    run_start = time.perf_counter()
    stopped, reason = None, None

    fresh_sets = FreshSets(config.task, config.task_kwargs, config.train_size, config.seed, total_epochs, layout, first_epoch = max(start_epoch, 1),
                           excluded = held_out_questions(config, eval_set)) if config.fresh_data else None
    try:
        for epoch in range(start_epoch, total_epochs):
            stage = curriculum.stage_at_epoch(epoch)
            # torch's random draws in training (a pretrained model's dropout) follow from (seed, epoch), so a resumed
            # run draws what the uninterrupted one did
            torch.manual_seed(config.seed * 100_003 + epoch)
            if config.reset_optimizer and epoch > 0 and stage != curriculum.stage_at_epoch(epoch - 1):
                optimizer = make_optimizer(model, config)
                optimizer_start = step

            if config.fresh_data and epoch > 0:
                # the generators are unlimited: a fixed set of thousands of examples gets memorised instead of solved
                # (a ProsQA cot run fit its 20,000 to 0.99 token accuracy and answered 38% of new ones). The seed
                # follows from (seed, epoch), so a resumed run sees the same sets
                batches, epoch_longest = fresh_sets.get(epoch)
                longest_target = max(longest_target, epoch_longest)
            else:
                batches = layout.batches(train_set, epoch)

            train_step.pad_to(max(b.prompt.shape[1] for b in batches), max(b.target.shape[1] for b in batches))
            iterator = progress(batches, desc = f'epoch {epoch + 1}/{total_epochs} stage {stage}', leave = False) if progress else batches

            model.train()
            loss_sum = torch.zeros((), device = device)
            thought_loss_sum = torch.zeros((), device = device)
            finite_batches = torch.zeros((), device = device)
            correct = torch.zeros((), device = device)
            counted = torch.zeros((), device = device)
            window_finite = torch.ones((), dtype = torch.bool, device = device)     # the losses since the last update

            try:
                for batch_index, batch in enumerate(iterator):
                    stats = train_step(batch)
                    finite = torch.isfinite(stats.loss)
                    window_finite = window_finite & finite
                    # a non-finite batch counts in no average: the curve shows the batches that trained
                    loss_sum += torch.where(finite, stats.loss, 0.)
                    thought_loss_sum += torch.where(finite, stats.thought_loss, 0.)
                    finite_batches += finite
                    correct += stats.correct
                    counted += stats.counted

                    if (batch_index + 1) % config.grad_accum == 0 or batch_index == len(batches) - 1:
                        epochs_left = total_epochs - epoch - (batch_index + 1) / len(batches)
                        nonfinite.apply(model, optimizer, learning_rate(config, step, optimizer_start, epochs_left), config.max_grad_norm, window_finite)
                        window_finite = torch.ones((), dtype = torch.bool, device = device)
                        step += 1

                    if hasattr(iterator, 'set_postfix') and batch_index % 20 == 0:
                        iterator.set_postfix(loss = f'{stats.loss.item():.3f}', stage = stage, acc = f'{(correct / counted.clamp(min = 1)).item():.3f}')

                skipped = nonfinite.end_epoch()
                if not weights_finite(model):
                    raise Diverged('the weights became non-finite')
            finally:
                if hasattr(iterator, 'close'):
                    iterator.close()

            # an epoch of nothing but non-finite batches has no loss (0 / 0 = NaN, written as null)
            record = dict(epoch = epoch, stage = stage, loss = (loss_sum / finite_batches).item(),
                          token_accuracy = (correct / counted.clamp(min = 1)).item(),
                          seconds = round(elapsed + time.perf_counter() - run_start, 2))     # training time at the epoch's end
            if config.thought_loss > 0:
                # `loss` includes it, weighted; alone it tells whether the thoughts hold what they replaced
                record['thought_loss'] = (thought_loss_sum / finite_batches).item()
            if skipped:
                record['skipped_steps'] = skipped
            record = json_safe(record)
            history.append(record)
            if progress:
                print(json.dumps(record, allow_nan = False), flush = True)

            elapsed_now = elapsed + time.perf_counter() - run_start
            inference = inference_info(curriculum, stage, longest_target)
            save_checkpoint(dict(
                config = asdict(config), curriculum = asdict(curriculum), tokenizer = tokenizer.to_dict(),
                model = model.state_dict(), optimizer = optimizer.state_dict(),
                epoch = epoch, step = step, optimizer_start = optimizer_start, history = history, elapsed = elapsed_now,
                inference = inference, data_digests = digests, backbone = backbone_config(model)
            ), checkpoint_path)
            saved_epoch = epoch

            if config.time_budget is not None and time.perf_counter() - run_start > config.time_budget and epoch < total_epochs - 1:
                stopped, reason = 'time_budget', f'the time budget of {config.time_budget:g} s ran out; continue with --resume'
                break
    except Diverged as error:
        stopped = 'diverged'
        kept = f'the checkpoint keeps epoch {saved_epoch + 1}' if saved_epoch is not None else 'no checkpoint was written'
        reason = f'training diverged at epoch {epoch + 1}: {error}; nothing was saved from it ({kept}). Try a lower --lr or --max-grad-norm'
    finally:
        if fresh_sets is not None:
            fresh_sets.close()

    seconds = elapsed + time.perf_counter() - run_start
    task = config.task if config.train_file is None else str(config.train_file)

    if stopped == 'diverged':
        return dict(finished = False, stopped = stopped, reason = reason, accuracy = None, n = 0, seconds = seconds,
                    method = config.method, task = task, epoch = saved_epoch,
                    checkpoint = str(checkpoint_path) if saved_epoch is not None else None)

    plot_history(history, out_dir / 'training.png', title = f'{config.task} / {config.method}', thought_loss_weight = config.thought_loss)

    # a run stopped by its time budget is still evaluated, at the stage it reached (and says so)
    result = evaluate_examples(
        model, tokenizer, eval_set,
        num_thoughts = inference['num_thoughts'],
        max_new_tokens = inference['max_new_tokens'],
        source = config.eval_file or 'held-out examples',
        autocast_dtype = torch.bfloat16 if config.bf16 else None
    )

    return dict(
        finished = stopped is None,
        **(dict(stopped = stopped, reason = reason) if stopped else {}),
        accuracy = result['accuracy'],
        n = result['n'],
        seconds = seconds,
        method = config.method,
        task = task,
        num_thoughts = inference['num_thoughts'],
        stage = inference['stage'],
        final_stage = inference['final_stage'],
        epoch = saved_epoch,
        mean_new_tokens = result['mean_new_tokens'],
        checkpoint = str(checkpoint_path)
    )
