"""Training throughput on a task's real batches, per curriculum stage: eager steps against CUDA-graph replays.

    python benchmarks/train_throughput.py                       # ProsQA frontier steps, the GPU results' model
    python benchmarks/train_throughput.py --stages 0,6 --batches 20
    python benchmarks/train_throughput.py --device cpu --small  # smoke run
    python benchmarks/train_throughput.py --thought-loss 1 --pad-to-longest   # as the seventh session's ProsQA runs
    python benchmarks/train_throughput.py --task multiplication --task-kwargs '{"num_digits_a":4,"num_digits_b":4}' \
        --tokens-per-stage 8 --thoughts-per-step 8 --max-latent-stage 6 --stages 0,6   # one thought per language token

For each stage it lays out one generated set at that stage (as `train` does), then times `--batches` optimizer
steps (forward, backward, clip, AdamW; bf16 autocast on CUDA) after `--warmup` untimed ones, with
`TrainStep(cuda_graphs=False)` and with `cuda_graphs=True` (CUDA only; an untimed pass over the batches captures
each shape's graph first, and its time is printed apart). Prints examples/s for each and their ratio, the time of the last graph's bare
replays (the step's device time, without batch copies or AdamW), and the losses of the two modes' first
steps (from the same weights, they should agree to bf16 precision). `--profile STAGE` prints a profiler table.
`--thought-loss W` adds the thought alignment loss (batches carry thought targets), and `--pad-to-longest` pads
every graphed batch to the set's longest prompt and answer, as `train` pads an epoch's batches.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from coconut_pytorch.training.batches import collate, staged_examples  # noqa: E402
from coconut_pytorch.training.step import TrainStep  # noqa: E402
from coconut_pytorch.training import TrainConfig  # noqa: E402
from coconut_pytorch.training.datasets import load_data  # noqa: E402
from coconut_pytorch.training.model import build_model  # noqa: E402
from coconut_pytorch.training.optim import apply_gradients, make_optimizer  # noqa: E402

GPU_RESULTS_MODEL = dict(dim = 256, depth = 6, heads = 8, dim_head = 32, num_residual_streams = 1, batch_size = 128, lr = 1e-3)
SMALL_MODEL = dict(dim = 32, depth = 1, heads = 2, dim_head = 16, num_residual_streams = 1, batch_size = 16, lr = 1e-3)


def timed_steps(config: TrainConfig, tokenizer, curriculum, staged, cuda_graphs: bool, warmup: int, batches: int, pad_to_longest: bool = False) -> dict:
    device = torch.device(config.device)
    cuda = device.type == 'cuda'
    model = build_model(config, len(tokenizer), curriculum).to(device).train()
    optimizer = make_optimizer(model, config)
    step = TrainStep(model, torch.bfloat16 if config.bf16 else None, cuda_graphs = cuda_graphs)
    chunks = [staged[i:i + config.batch_size] for i in range(0, (warmup + batches) * config.batch_size, config.batch_size)]
    num_tokens = len(tokenizer) if config.uses_thought_targets else None
    if pad_to_longest:
        step.pad_to(max(len(s.prompt) for s in staged), max(len(s.target) for s in staged))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run(chunk, host: dict):
        # host time of each part (no sync: while the GPU keeps up, the host only launches)
        t0 = time.perf_counter()
        batch = collate(chunk, num_tokens)
        t1 = time.perf_counter()
        stats = step(batch)
        t2 = time.perf_counter()
        apply_gradients(model, optimizer, config.lr, config.max_grad_norm)
        t3 = time.perf_counter()
        for name, seconds in zip(host, (t1 - t0, t2 - t1, t3 - t2)):
            host[name] += seconds
        return stats

    # untimed: the warm-up batches, and with graphs every batch once, so that each shape is captured before timing
    sync()
    start = time.perf_counter()
    host = dict(collate = 0., step = 0., apply_gradients = 0.)
    first_loss = run(chunks[0], host).loss.item()    # from the same initial weights in both modes
    for chunk in (chunks[1:] if cuda_graphs else chunks[1:warmup]):
        run(chunk, host)
    sync()
    warm_seconds = time.perf_counter() - start

    host = dict.fromkeys(host, 0.)
    start = time.perf_counter()
    for chunk in chunks[warmup:]:
        run(chunk, host)
    sync()
    seconds = time.perf_counter() - start

    replay_ms = None
    if cuda_graphs and step.graphs:
        # the graph alone, without batch copies, clipping or AdamW: the step's device time
        graph = next(reversed(step.graphs.values())).graph
        start = time.perf_counter()
        for _ in range(10):
            graph.replay()
        sync()
        replay_ms = 100 * (time.perf_counter() - start)

    return dict(
        replay_ms = replay_ms,
        host_ms = {name: 1000 * seconds / batches for name, seconds in host.items()},
        examples_per_s = batches * config.batch_size / seconds,
        ms_per_step = 1000 * seconds / batches,
        warmup_s = warm_seconds,
        first_loss = first_loss,
        graphs = len(step.graphs),
        peak_gib = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    )


def profile_steps(config: TrainConfig, tokenizer, curriculum, staged, steps: int = 3):
    """Ops ranked by device time (self) over `steps` eager training steps, after two untimed ones."""
    from torch.profiler import ProfilerActivity, profile

    cuda = config.device.startswith('cuda')
    model = build_model(config, len(tokenizer), curriculum).to(config.device).train()
    optimizer = make_optimizer(model, config)
    step = TrainStep(model, torch.bfloat16 if config.bf16 else None)
    num_tokens = len(tokenizer) if config.uses_thought_targets else None
    batches = [collate(staged[i:i + config.batch_size], num_tokens) for i in range(0, (steps + 2) * config.batch_size, config.batch_size)]

    def run(batch):
        step(batch)
        apply_gradients(model, optimizer, config.lr, config.max_grad_norm)

    for batch in batches[:2]:
        run(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities = activities) as prof:
        for batch in batches[2:]:
            run(batch)
        if cuda:
            torch.cuda.synchronize()
    sort_by = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
    print(prof.key_averages().table(sort_by = sort_by, row_limit = 30))


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default = 'prosqa')
    parser.add_argument('--task-kwargs', type = json.loads, default = {'steps': 'frontier'})
    parser.add_argument('--method', default = 'coconut')
    parser.add_argument('--max-latent-stage', type = int, default = 6)
    parser.add_argument('--thoughts-per-step', '--c-thought', type = int, default = 1, help = 'continuous thoughts per replaced step (or per token piece)')
    parser.add_argument('--tokens-per-stage', type = int, default = None, help = 'stages remove this many language tokens, not whole steps')
    parser.add_argument('--stages', default = '0,3,6')
    parser.add_argument('--batches', type = int, default = 30)
    parser.add_argument('--warmup', type = int, default = 3)
    parser.add_argument('--device', default = 'cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--small', action = 'store_true', help = 'a tiny model, for a CPU smoke run')
    parser.add_argument('--model', type = json.loads, default = None, help = 'TrainConfig model settings as JSON (default: the GPU results\' model)')
    parser.add_argument('--profile', type = int, default = None, help = 'instead, print the device-time profile of eager steps at this stage')
    parser.add_argument('--thought-loss', type = float, default = 0., help = 'weight of the thought alignment loss (0: off)')
    parser.add_argument('--pad-to-longest', action = 'store_true', help = "pad graphed batches to the set's longest prompt and answer, as train does")
    args = parser.parse_args()

    cuda = args.device.startswith('cuda')
    model_settings = args.model or (SMALL_MODEL if args.small else GPU_RESULTS_MODEL)
    batch_size = model_settings['batch_size']
    config = TrainConfig(
        task = args.task, task_kwargs = args.task_kwargs, method = args.method, max_latent_stage = args.max_latent_stage,
        thoughts_per_step = args.thoughts_per_step, tokens_per_stage = args.tokens_per_stage,
        train_size = (args.warmup + args.batches) * batch_size, eval_size = 1, device = args.device, bf16 = cuda, thought_loss = args.thought_loss,
        **model_settings
    )
    train_set, _, tokenizer, max_steps = load_data(config)
    curriculum = config.curriculum(max_steps)

    if args.profile is not None:
        staged = staged_examples(train_set, tokenizer, curriculum, args.profile, random.Random(0))
        return profile_steps(config, tokenizer, curriculum, staged)

    device_name = torch.cuda.get_device_name() if cuda else 'cpu'
    print(f'# {device_name}, torch {torch.__version__}, task {args.task} {json.dumps(args.task_kwargs)}, method {args.method}, model {json.dumps(model_settings)}, '
          f'thought loss {args.thought_loss}, pad to longest {args.pad_to_longest}')
    print('| stage | thoughts | prompt x answer | eager ex/s | graphed ex/s | x | eager ms | graphed ms | replay ms | capture s | graphs | loss eager / graphed |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    host_times = []
    for stage in (int(s) for s in args.stages.split(',')):
        staged = staged_examples(train_set, tokenizer, curriculum, stage, random.Random(0))
        first = collate(staged[:batch_size])
        eager = timed_steps(config, tokenizer, curriculum, staged, False, args.warmup, args.batches)
        row = [stage, int(first.num_thoughts.max()), f'{first.prompt.shape[1]} x {first.target.shape[1]}', f'{eager["examples_per_s"]:,.0f}']
        if cuda:
            graphed = timed_steps(config, tokenizer, curriculum, staged, True, args.warmup, args.batches, args.pad_to_longest)
            row += [f'{graphed["examples_per_s"]:,.0f}', f'{graphed["examples_per_s"] / eager["examples_per_s"]:.2f}',
                    f'{eager["ms_per_step"]:.1f}', f'{graphed["ms_per_step"]:.1f}', f'{graphed["replay_ms"]:.1f}', f'{graphed["warmup_s"]:.1f}', graphed['graphs'],
                    f'{eager["first_loss"]:.4f} / {graphed["first_loss"]:.4f}']
        else:
            row += ['-', '-', f'{eager["ms_per_step"]:.1f}', '-', '-', '-', '-', f'{eager["first_loss"]:.4f}']
        print('| ' + ' | '.join(str(x) for x in row) + ' |', flush = True)
        host_times.append((stage, eager['host_ms'], graphed['host_ms'] if cuda else None))

    print('\nhost ms per step (collate / step call / clip + AdamW), eager then graphed:')
    for stage, eager_host, graphed_host in host_times:
        print(f'stage {stage}: ' + ' | '.join(' / '.join(f'{v:.1f}' for v in h.values()) for h in (eager_host, graphed_host) if h is not None))


if __name__ == '__main__':
    main()
