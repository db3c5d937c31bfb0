"""Multi-stream Coconut: several reasoning hypotheses thought in parallel over one shared prompt cache.

Kept at this import path for users of coconut-pytorch 0.0.x (`from coconut_pytorch.multi_stream_coconut import
Coconut`). It is `coconut_pytorch.Coconut` taking 0.0.32's names and defaults as well: `num_hypothesis` (default 1)
for `num_hypotheses`, `synthesize_hypothesis_per_step` for `mix_hypotheses`, and `hyp_diff_loss_weight` (default 1)
for `hypothesis_similarity_loss_weight`. Each hypothesis starts from its own learned `<bot>`, the streams run as one
batch of b x H rows, and the answer attends to all of them.
"""

from __future__ import annotations

from coconut_pytorch.coconut import Coconut as SingleStreamCoconut, accepts_legacy_positional_order

# 0.0.32's names for this module's options, and the names they have here
OLD_NAMES = dict(
    num_hypothesis = 'num_hypotheses',
    synthesize_hypothesis_per_step = 'mix_hypotheses',
    hyp_diff_loss_weight = 'hypothesis_similarity_loss_weight'
)


class Coconut(SingleStreamCoconut):
    __doc__ = f"""{SingleStreamCoconut.__doc__}
    This multi-stream module also takes 0.0.32's names: {', '.join(f'`{old}` for `{new}`' for old, new in OLD_NAMES.items())};
    its defaults are 0.0.32's (one hypothesis, a similarity loss weight of 1 once there are more), and its
    positional order with the transformer second is `(num_reasoning_steps, transformer, num_latents_per_step,
    learn_begin_of_thought, num_hypothesis, synthesize_hypothesis_per_step, checkpoint, begin_thought_loss_weight,
    hyp_diff_loss_weight)`.
    """

    @accepts_legacy_positional_order(('num_reasoning_steps', 'transformer', 'num_latents_per_step', 'learn_begin_of_thought', 'num_hypothesis',
                                      'synthesize_hypothesis_per_step', 'checkpoint', 'begin_thought_loss_weight', 'hyp_diff_loss_weight'))
    def __init__(self, *args, **kwargs):
        for old, new in OLD_NAMES.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f'pass one of {old} (0.0.32) and {new}, not both')
                kwargs[new] = kwargs.pop(old)
        kwargs.setdefault('hypothesis_similarity_loss_weight', 1.)
        super().__init__(*args, **kwargs)
