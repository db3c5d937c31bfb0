"""How many aten ops one Coconut training step dispatches, forward and backward, and from which lines of the package:
the eager step's cost where each op is a kernel launch (a GPU) or a dispatch (a small CPU step).

    python benchmarks/op_count.py                       # the benchmarks' small config A (dim 64, depth 2, 4 streams)
    python benchmarks/op_count.py --streams 1 --top 10
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
from coconut_pytorch import Coconut  # noqa: E402


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


def main(argv = None):
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dim', type = int, default = 64)
    parser.add_argument('--depth', type = int, default = 2)
    parser.add_argument('--streams', type = int, default = 4)
    parser.add_argument('--steps', type = int, default = 3, help = 'thought steps')
    parser.add_argument('--top', type = int, default = 20, help = 'lines listed')
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = args.steps, transformer = dict(num_tokens = 256, dim = args.dim, depth = args.depth, dim_head = 16,
                                                                         heads = 4, num_residual_streams = args.streams))
    prompt, answer = torch.randint(0, 256, (2, 64)), torch.randint(0, 256, (2, 16))
    model(prompt, answer).backward()        # once first: lazy initialisation is not the step

    forward, backward = CountOps(), CountOps()
    with forward:
        loss = model(prompt, answer)
    with backward:
        loss.backward()
    print(f'forward: {sum(forward.by_line.values())} aten ops, backward: {sum(backward.by_line.values())}')
    for line, count in forward.by_line.most_common(args.top):
        print(f'{count:6d}  {line}')


if __name__ == '__main__':
    main()
