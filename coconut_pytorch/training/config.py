"""A run's settings: `TrainConfig`, one dataclass whose fields carry their own help text, from which
`train_toy.py`'s command-line options are generated (`add_config_arguments`), so that nothing is written twice.
It is saved in every checkpoint and checked again on `--resume` (`RESUME_MAY_CHANGE` lists what may differ).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import yaml

from coconut_pytorch.data.tasks import TASKS
from coconut_pytorch.data.tasks.base import check_int
from coconut_pytorch.helpers import parse_device, resolve_device
from coconut_pytorch.training.schedule import ALIGNABLE_METHODS, FEEDBACK_METHODS, METHODS, Curriculum
from coconut_pytorch.transformer import glu_width


# the methods trained with the thought loss unless told otherwise: from scratch, Coconut's thoughts learned ProsQA,
# pointer chasing and 5x5 multiplication only with it, and the default CPU task in every seed tried (RESULTS.md); the
# curriculum ablation gets the same, so that it differs from coconut in the curriculum alone
THOUGHT_LOSS_BY_DEFAULT = ('coconut', 'coconut_no_curriculum')
DEFAULT_THOUGHT_LOSS = 1.


def setting(default, help: str, cli: str | None = None, choices: Sequence[str] | None = None, aliases: Sequence[str] = ()):
    """A `TrainConfig` field with its help text (and its command-line name where that is not the field's own, other
    names the option also answers to, and its choices): the one place a setting is described, for the docs and for
    `train_toy.py`'s options (`add_config_arguments`). A callable default (`dict`) is a factory."""
    metadata = dict(help = help, cli = cli, choices = choices, aliases = tuple(aliases))
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
    thoughts_per_step: int = setting(1, "c: continuous thoughts in place of each replaced step (the paper's c_thought)", aliases = ('c-thought',))
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
    compress_thoughts: list[int] = setting(list, "with --tokens-per-stage r: after the last removal stage, one more stage of "
                                                    "--compress-epochs epochs for each value c' (comma-separated, e.g. 4,2: "
                                                    'strictly decreasing, each below --thoughts-per-step), at which c\' thoughts '
                                                    'instead of c take the place of each r tokens, each thought replacing r / c\' '
                                                    'of them; the final epochs and evaluation use the last value')
    compress_epochs: int | None = setting(None, 'with --compress-thoughts: epochs at each compression stage (default: --epochs-per-stage); '
                                                'a switch to fewer thoughts takes longer to recover from than a removal stage')
    reset_optimizer: bool = setting(True, 'a new optimizer at every stage change, as in the paper', cli = 'no-reset-optimizer')
    thought_loss: float | None = setting(None, 'weight of a loss aligning each continuous thought with the words of the step it '
                                             'replaced (Coconut.thought_loss). Default: 1 with coconut and coconut_no_curriculum, whose '
                                             'thoughts learn far more reliably with it (RESULTS.md); 0 (off, as in the paper) with the '
                                             'other methods. With pause_as_thought or pause, the pause slots\' outputs get the same '
                                             'targets: a supervised control that feeds nothing back')
    # latent alignment (Coconut.align_losses, thought_rms_match, thought_mix): all off by default
    align_mse: float = setting(0., 'weight of a loss pulling each fed-back thought toward the mean input embedding of the words '
                                   'of the step it replaced: mean squared error per dimension, the target detached (0: off)')
    align_cosine: float = setting(0., 'the same with 1 - cosine similarity: the direction only (0: off)')
    thought_rms_match: bool = setting(False, 'feed thoughts back at the RMS of the token embedding table times a learned gain '
                                             '(from 1), in training and generation alike')
    mix_start: float = setting(0., 'embedding mixing: right after each stage change, feed back (1 - w) x thought + w x the mean '
                                   'embedding of the replaced words with w = this (0: off; at most 1)')
    mix_epochs: int = setting(1, 'embedding mixing: epochs over which w goes linearly from --mix-start to 0 after each stage change')
    # learned halting (Coconut.halt_loss): off by default
    halt_loss: float = setting(0., 'weight of a loss training a halting head to stop thinking after each example\'s own thought '
                                   'count at its stage (without --pad-latent-to-max\'s padding; thoughts past it: stop), so '
                                   'that evaluation can halt with --halt-threshold (0: off, no head). One process only (not '
                                   'under torchrun); eager or with cuda_graphs')
    # ordered thought targets (Coconut.thought_token_loss): off by default
    thought_token_loss: float = setting(0., 'weight of a loss by which each thought spells out, in order, the tokens it replaced, '
                                            'through small heads dropped at inference (0: off, no heads). One process only')
    thought_token_heads: int | None = setting(None, 'tokens each thought spells out with --thought-token-loss (default: '
                                                    'ceil(tokens-per-stage / thoughts-per-step), or with --compress-thoughts ceil(tokens-per-stage / '
                                                    'its last value): every token a thought replaces)')

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
    ff_dim_inner: int | None = setting(None, "the gated feedforward's inner width (default: 8/3 x --dim, the width at which it "
                                             "has a plain 4 x dim feedforward's parameters, as coconut-pytorch 0.0.32)")
    checkpoint: bool = setting(False, 'recompute thought steps in backward (activation checkpointing)', cli = 'checkpoint-activations')

    # run
    seed: int = setting(0, 'seeds the data, the model and the shuffles')
    device: str = setting('auto', 'auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:1, ...')
    bf16: bool = setting(False, 'bfloat16 autocast')
    compile: bool = setting(False, 'torch.compile the native Transformer\'s blocks')
    cuda_graphs: bool = setting(False, "replay each batch shape's training step as a CUDA graph (the step is host-bound "
                                       'on a GPU; train_step.TrainStep)')
    fsdp: bool = setting(False, 'under torchrun: shard weights, gradients and AdamW state across the processes (FSDP2, per '
                                'block) instead of copying the model to each (DDP, the default); with --bf16, blocks compute '
                                'in bfloat16 from float32 weights')
    init_from: str | None = setting(None, "start from another run's weights (its checkpoint.pt: the same model shape and "
                                          'vocabulary), e.g. Coconut from a CoT run, as the paper does')
    eval_every: int = setting(0, 'also measure held-out accuracy every N epochs, into the log and the plot (0: only at the end)')
    show_thoughts: int = setting(0, "at each held-out evaluation, print to stderr the first N held-out examples' continuous thoughts "
                                    "(each one's top next tokens under the model's head) and answers (0: none)")
    tensorboard: bool = setting(False, "also log each epoch to TensorBoard, in the run's folder (pip install tensorboard)")
    time_budget: float | None = setting(None, 'seconds; stop after the epoch that crosses it, --resume later')
    max_nonfinite_steps: int = setting(10, 'optimizer steps with a non-finite loss or gradient are skipped; this many in '
                                           'a row stop the run as diverged (its last good checkpoint kept)')

    def __post_init__(self):
        if self.thought_loss is None:
            self.thought_loss = DEFAULT_THOUGHT_LOSS if self.method in THOUGHT_LOSS_BY_DEFAULT else 0.
        # every mistake named before any data is generated or any model built
        for name in ('train_size', 'eval_size', 'batch_size', 'grad_accum', 'dim', 'depth', 'heads', 'dim_head',
                     'num_residual_streams', 'thoughts_per_step', 'epochs_per_stage'):
            check_int(name, getattr(self, name), 1)
        for name in ('final_epochs', 'warmup_steps', 'mix_epochs'):
            check_int(name, getattr(self, name), 0)
        check_int('max_nonfinite_steps', self.max_nonfinite_steps, 1)
        if self.ff_dim_inner is not None:
            check_int('ff_dim_inner', self.ff_dim_inner, 1)
        check_int('eval_every', self.eval_every, 0)
        check_int('show_thoughts', self.show_thoughts, 0)
        if self.max_latent_stage is not None:
            check_int('max_latent_stage', self.max_latent_stage, 0)
        if self.tokens_per_stage is not None:
            check_int('tokens_per_stage', self.tokens_per_stage, 1)
        # a list, as JSON writes it back (config.json); the curriculum holds it as a tuple
        self.compress_thoughts = int_list('compress_thoughts', self.compress_thoughts)
        if self.compress_epochs is not None:
            check_int('compress_epochs', self.compress_epochs, 1)
            if not self.compress_thoughts:
                raise ValueError('compress_epochs sets the length of the compression stages: give --compress-thoughts too')
        if self.compress_thoughts and self.max_latent_stage == 0:
            raise ValueError('compress_thoughts compresses the thoughts of the removal stages: max_latent_stage 0 has none (leave it unset, '
                             'or give it at least 1)')
        for name, minimum, inclusive in (('lr', 0., False), ('weight_decay', 0., True), ('max_grad_norm', 0., False), ('lr_decay_epochs', 0., True),
                                         ('uniform_prob', 0., True), ('time_budget', 0., True), ('removal_smoothing', 0., False),
                                         ('thought_loss', 0., True), ('align_mse', 0., True), ('align_cosine', 0., True),
                                         ('mix_start', 0., True), ('halt_loss', 0., True), ('thought_token_loss', 0., True)):
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
            raise ValueError(f'thought_loss needs thought slots to align: method must be one of {list(ALIGNABLE_METHODS)}, got {self.method!r}')
        if self.mix_start > 1:
            raise ValueError(f'mix_start must be at most 1 (a blend weight), got {self.mix_start}')
        if self.mix_start > 0 and self.mix_epochs == 0:
            raise ValueError('mix_start needs mix_epochs >= 1: the epochs over which the blend anneals to 0')
        if not isinstance(self.thought_rms_match, bool):
            raise TypeError(f'thought_rms_match must be a bool, got {type(self.thought_rms_match).__name__}')
        if self.thought_token_loss > 0 and self.method not in ALIGNABLE_METHODS:
            raise ValueError(f'thought_token_loss trains thought slots to spell what they replaced: method must be one of {list(ALIGNABLE_METHODS)}, got {self.method!r}')
        if self.thought_token_heads is not None:
            check_int('thought_token_heads', self.thought_token_heads, 1)
        if self.thought_token_loss > 0 and self.thought_token_heads is None and self.tokens_per_stage is None:
            raise ValueError('thought_token_loss needs --thought-token-heads N, or --tokens-per-stage to count the tokens a thought replaces')
        if self.halt_loss > 0 and self.method not in FEEDBACK_METHODS:
            raise ValueError(f'halt_loss decides after each fed-back thought: method must be one of {list(FEEDBACK_METHODS)}, got {self.method!r}')
        for name in ('align_mse', 'align_cosine', 'thought_rms_match', 'mix_start'):
            if getattr(self, name) and self.method not in FEEDBACK_METHODS:
                raise ValueError(f'{name} acts on the continuous thoughts that are fed back: method must be one of {list(FEEDBACK_METHODS)}, got {self.method!r}')
        if self.task not in TASKS:
            raise ValueError(f'task must be one of {sorted(TASKS)}, got {self.task!r}')
        if not isinstance(self.task_kwargs, dict):
            raise TypeError(f'task_kwargs must be a dict, got {type(self.task_kwargs).__name__}')
        accepted = task_settings(self.task)
        for key in self.task_kwargs:
            if key not in accepted:
                # named here, not by the task's constructor: that runs only after the run directory is made
                raise ValueError(f"task_kwargs: {self.task} has no setting {key!r}; it accepts: {', '.join(accepted) or 'none'}")
        # the resolved device is the one saved in the checkpoint; whether this machine has it is the commands' and
        # train's to check (helpers.check_device): a checkpoint trained on a GPU must still read where there is none
        self.device = resolve_device(self.device)
        parse_device(self.device)
        for name in ('train_file', 'eval_file', 'hf_model', 'init_from'):
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
        if self.fsdp and (self.cuda_graphs or self.compile or self.checkpoint):
            raise ValueError('fsdp cannot be combined with cuda_graphs, compile or checkpoint (activation checkpointing)')
        if self.hf_model is not None and self.ff_dim_inner is not None:
            raise ValueError('ff_dim_inner sets the native Transformer\'s feedforward; a pretrained model (hf_model) has its own')
        if self.hf_model is not None and (self.cuda_graphs or self.compile):
            # both act on the native Transformer (its static cache, its blocks); a transformers model builds a new
            # cache object every call
            raise ValueError(f"{'cuda_graphs' if self.cuda_graphs else 'compile'} is for the native Transformer; it cannot be used with hf_model")

    def feedforward_width(self) -> int | None:
        """The native Transformer's gated feedforward width this configuration builds (None for a pretrained model)."""
        if self.hf_model is not None:
            return None
        return self.ff_dim_inner if self.ff_dim_inner is not None else glu_width(self.dim)

    def thought_tokens_per_thought(self) -> int:
        """m, the tokens each thought spells out with `thought_token_loss` (0 when off)."""
        if self.thought_token_loss == 0:
            return 0
        if self.thought_token_heads is not None:
            return self.thought_token_heads
        # the most tokens a thought replaces, at the stage of fewest thoughts a group
        return -(-self.tokens_per_stage // min((self.thoughts_per_step, *self.compress_thoughts)))

    @property
    def uses_thought_targets(self) -> bool:
        """Whether batches carry the words each thought replaced: for the thought loss, the alignment losses and
        the embedding mixing."""
        return self.thought_loss > 0 or self.align_mse > 0 or self.align_cosine > 0 or self.mix_start > 0

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
            thoughts_per_step = self.thoughts_per_step,
            max_latent_stage = max_latent_stage if max_latent_stage is not None else task_max_steps,
            epochs_per_stage = self.epochs_per_stage,
            pad_latent_to_max = self.pad_latent_to_max,
            uniform_prob = self.uniform_prob,
            one_thought_at_a_time = self.one_thought_at_a_time,
            tokens_per_stage = self.tokens_per_stage,
            removal_smoothing = self.removal_smoothing,
            compress_thoughts = tuple(self.compress_thoughts),
            compress_epochs = self.compress_epochs
        )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        # settings under the names earlier checkpoints saved them by
        values = {RENAMED.get(key, key): value for key, value in values.items()}
        # a checkpoint saved before exclude_held_out existed trained on unfiltered sets, one saved before the
        # thought loss existed trained without it, and one saved before ff_dim_inner existed has a feedforward of
        # width 4 x dim (the rule before the 2/3 one)
        earlier = {'exclude_held_out': False, 'thought_loss': 0.}
        if 'ff_dim_inner' not in values and values.get('hf_model') is None:
            earlier['ff_dim_inner'] = 4 * values.get('dim', cls.dim)
        return cls(**{**earlier, **{key: value for key, value in values.items() if key in known}})


RENAMED = dict(c_thought = 'thoughts_per_step')


def int_list(name: str, value) -> list[int]:
    """A setting of several ints as a list: from a list or tuple of ints, one int, or text of comma-separated ints
    (the command line's '4,2'); '' and [] are none. Anything else is a ValueError naming the setting."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(',')] if value.strip() else []
        if not all(re.fullmatch(r'-?[0-9]+', part) for part in parts):
            raise ValueError(f'{name} must be comma-separated integers such as 4,2, got {value!r}')
        return [int(part) for part in parts]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ValueError(f'{name} must be integers (a list, or text such as 4,2), got {value!r}')


def task_settings(task: str) -> dict:
    """The keyword settings `task`'s constructor takes (its `task_kwargs`), each with its default (`inspect.
    Parameter.empty` where it has none), in the constructor's order."""
    parameters = inspect.signature(TASKS[task]).parameters.values()
    return {parameter.name: parameter.default for parameter in parameters
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)}


def task_settings_text() -> str:
    """Every task's settings with their defaults, one task a line (the training command's help ends with it)."""
    lines = []
    for task in sorted(TASKS):
        settings = task_settings(task)
        listed = ', '.join(name if value is inspect.Parameter.empty else f'{name}={value!r}' for name, value in settings.items())
        lines.append(f'  {task}: {listed or "(no settings)"}')
    return 'task settings (--task-kwargs \'{"name": value}\'), with their defaults:\n' + '\n'.join(lines)


# how a setting's text on the command line becomes its value, by the field's annotation
# (a list of ints stays text here, '4,2', and TrainConfig reads it: `int_list`)
OPTION_TYPES = {'int': int, 'int | None': int, 'float': float, 'float | None': float, 'str': str, 'str | None': str, 'dict': json.loads,
                'list[int]': str}
OPTION_METAVARS = {int: 'N', float: 'X', str: 'TEXT', json.loads: 'JSON'}


def add_config_arguments(parser: argparse.ArgumentParser):
    """An option for every `TrainConfig` setting, from the field's default, annotation and help: `--name value`, or
    for a switch both `--name` and `--no-name` (a --config file may have turned on what the command line turns off)."""
    for setting_field in fields(TrainConfig):
        meta = setting_field.metadata
        default = setting_field.default_factory() if setting_field.default is MISSING else setting_field.default
        option = ['--' + (meta.get('cli') or setting_field.name.replace('_', '-'))] + ['--' + alias for alias in meta.get('aliases', ())]
        if setting_field.type == 'bool':
            # named by what it turns on; argparse adds the --no- form
            positive = (meta.get('cli') or setting_field.name.replace('_', '-')).removeprefix('no-')
            parser.add_argument('--' + positive, dest = setting_field.name, action = argparse.BooleanOptionalAction, default = default, help = meta['help'])
            continue
        kind = OPTION_TYPES[setting_field.type]
        metavar = None if meta.get('choices') else 'N,N,...' if setting_field.type == 'list[int]' else OPTION_METAVARS[kind]
        parser.add_argument(*option, dest = setting_field.name, type = kind, default = default, choices = meta.get('choices'),
                            metavar = metavar, help = meta['help'])


def config_file_spellings() -> dict[str, str]:
    """Each key a --config file may use, with the `TrainConfig` field it sets: the field's name, underscored or
    dashed, and its command-line names (`checkpoint-activations`, `c-thought`) except the `no-` switches, whose
    value would read backwards."""
    spellings = {}
    for setting_field in fields(TrainConfig):
        names = [setting_field.name, setting_field.metadata.get('cli') or setting_field.name, *setting_field.metadata.get('aliases', ())]
        for name in names:
            if not name.startswith('no-'):
                spellings[name] = spellings[name.replace('-', '_')] = spellings[name.replace('_', '-')] = setting_field.name
    return spellings


def config_file_values(path: str | os.PathLike) -> dict:
    """The settings of a YAML recipe (`train_toy.py --config FILE`): a mapping of `TrainConfig` settings to values,
    returned by field name. An unknown key, one setting given twice, or a value of the wrong kind is a one-line
    ValueError naming the file and the key; the ranges and combinations are `TrainConfig`'s to check."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f'--config {path}: cannot be read as YAML: {" ".join(str(error).split())}') from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f'--config {path}: expected a mapping of settings to values, got {type(values).__name__}')
    spellings = config_file_spellings()
    types = {setting_field.name: setting_field.type for setting_field in fields(TrainConfig)}
    settings = {}
    for key, value in values.items():
        name = spellings.get(str(key))
        if name is None:
            bare = str(key)[3:]
            hint = f' (write {spellings[bare]}: false)' if str(key)[:3] in ('no-', 'no_') and bare in spellings else ''
            raise ValueError(f'--config {path}: unknown setting {key!r}{hint}; the settings are: {", ".join(types)}')
        if name in settings:
            raise ValueError(f'--config {path}: {key!r} sets {name}, which the file already set')
        settings[name] = config_file_value(path, key, value, types[name])
    return settings


def config_file_value(path: Path, key: str, value, annotation: str):
    """`value` as the kind of setting its annotation names, or a ValueError naming the file and the key."""
    kind = annotation.removesuffix(' | None')
    if value is None and annotation.endswith(' | None'):
        return None
    if kind == 'list[int]':
        # a YAML list ([4, 2]), one number, or the command line's text ('4,2')
        try:
            return int_list(key, value)
        except ValueError:
            raise ValueError(f'--config {path}: {key} must be a list of integers such as [4, 2], got {value!r}') from None
    if kind == 'float' and isinstance(value, str):
        # PyYAML reads YAML 1.1, where 1e-3 (no dot) is text, not a number
        try:
            value = float(value)
        except ValueError:
            pass
    expected = dict(int = (int,), float = (int, float), str = (str,), bool = (bool,), dict = (dict,))[kind]
    if (isinstance(value, bool) and kind != 'bool') or not isinstance(value, expected):
        wanted = dict(int = 'an integer', float = 'a number', str = 'text', bool = 'true or false', dict = 'a mapping')[kind]
        raise ValueError(f'--config {path}: {key} must be {wanted}, got {value!r}')
    return float(value) if kind == 'float' else value


def config_from_arguments(arguments: argparse.Namespace | dict) -> TrainConfig:
    """The `TrainConfig` of parsed options (those `add_config_arguments` made; others are ignored)."""
    values = vars(arguments) if isinstance(arguments, argparse.Namespace) else arguments
    return TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.name in values})


# settings that change how a run is executed, not what it learns: a resumed run may differ in them
# (`hf_model` only names where a run's first weights came from: a resumed run takes them, and the tokenizer, from its
# checkpoint, so the folder may have moved or gone)
RESUME_MAY_CHANGE = ('time_budget', 'device', 'cuda_graphs', 'compile', 'max_nonfinite_steps', 'download', 'hf_model',
                     # a resumed run's weights are its checkpoint's; more final epochs extend a finished run; records
                     'init_from', 'final_epochs', 'eval_every', 'tensorboard', 'show_thoughts')
# not the latent alignment settings (align_mse, align_cosine, thought_rms_match, mix_start, mix_epochs): they change
# the objective or the inputs the model learns from, so a resumed run would not be the run its checkpoint began
# (and thought_rms_match adds a parameter, which the checkpoint's weights and optimizer state would lack)
