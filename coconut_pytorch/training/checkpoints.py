"""A run's files on disk: checkpoints written so that no crash leaves half of one, read back through one checked
path, and a lock so that two runs never share an output directory.

- `save_checkpoint` writes to a temporary file of its own in the same directory, flushes it to the disk, then renames
  it over the checkpoint: a reader sees the old checkpoint or the new one, never a mix, and two writers never share a
  temporary file.
- `read_checkpoint` loads on the CPU with `weights_only = True` (a checkpoint is data: it cannot run code), then
  checks its structure, and that every weight is finite, before anything is built from it. Every error is one
  `ValueError` line naming the file and what is wrong.
- `check_weights` compares the weights' names and shapes with those of a model built on the meta device (no
  memory), so a checkpoint whose configuration asks for a huge model is refused before anything is allocated.
- `RunLock` holds an exclusive lock on `<out>/run.lock` (with the holder's pid in it) for a run's lifetime; the
  operating system releases it when the process ends, however it ends, so a lock left by a killed run is stale by
  construction and is taken over.
- `file_digest` is the SHA-256 of a data file: a resumed run refuses training files that changed under it.
- `load_run` builds a checkpoint's model, tokenizer and settings: the one path by which evaluation and `--resume`
  read checkpoints; `check_resumable` says whether a run of given settings may continue one.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from coconut_pytorch.coconut import Coconut
from coconut_pytorch.data.tokenizer import Tokenizer, tokenizer_from_dict
from coconut_pytorch.training.config import RESUME_MAY_CHANGE, TrainConfig
from coconut_pytorch.training.model import build_model
from coconut_pytorch.training.schedule import Curriculum

CHECKPOINT_NAME = 'checkpoint.pt'
LOCK_NAME = 'run.lock'

# what `train` writes; `load_trained` needs the first five, `--resume` all of them
INFERENCE_KEYS = ('config', 'model', 'tokenizer', 'curriculum', 'inference')
TRAINING_KEYS = INFERENCE_KEYS + ('optimizer', 'epoch', 'step', 'history', 'elapsed')


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# writing

def save_checkpoint(state: dict, path: str | Path):
    """Write `state` to `path` atomically and durably: a unique temporary file in the same directory, fsync, rename
    over `path`, fsync of the directory (so the rename itself survives a power cut)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir = path.parent, prefix = f'.{path.name}.', suffix = '.tmp')
    try:
        # mkstemp makes the file private (0600); a checkpoint gets the mode any new file would
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~current_umask())
        with os.fdopen(handle, 'wb') as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        # interrupted or failed: leave no temporary file behind
        Path(temporary).unlink(missing_ok = True)
        raise
    fsync_directory(path.parent)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(directory: Path):
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform (Windows): the file itself is on disk already
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# reading

def read_checkpoint(path: str | Path, keys: tuple[str, ...] = INFERENCE_KEYS) -> dict:
    """The state saved at `path`, on the CPU, after checking that it is a checkpoint of `train` holding `keys`, of
    the right types, with finite weights. Raises one-line `ValueError`s naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'checkpoint {path} does not exist')
    if path.stat().st_size == 0:
        raise ValueError(f'checkpoint {path} is empty (0 bytes): it was not written by a finished save')
    try:
        # on the CPU whatever the run's device: a device string like 'cpu:0' or 'cuda:1' is no storage location,
        # and a checkpoint from a GPU must load where there is none
        state = torch.load(path, map_location = 'cpu', weights_only = True)
    except Exception as error:
        raise ValueError(f'checkpoint {path} could not be read (truncated or not a checkpoint?): {first_line(error)}') from None

    if not isinstance(state, dict):
        raise ValueError(f'checkpoint {path} was not written by coconut_pytorch.training (it holds a {type(state).__name__}, not a dict)')
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f'checkpoint {path} was not written by coconut_pytorch.training (missing: {", ".join(missing)})')

    for key in ('config', 'model', 'tokenizer', 'curriculum', 'inference', 'optimizer'):
        if key in keys and not isinstance(state[key], dict):
            raise ValueError(f'checkpoint {path}: {key} must be a dict, got {type(state[key]).__name__}')

    weights = state['model']
    for name, value in weights.items():
        if not isinstance(name, str) or not torch.is_tensor(value):
            raise ValueError(f'checkpoint {path}: model weights must map names to tensors, got {name!r}: {type(value).__name__}')

    inference = state['inference']
    for name, minimum in (('num_thoughts', 0), ('max_new_tokens', 1)):
        value = inference.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f'checkpoint {path}: inference.{name} must be an int >= {minimum}, got {value!r}')

    if 'epoch' in keys:
        for name in ('epoch', 'step'):
            if not isinstance(state[name], int) or isinstance(state[name], bool) or state[name] < 0:
                raise ValueError(f'checkpoint {path}: {name} must be an int >= 0, got {state[name]!r}')
        if not isinstance(state['history'], list):
            raise ValueError(f'checkpoint {path}: history must be a list, got {type(state["history"]).__name__}')
        if not isinstance(state['elapsed'], (int, float)) or not math.isfinite(state['elapsed']):
            raise ValueError(f'checkpoint {path}: elapsed must be a finite number, got {state["elapsed"]!r}')

    # a diverged run's weights answer nothing: refuse them rather than evaluate them silently to 0
    bad = first_non_finite(weights)
    if bad is not None:
        raise ValueError(f'checkpoint {path} holds non-finite weights ({bad}): it was saved from a diverged run')
    if 'optimizer' in keys:
        bad = first_non_finite(dict(tensors_in(state['optimizer'].get('state', {}))))
        if bad is not None:
            raise ValueError(f'checkpoint {path} holds a non-finite optimizer state ({bad}): it cannot be resumed')
    return state


def tensors_in(value, prefix: str = '') -> list[tuple[str, Tensor]]:
    """Every tensor in nested dicts and lists, with its path."""
    if torch.is_tensor(value):
        return [(prefix, value)]
    if isinstance(value, Mapping):
        return [item for key, inner in value.items() for item in tensors_in(inner, f'{prefix}.{key}' if prefix else str(key))]
    if isinstance(value, (list, tuple)):
        return [item for index, inner in enumerate(value) for item in tensors_in(inner, f'{prefix}[{index}]')]
    return []


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_weights(path: str | Path, weights: Mapping[str, Tensor], expected: Mapping[str, Tensor]):
    """Raise unless `weights` has exactly the names and shapes of `expected` (a meta model's `state_dict()`)."""
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        raise ValueError(f'checkpoint {path}: its weights do not match the model its configuration describes '
                         f'(missing: {", ".join(missing[:3]) or "none"}{"..." if len(missing) > 3 else ""}; '
                         f'unexpected: {", ".join(unexpected[:3]) or "none"}{"..." if len(unexpected) > 3 else ""})')
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ValueError(f'checkpoint {path}: weight {name} has shape {tuple(weights[name].shape)}, but its '
                             f'configuration describes {tuple(tensor.shape)}')


# what a trained model needs at inference

INFERENCE_TOKEN_MARGIN = 8     # generation may run this far past the longest training target


def inference_info(curriculum: Curriculum, stage: int, max_target_length: int) -> dict:
    """How a model trained up to `stage` is run: that stage's thoughts (the most any example got) and a token budget."""
    return dict(num_thoughts = curriculum.most_thoughts(stage), max_new_tokens = max_target_length + INFERENCE_TOKEN_MARGIN, stage = stage, final_stage = curriculum.final_stage)


# data files

def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def data_digests(config: TrainConfig) -> dict[str, str]:
    """SHA-256 of the data files a run reads, by setting name: a resumed run refuses files that changed under it."""
    return {name: file_digest(getattr(config, name)) for name in ('train_file', 'eval_file') if getattr(config, name) is not None}


# the run lock

class RunLockError(ValueError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive lock on `<directory>/run.lock` for as long as a run writes there.

    With `fcntl` (Linux, macOS) the lock is the kernel's `flock`: taken atomically, and released by the kernel when
    the holder exits for any reason (SIGKILL included), so a file left by a dead run is never mistaken for a live
    one. The file holds the holder's pid, for the error message. Elsewhere the file is created exclusively and a
    lock whose pid is no longer alive is stale and taken over.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_NAME
        self.handle: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or 'unknown'
        except OSError:
            return 'unknown'

    def refuse(self):
        raise RunLockError(f'{self.path.parent} is in use by another run (pid {self.holder()}, lock {self.path}); '
                           f'give each run its own --out, or wait for that one to finish')

    def acquire(self):
        try:
            import fcntl
        except ImportError:
            return self.acquire_by_pid()

        for _ in range(16):
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(handle)
                self.refuse()
            # the holder before us may have removed the file between our open and our lock: then we locked a file
            # nobody else will see, and must lock the one now at the path
            try:
                same = os.path.samestat(os.fstat(handle), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(handle, 0)
                os.write(handle, str(os.getpid()).encode())
                self.handle = handle
                return
            os.close(handle)
        self.refuse()

    def acquire_by_pid(self):
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder.isdigit() and not pid_alive(int(holder)):
                    self.path.unlink(missing_ok = True)     # stale: its run is gone
                    continue
                self.refuse()
            os.write(handle, str(os.getpid()).encode())
            self.handle = handle
            return
        self.refuse()

    def release(self):
        if self.handle is None:
            return
        # unlink before unlocking: a run that opens the path after this creates a fresh file
        self.path.unlink(missing_ok = True)
        os.close(self.handle)   # closing releases the flock
        self.handle = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# loading a run

class LoadedRun(NamedTuple):
    """A checkpoint's model, tokenizer and settings (`load_run`, `coconut_pytorch.load`), and text in, text out:

        run = coconut_pytorch.load('runs/running_sum-coconut-TIME/checkpoint.pt')
        run.answer(['3 1 4 1'])     # thinks for the checkpoint's own number of thoughts
    """

    model: Coconut              # in eval mode, on the device asked for
    tokenizer: Tokenizer
    config: TrainConfig
    curriculum: Curriculum
    state: dict                 # everything the checkpoint holds, on the CPU

    @property
    def num_thoughts(self) -> int:
        """The thoughts the run was trained to think at its last stage: what `answer` uses by default."""
        return self.state['inference']['num_thoughts']

    @property
    def max_new_tokens(self) -> int:
        """The token budget of generation: the run's longest training target and a margin."""
        return self.state['inference']['max_new_tokens']

    def answer(
        self,
        questions: Sequence[str],
        num_thoughts: int | None = None,
        max_new_tokens: int | None = None,
        with_text: bool = False,
        batch_size: int = 256
    ) -> list[str] | list[tuple[str, str]]:
        """Each question's answer by greedy generation (`evaluate.answer_questions`), after the checkpoint's own
        number of thoughts and within its token budget unless given. With `with_text`, (answer, everything the model
        wrote) pairs, language steps included."""
        for name, value, minimum in (('num_thoughts', num_thoughts, 0), ('max_new_tokens', max_new_tokens, 1), ('batch_size', batch_size, 1)):
            if value is None and name != 'batch_size':
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f'{name} must be an int, got {type(value).__name__}')
            if value < minimum:
                raise ValueError(f'{name} must be >= {minimum}, got {value}')

        # here, not at the top: evaluation imports this module
        from coconut_pytorch.evaluate import answer_questions
        return answer_questions(
            self.model, self.tokenizer, questions,
            num_thoughts = self.num_thoughts if num_thoughts is None else num_thoughts,
            max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            batch_size = batch_size,
            with_text = with_text
        )


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
        # the feedforward's width counts as the width it builds: None (the rule) and the rule's number are one model
        same_width = run.config.feedforward_width() == config.feedforward_width()
        changed = [f'{f.name} ({getattr(run.config, f.name)!r} in the checkpoint, {getattr(config, f.name)!r} now)'
                   for f in fields(TrainConfig) if getattr(run.config, f.name) != getattr(config, f.name) and f.name not in RESUME_MAY_CHANGE
                   and not (f.name == 'ff_dim_inner' and same_width)]
        if changed:
            hint = ('; coconut runs default to the thought loss since the thirteenth session: give --thought-loss '
                    f'{run.config.thought_loss:g} to resume this one as it was trained') if any(c.startswith('thought_loss ') for c in changed) else ''
            if any(c.startswith('ff_dim_inner ') for c in changed) and run.config.ff_dim_inner is not None:
                hint += (f'; the feedforward has been 2/3 as wide by default since the fourteenth session: give --ff-dim-inner '
                         f'{run.config.ff_dim_inner} to resume this one as it was made')
            raise ValueError(f'--resume: the configuration differs from the checkpoint in {", ".join(changed)}{hint}')
    saved, now = run.state.get('data_digests'), data_digests(config)
    if saved is not None and saved != now and not allow_changed_data:
        changed = sorted(name for name in set(saved) | set(now) if saved.get(name) != now.get(name))
        raise ValueError(f'--resume: the data in {", ".join(changed)} changed since the checkpoint was written ({path}); '
                         f'resume anyway with --allow-changed-data, or start a new run')
