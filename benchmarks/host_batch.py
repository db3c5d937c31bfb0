"""The host's share of a graphed training step, per batch: checking the batch's ids (`step.check_batch`) and staging
it into the graph's buffers (as `TrainStep.replay` does), with torch's intra-op threads at 1 and at the default,
while `--busy N` other processes keep N cores busy (as the fresh-data workers do during a run).

    python benchmarks/host_batch.py                      # ProsQA batches of 128 at stages 0 and 6, 1 busy core
    python benchmarks/host_batch.py --busy 0 --threads 1,4

Nothing here needs a GPU: it is the CPU work each GPU step waits on. With a thread per core and some cores taken,
each of these small ops' parallel regions waits for its slowest thread (`training.loop.host_threads`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from coconut_pytorch.data.tokenizer import target_lengths  # noqa: E402
from coconut_pytorch.inputs import PAD_ID  # noqa: E402
from coconut_pytorch.training import TrainConfig  # noqa: E402
from coconut_pytorch.training.batches import EpochLayout  # noqa: E402
from coconut_pytorch.training.datasets import load_data  # noqa: E402
from coconut_pytorch.training.model import build_model  # noqa: E402
from coconut_pytorch.training.step import batch_inputs, check_batch  # noqa: E402


def spin(stop):
    """Keep one core busy until `stop` is set."""
    while not stop.is_set():
        sum(range(10_000))


def host_ms(model, batches) -> tuple[float, float]:
    """Mean ms a batch for the checks and for the staging copies."""
    start = time.perf_counter()
    for batch in batches:
        check_batch(model, batch, int(batch.num_thoughts.max()))
    checked = time.perf_counter()
    # as a graph's buffers: as wide as the longest batch (`TrainStep.pad_to`)
    widths = [max(batch_inputs(batch)[index].shape[-1] for batch in batches) for index in range(len(batch_inputs(batches[0])))]
    staging = [torch.empty((t.shape[0], width) if t.ndim == 2 else t.shape, dtype = t.dtype) for t, width in zip(batch_inputs(batches[0]), widths)]
    for batch in batches:
        for staged, given in zip(staging, batch_inputs(batch)):
            if given.ndim == 2:
                staged.fill_(PAD_ID)
                staged[:, :given.shape[1]].copy_(given)
            else:
                staged.copy_(given)
    done = time.perf_counter()
    return (checked - start) * 1e3 / len(batches), (done - checked) * 1e3 / len(batches)


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--stages', default = '0,6')
    parser.add_argument('--batches', type = int, default = 20)
    parser.add_argument('--batch-size', type = int, default = 128)
    parser.add_argument('--threads', default = None, help = 'comma-separated intra-op thread counts (default: 1 and torch\'s default)')
    parser.add_argument('--busy', type = int, default = 1, help = 'cores kept busy by other processes while timing')
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    try:
        threads = [int(t) for t in args.threads.split(',')] if args.threads else sorted({1, default_threads})
        stages = [int(s) for s in args.stages.split(',')]
    except ValueError:
        parser.error(f'--threads and --stages must be comma-separated integers, got {args.threads!r} and {args.stages!r}')
    if args.busy < 0 or args.batches < 1 or any(t < 1 for t in threads):
        parser.error('--busy must be >= 0, --batches and every --threads value >= 1')
    if any(not 0 <= stage <= 6 for stage in stages):
        parser.error(f'--stages must be from 0 to 6 (the ProsQA curriculum\'s stages), got {args.stages}')

    config = TrainConfig(task = 'prosqa', task_kwargs = {'steps': 'frontier'}, thought_loss = 1., max_latent_stage = 6,
                         train_size = args.batches * args.batch_size, eval_size = 1, batch_size = args.batch_size,
                         dim = 32, depth = 1, heads = 2, dim_head = 16, num_residual_streams = 1, device = 'cpu')
    train_set, _, tokenizer, max_steps = load_data(config)
    curriculum = config.curriculum(max_steps, longest_language = max(steps for steps, _ in target_lengths(train_set, tokenizer)))
    layout = EpochLayout(tokenizer, curriculum, args.batch_size, 0, with_thought_targets = True)
    model = build_model(config, len(tokenizer), curriculum)
    random.seed(0)

    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target = spin, args = (stop,), daemon = True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    try:
        print(f'ProsQA batches of {args.batch_size}, {args.busy} other cores busy, {multiprocessing.cpu_count()} cores, torch {torch.__version__}')
        print('| stage | thoughts | threads | check ms / batch | staging ms / batch |')
        print('|---|---|---|---|---|')
        for stage in stages:
            epoch = next(e for e in range(curriculum.total_epochs) if curriculum.stage_at_epoch(e) == stage)
            batches = layout.batches(train_set, epoch)
            for count in threads:
                torch.set_num_threads(count)
                host_ms(model, batches[:2])     # warm-up
                check, stage_copy = host_ms(model, batches)
                print(f'| {stage} | {int(batches[0].num_thoughts.max())} | {count} | {check:.2f} | {stage_copy:.2f} |', flush = True)
    finally:
        stop.set()
        for process in spinners:
            process.join()
        torch.set_num_threads(default_threads)


if __name__ == '__main__':
    main()
