"""Accuracy by proof depth (`coconut-depth-eval`): a ProsQA checkpoint on generated held-out sets of each depth,
including depths deeper than any it trained on (the paper's data has 3-6 steps), at one or several thought counts:

    python -m coconut_pytorch.depth_eval --checkpoint CKPT --depths 3 4 5 6 7 8 --size 500
    python -m coconut_pytorch.depth_eval --checkpoint CKPT --depths 6 7 8 --num-thoughts 6 7 8 --out depth.json
    python -m coconut_pytorch.depth_eval --checkpoint CKPT --depths 7 8 --task-kwargs '{"num_nodes": [24, 36]}'
    python -m coconut_pytorch.depth_eval --checkpoint CKPT --depths 6 7 8 --num-thoughts 8 --halt-threshold 0.9

Each depth's set is `ProsQATask(min_steps = depth, max_steps = depth)` with the run's own task settings (its step
style, its graph sizes; `--task-kwargs` overrides them), drawn from `depth_eval_seed(--seed, depth)`: a seed no
training run ever uses (see there), the same for every checkpoint, so that runs are compared on the same questions
and every thought count of one run on the same questions too. A run trained on files (`--train-file`) gets the
default generator; its vocabulary must then be ProsQA's.

With `--halt-threshold p` (a checkpoint trained with `--halt-loss`), each question thinks until its halting head's
probability exceeds p, at most the thought count of the column (`generate`'s learned halting); each cell then also
gives the thoughts used on average (`mean_num_thoughts` in the JSON).

Prints a markdown table of accuracy by depth (rows) and thought count (columns), then one JSON line with every
result; `--out` writes that JSON to a file too.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import torch

from coconut_pytorch.helpers import json_object
from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks import ProsQATask, get_task
from coconut_pytorch.data.tokenizer import max_target_length
from coconut_pytorch.evaluate import evaluate_examples
from coconut_pytorch.helpers import check_device, resolve_device
from coconut_pytorch.training.checkpoints import INFERENCE_TOKEN_MARGIN, LoadedRun, load_run
from coconut_pytorch.training.config import TrainConfig, task_settings

# far above every seed a training run uses (fresh_sets: its own seed, held_out_seed, fresh_data_seed and the
# derived_seed top-ups of each), for any run seed below 10**14 and fewer than 10**18 epochs: those stay below
# 10**12 + 1000 * ((seed + 1) * 2_000_003 + epochs) + 64 < 2**80
DEPTH_SEED_BASE = 2 ** 80


def depth_eval_seed(seed: int, depth: int) -> int:
    """Seed of the depth-`depth` evaluation set of `seed`: `(seed + 1) * 2**80 + depth`. Never a seed of a training
    run (`DEPTH_SEED_BASE`), and distinct for distinct (seed, depth) while depth < 2**80."""
    for name, value, minimum in (('seed', seed, 0), ('depth', depth, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f'{name} must be an int, got {type(value).__name__}')
        if value < minimum:
            # random.Random ignores a seed's sign: a negative seed would land among the training seeds
            raise ValueError(f'{name} must be >= {minimum}, got {value}')
    return (seed + 1) * DEPTH_SEED_BASE + depth


def depth_task(config: TrainConfig, depth: int, task_kwargs: dict | None = None) -> ProsQATask:
    """The generator of the depth-`depth` set for a run of `config`: its ProsQA settings (step style, graph sizes),
    then `task_kwargs`, with the proof depth fixed at `depth`."""
    if config.train_file is None and config.task != 'prosqa':
        raise ValueError(f'depth evaluation needs a ProsQA run; this checkpoint was trained on task {config.task!r}')
    accepted = task_settings('prosqa')
    for key in task_kwargs or {}:
        if key not in accepted:
            raise ValueError(f"task_kwargs: prosqa has no setting {key!r}; it accepts: {', '.join(accepted)}")
    settings = dict(config.task_kwargs) if config.train_file is None else {}
    settings.update(task_kwargs or {})
    settings.update(min_steps = depth, max_steps = depth)
    return get_task('prosqa', **settings)


def depth_sets(config: TrainConfig, depths: Sequence[int], size: int, seed: int = 0, task_kwargs: dict | None = None) -> dict[int, list[Example]]:
    """Each depth's evaluation set: `size` examples of `depth_task`, drawn from `depth_eval_seed(seed, depth)`."""
    return {depth: depth_task(config, depth, task_kwargs).generate(size, seed = depth_eval_seed(seed, depth)) for depth in depths}


def token_budget(run: LoadedRun, examples: Sequence[Example]) -> int:
    """Generation's token budget on `examples`: the run's, or where longer, their longest full language target and
    the run's margin. A model that writes its steps needs more tokens for a deeper proof than any it trained on, and
    would otherwise be cut off before its answer."""
    return max(run.max_new_tokens, max_target_length(examples, run.tokenizer) + INFERENCE_TOKEN_MARGIN)


def evaluate_depths(
    run: LoadedRun,
    depths: Sequence[int],
    size: int,
    seed: int = 0,
    num_thoughts: Sequence[int] | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    task_kwargs: dict | None = None,
    halt_threshold: float | None = None
) -> list[dict]:
    """Accuracy of `run` on each depth's set (`depth_sets`) at each thought count (default: the run's own), one dict
    per (depth, thought count): depth, num_thoughts, accuracy, n, seed, max_new_tokens (default: `token_budget`).
    With `halt_threshold`, each count is the most thoughts a question may take before its halting head stops it,
    and each dict adds halt_threshold and mean_num_thoughts."""
    thought_counts = list(num_thoughts) if num_thoughts is not None else [run.num_thoughts]
    results = []
    for depth, examples in depth_sets(run.config, depths, size, seed, task_kwargs).items():
        budget = max_new_tokens if max_new_tokens is not None else token_budget(run, examples)
        for count in thought_counts:
            result = evaluate_examples(run.model, run.tokenizer, examples, num_thoughts = count, max_new_tokens = budget,
                                       batch_size = batch_size, source = f'depth {depth}', autocast_dtype = autocast_dtype,
                                       halt_threshold = halt_threshold)
            results.append(dict(depth = depth, num_thoughts = count, accuracy = result['accuracy'], n = result['n'],
                                seed = depth_eval_seed(seed, depth), max_new_tokens = budget,
                                **{key: result[key] for key in ('halt_threshold', 'mean_num_thoughts') if key in result}))
    return results


def markdown_table(results: Sequence[dict]) -> str:
    """`evaluate_depths`' results as a markdown table: a row per depth, a column of accuracies per thought count
    (with learned halting, "at most N thoughts", each cell with the thoughts used on average)."""
    depths = list(dict.fromkeys(result['depth'] for result in results))
    counts = list(dict.fromkeys(result['num_thoughts'] for result in results))
    accuracy = {(result['depth'], result['num_thoughts']): result for result in results}
    halting = 'mean_num_thoughts' in results[0]
    cell = lambda result: f"{result['accuracy']:.3f}" + (f" ({result['mean_num_thoughts']:.2f} used)" if halting else '')
    lines = ['| depth | n | ' + ' | '.join(f"{'at most ' if halting else ''}{count} thoughts" for count in counts) + ' |',
             '|---|---|' + '---|' * len(counts)]
    for depth in depths:
        n = accuracy[depth, counts[0]]['n']
        lines.append(f'| {depth} | {n} | ' + ' | '.join(cell(accuracy[depth, count]) for count in counts) + ' |')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None):
    """Evaluate a ProsQA checkpoint by proof depth with the options of `argv` (default `sys.argv[1:]`): print a
    markdown table and one JSON line."""
    parser = argparse.ArgumentParser(description = 'Accuracy of a ProsQA checkpoint by proof depth, on generated held-out sets.')
    parser.add_argument('--checkpoint', required = True, help = 'checkpoint.pt of a ProsQA run')
    parser.add_argument('--depths', type = int, nargs = '+', required = True, help = 'proof depths to evaluate, e.g. 3 4 5 6 7 8')
    parser.add_argument('--size', type = int, default = 500, help = 'examples per depth')
    parser.add_argument('--seed', type = int, default = 0, help = 'seeds the sets (depth_eval_seed: never a training seed); the same for every checkpoint by default')
    parser.add_argument('--num-thoughts', type = int, nargs = '+', default = None, help = "continuous thoughts, one or several counts (default: the checkpoint's)")
    parser.add_argument('--task-kwargs', default = '{}', help = "ProsQA settings over the run's own, as JSON, e.g. '{\"num_nodes\": [24, 36]}'")
    parser.add_argument('--device', default = 'auto', help = 'auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:1, ...')
    parser.add_argument('--batch-size', type = int, default = 256)
    parser.add_argument('--max-new-tokens', type = int, default = None, help = "token budget (default: the checkpoint's, or a set's longest language target where longer)")
    parser.add_argument('--bf16', action = 'store_true')
    parser.add_argument('--halt-threshold', type = float, default = None, metavar = 'P',
                        help = 'learned halting (a checkpoint trained with --halt-loss): each question stops thinking after the first '
                               'thought whose halting probability exceeds P, in (0, 1), at most --num-thoughts thoughts')
    parser.add_argument('--out', default = None, help = 'also write the JSON results here')
    args = parser.parse_args(argv)

    for name, values, minimum in (('--depths', args.depths, 1), ('--num-thoughts', args.num_thoughts or [], 0)):
        for value in values:
            if value < minimum:
                parser.error(f'{name} must be >= {minimum}, got {value}')
    for name, value, minimum in (('--size', args.size, 1), ('--seed', args.seed, 0), ('--batch-size', args.batch_size, 1),
                                 ('--max-new-tokens', args.max_new_tokens, 1)):
        if value is not None and value < minimum:
            parser.error(f'{name} must be >= {minimum}, got {value}')
    if args.halt_threshold is not None and not (math.isfinite(args.halt_threshold) and 0 < args.halt_threshold < 1):
        parser.error(f'--halt-threshold must be in (0, 1), got {args.halt_threshold}')
    if args.halt_threshold is not None and 0 in (args.num_thoughts or []):
        parser.error('--halt-threshold needs --num-thoughts >= 1: a question thinks at least one thought before its head decides')
    depths = list(dict.fromkeys(args.depths))       # a depth asked twice is evaluated once
    num_thoughts = list(dict.fromkeys(args.num_thoughts)) if args.num_thoughts is not None else None

    try:
        task_kwargs = json_object(args.task_kwargs, '--task-kwargs')
        if args.out is not None:
            # before the model loads and generates: a path that cannot be written would waste the whole evaluation
            out = Path(args.out)
            if out.is_dir():
                raise ValueError(f'--out {out} is a directory')
            if not out.parent.is_dir():
                raise ValueError(f'--out: the directory {out.parent} does not exist')
        check_device(args.device, '--device')

        run = load_run(args.checkpoint, device = resolve_device(args.device))
        # every set's settings checked before the first is evaluated: a depth the graph sizes cannot hold fails now
        for depth in depths:
            depth_task(run.config, depth, task_kwargs)
        results = evaluate_depths(
            run, depths, args.size, seed = args.seed, num_thoughts = num_thoughts, max_new_tokens = args.max_new_tokens,
            batch_size = args.batch_size, autocast_dtype = torch.bfloat16 if args.bf16 else None, task_kwargs = task_kwargs,
            halt_threshold = args.halt_threshold
        )
    except (ValueError, TypeError) as error:
        # a checkpoint of another task, settings the generator refuses, a vocabulary that is not ProsQA's: one line
        parser.exit(2, f'error: {error}\n')

    config = run.config
    summary = dict(checkpoint = str(args.checkpoint), method = config.method,
                   task = config.task if config.train_file is None else str(config.train_file),
                   task_kwargs = {**(config.task_kwargs if config.train_file is None else {}), **task_kwargs},
                   size = args.size, seed = args.seed, results = results)
    if args.out is not None:
        try:
            Path(args.out).write_text(json.dumps(summary, indent = 2) + '\n', encoding = 'utf-8')
        except OSError as error:
            parser.exit(2, f'error: --out {args.out} could not be written: {error}\n')
    print(markdown_table(results))
    print(json.dumps(summary))


if __name__ == '__main__':
    main()
