"""Training Coconut with the paper's curriculum, one module per job:

    config       TrainConfig: every setting of a run, with its help text; train_toy.py's options are made from it
    schedule     Curriculum: the stage of each epoch, and what a stage removes and puts in its place, per method
    batches      examples laid out at a stage, collated into batches with their thought targets; an epoch's batches
    datasets     a run's training and held-out sets and its tokenizer
    fresh_sets   a new training set every epoch (fresh_data), generated in worker processes ahead of use
    model        the run's model from its settings (the native Transformer, or a pretrained one)
    optim        AdamW, the learning-rate schedule, and the step that skips non-finite gradients
    step         one batch's forward and backward, eager or replayed as a CUDA graph
    checkpoints  atomic saves, checked loads (load_run, load_trained), resume checks, the run directory's lock
    loop         train(): open the run, train and save each epoch, finish with the plot and the held-out accuracy

The user-facing names below are importable from the package itself (everything else from its module); they load their
module on first use, so that importing one module (evaluation imports `checkpoints`) does not import the loop, which
imports evaluation.
"""

from importlib import import_module

PUBLIC = dict(
    TrainConfig = 'config', add_config_arguments = 'config', config_from_arguments = 'config',
    Curriculum = 'schedule', METHODS = 'schedule',
    train = 'loop', json_safe = 'loop',
    load_run = 'checkpoints', load_trained = 'checkpoints',
)

__all__ = list(PUBLIC)


def __getattr__(name: str):
    if name not in PUBLIC:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(import_module(f'{__name__}.{PUBLIC[name]}'), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
