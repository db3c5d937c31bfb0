"""Train Coconut on a reasoning task, from scratch, with the paper's curriculum (`train_toy.py`, `coconut-train`).

    python train_toy.py                                  # running sums on CPU, about a minute
    python train_toy.py --task prosqa --device cuda --bf16 --cuda-graphs   # graph-replayed steps: several times faster
    python train_toy.py --train-file prosqa_train.json --eval-file prosqa_valid.json   # the paper's data files
    python train_toy.py --method cot                     # or no_cot, pause, coconut_no_curriculum, ...
    python train_toy.py --resume                         # continue the run in --out where it stopped
    python train_toy.py --hf-model path/to/gpt2 --lr 1e-4   # a pretrained transformers model and its tokenizer
    torchrun --standalone --nproc_per_node 2 train_toy.py --device cuda   # one process per GPU (DDP; --fsdp shards)

The last line printed is one JSON object: accuracy (exact match through generation on held-out examples), n,
seconds, method, task, and more.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from tqdm import tqdm

from coconut_pytorch.distributed import World, join_world, leave_world
from coconut_pytorch.training.config import add_config_arguments, config_from_arguments
from coconut_pytorch.training.loop import json_safe, train


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def parse_args():
    parser = argparse.ArgumentParser(prog = 'train_toy.py', description = __doc__, formatter_class = HelpFormatter)
    # every training setting, with its help, from TrainConfig's fields: nothing is written twice
    add_config_arguments(parser)
    arg = parser.add_argument
    arg('--out', default = 'runs/toy', help = 'the run directory: checkpoint, plot, lock')
    arg('--resume', action = 'store_true', help = 'continue the run in --out where it stopped (the same arguments)')
    arg('--overwrite', action = 'store_true', help = 'replace the run already in --out (without it, a new run refuses to)')
    arg('--allow-changed-data', action = 'store_true', help = 'with --resume: continue although --train-file or --eval-file changed since the checkpoint')
    return parser.parse_args()


def exit_on_sigterm(signum, frame):
    # as Ctrl-C does: unwind, so the data workers stop and the run's lock is released (SIGKILL needs neither:
    # the workers watch this process, and the kernel drops the lock)
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    args = vars(parse_args())
    out, resume, overwrite, allow_changed_data = args.pop('out'), args.pop('resume'), args.pop('overwrite'), args.pop('allow_changed_data')
    # a bad setting or data file is the user's to fix: say what and where, without a traceback
    try:
        config = config_from_arguments(args)
    except (ValueError, TypeError) as error:
        sys.exit(f'error: {error}')
    try:
        # under torchrun: join its process group; every rank trains its part, rank 0 writes and prints
        join_world(config.device)
        world = World.current()
        result = train(config, out, resume = resume, progress = tqdm, overwrite = overwrite, allow_changed_data = allow_changed_data)
    except ValueError as error:
        sys.exit(f'error: {error}')
    finally:
        leave_world()
    if world.is_main:
        print(json.dumps(json_safe(result), allow_nan = False))
    if result.get('stopped') == 'diverged':
        sys.exit(f'error: {result["reason"]}')


if __name__ == '__main__':
    main()
