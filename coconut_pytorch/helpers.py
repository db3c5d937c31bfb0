"""Small helpers used across the package, defined once."""

from contextlib import contextmanager

import torch


def exists(v) -> bool:
    return v is not None


def default(v, d):
    return v if exists(v) else d


@contextmanager
def in_eval_mode(model: torch.nn.Module):
    """`model` in eval mode for the block, then back in the mode it was in, however the block ends."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# devices: one rule for what 'auto' means and one check of what this machine has, for training and evaluation alike

DEVICE_KINDS = ('cpu', 'cuda', 'mps')


def resolve_device(device: str) -> str:
    """'auto' is 'cuda' when torch sees a GPU, else 'cpu'; any other device is returned as given."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


def parse_device(device: str, name: str = 'device') -> torch.device:
    """`device` ('auto' resolved) as a `torch.device`, or a one-line ValueError naming `name` if it is not a device
    this package runs on. Says nothing of whether this machine has it (`check_device` does): a checkpoint trained on
    a GPU must still read where there is none."""
    if not isinstance(device, str):
        raise TypeError(f'{name} must be a str such as cpu, cuda or cuda:1, got {type(device).__name__}')
    try:
        parsed = torch.device(resolve_device(device))
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in DEVICE_KINDS:
        raise ValueError(f"{name} must be auto, cpu, cuda or cuda:N (or mps), got {device!r}")
    return parsed


def check_device(device: str, name: str = 'device') -> torch.device:
    """`device` ('auto' resolved) as a `torch.device` this machine has, or a one-line ValueError saying why not: the
    commands call it before they load or create anything."""
    parsed = parse_device(device, name)
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'{name} {device!r}: this torch build sees no CUDA GPU')
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f'{name} {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0')
    if parsed.type == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f'{name} {device!r}: this machine has no MPS device')
    return parsed


def json_object(text: str, name: str) -> dict:
    """`text` read as a JSON object (a command's --task-kwargs), or a one-line ValueError naming `name`."""
    import json
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f'{name} is not JSON: {error}') from None
    if not isinstance(value, dict):
        raise ValueError(f'{name} must be a JSON object, got {type(value).__name__}')
    return value
