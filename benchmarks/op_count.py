"""How many aten ops one Coconut training step dispatches, forward and backward, and from which lines of the package:
the eager step's cost where each op is a kernel launch (a GPU) or a dispatch (a small CPU step).

    python benchmarks/op_count.py                       # the benchmarks' small config A (dim 64, depth 2, 4 streams)
    python benchmarks/op_count.py --streams 1 --top 10
    python benchmarks/op_count.py --reference DIR       # and coconut-pytorch 0.0.32's at the same arguments and ids

At these sizes a CPU step costs about the same per op whatever the op, so the ratio of the two packages' op counts
predicts the ratio of their step times (`benchmarks/benchmark.py --device cpu --small --reference DIR`).
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from coconut_pytorch import Coconut  # noqa: E402
from benchmark import load_reference  # noqa: E402


class CountOps(TorchDispatchMode):
    """Counts every aten op dispatched, by the innermost line of `coconut_pytorch` that called it ('autograd' for
    the backward pass's own)."""

    def __init__(self):
        super().__init__()
        self.by_line = collections.Counter()

    def __torch_dispatch__(self, func, types, args = (), kwargs = None):
        ours = [frame for frame in traceback.extract_stack() if 'coconut_pytorch' in frame.filename]
        self.by_line[f'{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].line[:70]}' if ours else 'autograd'] += 1
        return func(*args, **(kwargs or {}))


def count_step(coconut_class, args) -> tuple[CountOps, CountOps]:
    """The ops of one forward and one backward of `coconut_class` at the arguments' config (after a first step:
    lazy initialisation is not the step)."""
    ids = torch.Generator().manual_seed(0)     # the same ids whatever each package's initialisation draws
    prompt, answer = torch.randint(0, 256, (2, 64), generator = ids), torch.randint(0, 256, (2, 16), generator = ids)
    torch.manual_seed(0)
    model = coconut_class(num_reasoning_steps = args.steps, transformer = dict(num_tokens = 256, dim = args.dim, depth = args.depth, dim_head = 16,
                                                                               heads = 4, num_residual_streams = args.streams))
    model(prompt, answer).backward()

    forward, backward = CountOps(), CountOps()
    with forward:
        loss = model(prompt, answer)
    with backward:
        loss.backward()
    return forward, backward


def main(argv = None):
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dim', type = int, default = 64)
    parser.add_argument('--depth', type = int, default = 2)
    parser.add_argument('--streams', type = int, default = 4)
    parser.add_argument('--steps', type = int, default = 3, help = 'thought steps')
    parser.add_argument('--top', type = int, default = 20, help = 'lines listed')
    parser.add_argument('--reference', default = None, metavar = 'DIR',
                        help = 'also count coconut-pytorch 0.0.32 installed in DIR (pip install --no-deps --target DIR coconut-pytorch==0.0.32 rotary-embedding-torch)')
    args = parser.parse_args(argv)

    forward, backward = count_step(Coconut, args)
    ours = sum(forward.by_line.values()) + sum(backward.by_line.values())
    print(f'forward: {sum(forward.by_line.values())} aten ops, backward: {sum(backward.by_line.values())}')
    if args.reference:
        reference = load_reference(args.reference)
        their_forward, their_backward = count_step(reference.Coconut, args)
        theirs = sum(their_forward.by_line.values()) + sum(their_backward.by_line.values())
        print(f'coconut-pytorch {reference.VERSION}: forward {sum(their_forward.by_line.values())}, backward {sum(their_backward.by_line.values())}; '
              f'ours / theirs = {ours / theirs:.2f}')
    for line, count in forward.by_line.most_common(args.top):
        print(f'{count:6d}  {line}')


if __name__ == '__main__':
    main()
