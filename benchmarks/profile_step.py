"""Where a Coconut training step spends its time: a torch.profiler table of one config's step.

    python benchmarks/profile_step.py --config A                 # eager, CUDA, bf16 autocast
    python benchmarks/profile_step.py --config A --compile       # Coconut.forward compiled whole
    python benchmarks/profile_step.py --config A --device cpu --small
    python benchmarks/profile_step.py --config A --generate         # greedy generation of 64 tokens instead

Prints the ops ranked by device time (self time), and the share of the step spent inside the hyper-connection
modules, the attention and the feedforward blocks (measured with profiler ranges around each module's forward).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchmark import make_runs, transformer_kwargs  # noqa: E402

from coconut_pytorch import Coconut  # noqa: E402


def label_modules(model: Coconut):
    """Wrap each attention and feedforward forward, and the hyper-connection stream mixing (`Transformer.connect`,
    which computes with the library modules' parameters without calling them), in a profiler range named by its kind."""
    def labelled(original, kind):
        def call(*args, **kwargs):
            with record_function(f'module::{kind}'):
                return original(*args, **kwargs)
        return call

    for layer in model.model.layers:
        for module in layer:
            module.forward = labelled(module.forward, type(module).__name__)
    if model.model.num_residual_streams > 1:
        connect = model.model.connect

        def labelled_connect(hyper_conn, x):
            with record_function('module::HyperConnections'):
                branch_input, add = connect(hyper_conn, x)
            return branch_input, labelled(add, 'HyperConnections')
        model.model.connect = labelled_connect


def profile_generation(model: Coconut, prompt, autocast, cuda: bool):
    """Time generation of 1 token (prefill, thoughts, <eot>) and of 64, so the per-token cost separates from the
    prefill; returns the 64-token call for the profiler."""
    def generate(max_length: int):
        with autocast:
            model.generate(prompt, max_length = max_length, temperature = 0.)

    for max_length in (1, 64):
        for _ in range(2):
            generate(max_length)
        times = []
        for _ in range(5):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            generate(max_length)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        print(f'generate {max_length:2d} tokens: {statistics.median(times):.1f} ms (median of 5)')

    return lambda: generate(64)


def main():
    p = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default = 'A', choices = ('A', 'A1', 'B', 'C'))
    p.add_argument('--device', default = 'cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--small', action = 'store_true')
    p.add_argument('--compile', action = 'store_true')
    p.add_argument('--steps', type = int, default = 3)
    p.add_argument('--rows', type = int, default = 25)
    p.add_argument('--generate', action = 'store_true', help = 'profile generation (64 new tokens) instead of a training step')
    args = p.parse_args()

    run = make_runs([args.config], args.small)[0]
    cfg = run['cfg']
    device = torch.device(args.device)
    cuda = device.type == 'cuda'

    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = cfg['steps'], num_latents_per_step = cfg['latents'], transformer = transformer_kwargs(cfg)).to(device)
    if not args.compile:
        if not args.generate:   # generation is timed too: keep Python wrappers out of it
            label_modules(model)
    else:
        model.forward = torch.compile(model.forward)

    opt = torch.optim.AdamW(model.parameters(), lr = 1e-4, **(dict(fused = True) if cuda else {}))
    prompt = torch.randint(0, cfg['num_tokens'], (cfg['batch'], cfg['prompt']), device = device)
    answer = torch.randint(0, cfg['num_tokens'], (cfg['batch'], cfg['answer']), device = device)
    autocast = torch.autocast(device.type, dtype = torch.bfloat16) if cuda else nullcontext()

    def train_step():
        with autocast:
            loss = model(prompt, answer)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none = True)

    step = train_step
    if args.generate:
        model.eval()
        step = profile_generation(model, prompt, autocast, cuda)

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities = activities) as prof:
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()

    events = prof.key_averages()
    sort_key = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
    what = 'generation calls' if args.generate else 'steps'
    print(f'config {args.config}, {args.device}, {"compiled" if args.compile else "eager"}, {args.steps} {what} profiled')
    print(events.table(sort_by = sort_key, row_limit = args.rows, max_name_column_width = 60))

    # device time inside each kind of module range, forward only (backward runs outside the ranges)
    if not args.compile and not args.generate:
        device_time = lambda e: getattr(e, 'device_time_total', None) or getattr(e, 'cuda_time_total', 0) if cuda else e.cpu_time_total
        by_kind = defaultdict(float)
        for e in events:
            if e.key.startswith('module::'):
                by_kind[e.key] += device_time(e)
        total = sum(by_kind.values())
        print('forward time by module kind (per step):')
        for kind, t in sorted(by_kind.items(), key = lambda kv: -kv[1]):
            print(f'  {kind:40s} {t / args.steps / 1e3:8.2f} ms  {100 * t / max(total, 1e-9):5.1f}%')


if __name__ == '__main__':
    main()
