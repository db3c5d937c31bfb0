"""Write a task's generated examples to a file (`coconut-export`), in the paper's JSON format or iCoT's line format:

    python -m coconut_pytorch.export --task prosqa --seed 0 --size 10000 --out prosqa_train.json
    python -m coconut_pytorch.export --task prosqa --held-out --seed 0 --size 500 --out prosqa_valid.json
    python -m coconut_pytorch.export --task running_sum --task-kwargs '{"num_digits": 4}' --seed 1 --size 100 --out sums.txt

`--out` ending in .json writes the JSON format, any other name iCoT's lines. `--held-out` writes the held-out set that a
training run with that --seed (and --eval-size equal to --size) generates and evaluates on, exactly; without it, the
examples `task.generate(size, seed)` draws (a run's first training set is those, less any held-out questions).
Files written here are read by `coconut-train --train-file/--eval-file` and `coconut-eval --data`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from coconut_pytorch.helpers import json_object
from coconut_pytorch.data.example import Example
from coconut_pytorch.data.loaders import save_icot_examples, save_json_examples
from coconut_pytorch.data.tasks import TASKS, get_task
from coconut_pytorch.training.fresh_sets import held_out_seed


def export_examples(task: str, size: int, seed: int, held_out: bool = False, task_kwargs: dict | None = None) -> list[Example]:
    """`size` examples of `task`: drawn with `seed`, or with `held_out`, the held-out set a training run of `seed`
    generates (`training.datasets.load_data`)."""
    if not isinstance(task, str):
        raise TypeError(f'task must be a str, got {type(task).__name__}')
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f'size must be an int >= 1, got {size!r}')
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f'seed must be an int, got {type(seed).__name__}')
    generator = get_task(task, **(task_kwargs or {}))
    return generator.generate(size, seed = held_out_seed(seed) if held_out else seed)


def save_examples(examples: Sequence[Example], path: str | Path):
    """The paper's JSON format for a .json `path`, iCoT's line format otherwise (what `load_examples` reads back)."""
    path = Path(path)
    if path.suffix.lower() == '.json':
        save_json_examples(examples, path)
    else:
        save_icot_examples(examples, path)


def main(argv: Sequence[str] | None = None):
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', required = True, help = f'one of {", ".join(sorted(TASKS))}')
    parser.add_argument('--task-kwargs', default = '{}', help = 'the task\'s settings as a JSON object, as a run\'s --task-kwargs')
    parser.add_argument('--seed', type = int, required = True, help = 'the run\'s --seed (with --held-out), or the generator\'s seed')
    parser.add_argument('--size', type = int, required = True, help = 'how many examples (with --held-out: the run\'s --eval-size)')
    parser.add_argument('--held-out', action = 'store_true', help = 'the held-out set a training run with --seed generates')
    parser.add_argument('--out', required = True, help = '.json: the paper\'s JSON format; anything else: iCoT\'s lines')
    args = parser.parse_args(argv)

    try:
        if args.size < 1:
            raise ValueError(f'--size must be >= 1, got {args.size}')
        task_kwargs = json_object(args.task_kwargs, '--task-kwargs')
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f'--out {out} is a directory')

        examples = export_examples(args.task, args.size, args.seed, held_out = args.held_out, task_kwargs = task_kwargs)
        save_examples(examples, out)
    except (ValueError, TypeError) as error:
        # an unknown task, a setting it refuses, an example iCoT's format cannot hold: one line, no traceback
        sys.exit(f'error: {error}')
    except OSError as error:
        sys.exit(f'error: --out {args.out} could not be written: {error}')

    which = f'held-out set of a run with seed {args.seed}' if args.held_out else f'seed {args.seed}'
    print(f'wrote {len(examples)} {args.task} examples ({which}) to {out}', file = sys.stderr)


if __name__ == '__main__':
    main()
