"""coconut-pytorch 0.0.x usage keeps working: the single and multi-stream modules, checkpointing on and off."""

import pytest
import torch

from coconut_pytorch import Coconut
from coconut_pytorch.multi_stream_coconut import Coconut as MultiStreamCoconut


@pytest.mark.parametrize('klass', [Coconut, MultiStreamCoconut])
@pytest.mark.parametrize('checkpoint', [True, False])
@pytest.mark.parametrize('num_latents_per_step', [1, 3])
def test_reference_usage(klass, checkpoint, num_latents_per_step):
    torch.manual_seed(0)
    model = klass(
        num_reasoning_steps = 3,
        num_latents_per_step = num_latents_per_step,
        checkpoint = checkpoint,
        transformer = dict(num_tokens = 256, dim = 64, depth = 2)
    )

    prompt = torch.randint(0, 256, (2, 128))
    answer = torch.randint(0, 256, (2, 16))

    loss = model(prompt, answer)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    generated = model.generate(prompt, max_length = 16)
    assert generated.shape == (2, 16) and generated.min() >= 0 and generated.max() < 256

    prompt_logits, latent_tokens, answer_logits, cache = model(prompt, answer, return_loss = False)
    assert prompt_logits.shape == (2, 128, 256) and answer_logits.shape == (2, 16, 256)


def test_multi_stream_defaults_to_two_hypotheses():
    model = MultiStreamCoconut(num_reasoning_steps = 2, transformer = dict(num_tokens = 16, dim = 32, depth = 1))
    assert model.num_hypotheses == 2
    _, latents, _, _ = model(torch.randint(0, 16, (3, 5)), return_loss = False)
    assert latents.shape == (3, 2, 2, 32)
