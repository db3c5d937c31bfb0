"""Multi-stream Coconut: several reasoning hypotheses thought in parallel over one shared prompt cache.

Kept at this import path for users of coconut-pytorch 0.0.x (`from coconut_pytorch.multi_stream_coconut import
Coconut`). It is the same module as `coconut_pytorch.Coconut` with `num_hypotheses` defaulting to 2: each hypothesis
starts from its own learned `<bot>`, the streams run as one batch of b x H rows, and the answer attends to all of them.
"""

from __future__ import annotations

from coconut_pytorch.coconut import Coconut as SingleStreamCoconut


class Coconut(SingleStreamCoconut):
    __doc__ = SingleStreamCoconut.__doc__

    def __init__(self, *args, num_hypotheses: int = 2, **kwargs):
        super().__init__(*args, num_hypotheses = num_hypotheses, **kwargs)
