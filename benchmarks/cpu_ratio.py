"""Our eager training step against coconut-pytorch 0.0.32's on this CPU, the two steps taken in turn.

    python benchmarks/cpu_ratio.py --reference DIR                  # the benchmarks' small A, A1 and C, one thread
    python benchmarks/cpu_ratio.py --reference DIR --configs A --rounds 100

On a shared 2-core machine the speed of the CPU drifts by up to 2x over a minute, so timing one package's steps and
then the other's (`benchmark.py --reference`) can put either ahead. Here each round takes one step of ours and one of
0.0.32's, at the same arguments and on the same ids, so both see the same machine; the figure is the median over
rounds of the two steps' ratio, with each package's fastest step beside it. A step is forward, backward and AdamW.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from benchmark import load_reference, make_runs, transformer_kwargs  # noqa: E402

from coconut_pytorch import Coconut  # noqa: E402


def training_step(model, prompt, answer):
    optimizer = torch.optim.AdamW(model.parameters(), lr = 1e-4)

    def step() -> float:
        start = time.perf_counter()
        model(prompt, answer).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none = True)
        return time.perf_counter() - start
    return step


def main(argv = None):
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reference', required = True, metavar = 'DIR',
                        help = 'coconut-pytorch 0.0.32 installed by pip install --no-deps --target DIR coconut-pytorch==0.0.32 rotary-embedding-torch')
    parser.add_argument('--configs', default = 'A,A1,C', help = 'comma-separated subset of A, A1, C (the small configs of benchmark.py)')
    parser.add_argument('--rounds', type = int, default = 60, help = 'timed rounds (one step of each package a round)')
    parser.add_argument('--warmup', type = int, default = 5)
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit('--rounds must be >= 1')
    torch.set_num_threads(args.threads)
    reference = load_reference(args.reference)

    print(f'torch {torch.__version__}, {args.threads} thread(s), coconut-pytorch {reference.VERSION} as the reference; '
          f'{args.rounds} rounds after {args.warmup} warm-up')
    print('config  ours: median ms (fastest)  0.0.32: median ms (fastest)  ours / 0.0.32: median of rounds (fastest over fastest)')
    for run in make_runs([name.strip() for name in args.configs.split(',') if name.strip()], small = True):
        cfg = run['cfg']
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, cfg['num_tokens'], (cfg['batch'], cfg['prompt']), generator = generator)
        answer = torch.randint(0, cfg['num_tokens'], (cfg['batch'], cfg['answer']), generator = generator)
        steps = []
        for coconut_class in (Coconut, reference.Coconut):
            torch.manual_seed(0)
            model = coconut_class(num_reasoning_steps = cfg['steps'], num_latents_per_step = cfg['latents'], transformer = transformer_kwargs(cfg))
            steps.append(training_step(model, prompt, answer))
        for _ in range(args.warmup):
            for step in steps:
                step()
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(steps[0]())
            theirs.append(steps[1]())
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        print(f'{run["name"]:6}  {statistics.median(ours) * 1e3:8.1f} ({min(ours) * 1e3:.1f})            '
              f'{statistics.median(theirs) * 1e3:8.1f} ({min(theirs) * 1e3:.1f})              {ratio:.2f} ({min(ours) / min(theirs):.2f})', flush = True)


if __name__ == '__main__':
    main()
