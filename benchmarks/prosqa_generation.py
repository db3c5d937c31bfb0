"""Seconds to generate ProsQA examples in one process (what each --fresh-data worker does every epoch), best of
`--repeats`; run it at two checkouts (PYTHONPATH=...) to compare them:

    OMP_NUM_THREADS=1 python benchmarks/prosqa_generation.py --size 2000
"""
import argparse
import time

from coconut_pytorch.data.tasks import get_task

parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
parser.add_argument('--size', type = int, default = 2000)
parser.add_argument('--repeats', type = int, default = 3)
parser.add_argument('--steps', default = 'frontier', help = 'the task\'s step style')
args = parser.parse_args()
task = get_task('prosqa', steps = args.steps)
times = []
for _ in range(args.repeats):
    start = time.perf_counter()
    task.generate(args.size, seed = 5)
    times.append(time.perf_counter() - start)
best = min(times)
print(dict(size = args.size, steps = args.steps, best_seconds = round(best, 3), examples_per_second = round(args.size / best)))
