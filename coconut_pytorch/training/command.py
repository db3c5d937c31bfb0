"""Train Coconut on a reasoning task, from scratch, with the paper's curriculum (`train_toy.py`, `coconut-train`).

    python train_toy.py                                  # running sums on CPU, about a minute
    python train_toy.py --task prosqa --device cuda --bf16 --cuda-graphs   # graph-replayed steps: several times faster
    python train_toy.py --train-file prosqa_train.json --eval-file prosqa_valid.json   # the paper's data files
    python train_toy.py --method cot                     # or no_cot, pause, coconut_no_curriculum, ...
    python train_toy.py --resume                         # continue the latest run of this task and method
    python train_toy.py --method coconut --init-from runs/running_sum-cot-.../checkpoint.pt   # from a CoT run's weights
    python train_toy.py --config recipes/prosqa.yaml     # a recipe's settings; options override them
    python train_toy.py --hf-model path/to/gpt2 --lr 1e-4   # a pretrained transformers model and its tokenizer
    torchrun --standalone --nproc_per_node 2 train_toy.py --device cuda   # one process per GPU (DDP; --fsdp shards)

Each run gets its own folder (runs/TASK-METHOD-TIME unless --out names one) holding checkpoint.pt, config.json,
metrics.jsonl (a line per epoch), training.png and a stage{k}.pt snapshot per curriculum stage. Each epoch prints
one JSON line, and the last line printed is one JSON object: accuracy (exact match through generation on held-out
examples), n, seconds, method, task, and more. Messages for people go to stderr. Ctrl-C stops at once; the
checkpoint keeps the last finished epoch and the command to continue is printed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from coconut_pytorch.distributed import World, join_world, leave_world
from coconut_pytorch.helpers import check_device
from coconut_pytorch.training.config import TrainConfig, add_config_arguments, config_file_values, config_from_arguments, task_settings_text
from coconut_pytorch.training.loop import json_safe, train


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def build_parser() -> argparse.ArgumentParser:
    """The command's options: every `TrainConfig` setting, --config, and where the run goes; its help ends with
    each task's settings."""
    parser = argparse.ArgumentParser(prog = 'train_toy.py', description = __doc__, formatter_class = HelpFormatter, epilog = task_settings_text())
    # every training setting, with its help, from TrainConfig's fields: nothing is written twice
    add_config_arguments(parser)
    arg = parser.add_argument
    arg('--config', metavar = 'FILE', help = 'a YAML recipe (recipes/*.yaml) mapping settings to values: they replace the '
                                             'defaults, and options given here override them')
    arg('--out', default = None, help = "the run's folder (default: a new runs/TASK-METHOD-TIME; with --resume, the latest one of the task and method)")
    arg('--resume', action = 'store_true', help = 'continue the run in --out where it stopped (the same arguments; more --final-epochs extend a finished run)')
    arg('--overwrite', action = 'store_true', help = 'replace the run already in --out (without it, a new run refuses to)')
    arg('--allow-changed-data', action = 'store_true', help = 'with --resume: continue although --train-file or --eval-file changed since the checkpoint')
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (`argv`, default `sys.argv[1:]`), over the defaults of its --config file if it names one.
    A file that cannot be used is a one-line error (exit status 1), before anything is created."""
    parser = build_parser()
    # parsed twice: the first finds the file, whose values become the defaults the second reads the options over
    config_file = parser.parse_args(argv).config
    if config_file is not None:
        try:
            parser.set_defaults(**config_file_values(config_file))
        except ValueError as error:
            sys.exit(f'error: {error}')
    return parser.parse_args(argv)


def tell(text: str):
    """A message for the person at the terminal: stderr, so that stdout holds only JSON lines."""
    print(text, file = sys.stderr, flush = True)


def new_run_folder(config: TrainConfig) -> Path:
    """runs/TASK-METHOD-TIME: every run its own folder, so that no run replaces another's."""
    name = Path(config.train_file).stem if config.train_file is not None else config.task
    folder = Path('runs') / f"{name}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in range(2, 1000):
        if not folder.exists():
            break
        folder = folder.with_name(f'{folder.name.rsplit("~", 1)[0]}~{suffix}')    # two runs started in one second
    return folder


def latest_run(config: TrainConfig) -> Path:
    """The most recent run folder of the task and method holding a checkpoint (for --resume without --out)."""
    name = Path(config.train_file).stem if config.train_file is not None else config.task
    runs = sorted(path for path in Path('runs').glob(f'{name}-{config.method}-*') if (path / 'checkpoint.pt').is_file())
    if not runs:
        raise ValueError(f'--resume: no run of {name} / {config.method} with a checkpoint under runs/; name the run with --out')
    return runs[-1]


def exit_on_sigterm(signum, frame):
    # as Ctrl-C does: unwind, so the data workers stop and the run's lock is released (SIGKILL needs neither:
    # the workers watch this process, and the kernel drops the lock)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None):
    """Train with the options of `argv` (default `sys.argv[1:]`) and print the result as one JSON line."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    args = vars(parse_args(argv))
    out, resume, overwrite, allow_changed_data = args.pop('out'), args.pop('resume'), args.pop('overwrite'), args.pop('allow_changed_data')
    args.pop('config')
    # a bad setting or data file is the user's to fix: say what and where, without a traceback, before --out exists
    try:
        config = config_from_arguments(args)
        check_device(config.device)
        out = Path(out) if out is not None else latest_run(config) if resume else new_run_folder(config)
    except (ValueError, TypeError) as error:
        sys.exit(f'error: {error}')
    world = World()
    try:
        # under torchrun: join its process group; every rank trains its part, rank 0 writes and prints
        join_world(config.device)
        world = World.current()
        result = train(config, out, resume = resume, progress = tqdm, overwrite = overwrite, allow_changed_data = allow_changed_data,
                       say = tell if world.is_main else None)
    except ValueError as error:
        sys.exit(f'error: {error}')
    except KeyboardInterrupt:
        # Ctrl-C: every finished epoch is saved already; say so, and how to go on, instead of a traceback
        if world.is_main:
            kept = f'{out / "checkpoint.pt"} keeps the last finished epoch' if (out / 'checkpoint.pt').is_file() else 'no epoch had finished, so nothing was saved'
            again = [arg for arg in (argv if argv is not None else sys.argv[1:]) if arg not in ('--resume', '--overwrite')]
            if '--out' not in again and not any(arg.startswith('--out=') for arg in again):
                again += ['--out', str(out)]
            tell(f'interrupted: {kept}; continue with:\n  python train_toy.py {shlex.join(again + ["--resume"])}')
        sys.exit(130)
    finally:
        leave_world()
    if world.is_main:
        print(json.dumps(json_safe(result), allow_nan = False))
        if 'plot' in result:
            tell(f"plot: {result['plot']}   metrics: {result['metrics']}")
    if result.get('stopped') == 'diverged':
        sys.exit(f'error: {result["reason"]}')


if __name__ == '__main__':
    main()
