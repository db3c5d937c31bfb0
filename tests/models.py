"""The tiny float64 Coconut of the equivalence proofs, shared by the test modules that build one."""

import torch

from coconut_pytorch import Coconut

NUM_TOKENS = 32


def float64_coconut(num_reasoning_steps: int = 3, num_latents_per_step: int = 1, seed: int = 0, dim: int = 16, depth: int = 2,
                    num_residual_streams: int = 4, **kwargs) -> Coconut:
    """A Coconut over a 32-token vocabulary in float64 and eval mode, its weights drawn from `seed`; `kwargs` go to
    `Coconut`."""
    torch.manual_seed(seed)
    model = Coconut(
        num_reasoning_steps = num_reasoning_steps,
        num_latents_per_step = num_latents_per_step,
        transformer = dict(num_tokens = NUM_TOKENS, dim = dim, depth = depth, dim_head = 8, heads = 2, num_residual_streams = num_residual_streams),
        **kwargs
    )
    return model.double().eval()
