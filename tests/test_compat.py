"""coconut-pytorch 0.0.x usage keeps working: the single and multi-stream modules, checkpointing on and off."""

import pytest
import torch

from coconut_pytorch import Coconut, Transformer
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


def test_multi_stream_takes_0032s_names_and_defaults():
    settings = dict(num_tokens = 16, dim = 32, depth = 1)
    default = MultiStreamCoconut(num_reasoning_steps = 2, transformer = settings)
    assert default.num_hypotheses == 1 and default.hypothesis_mixer is None

    model = MultiStreamCoconut(num_reasoning_steps = 2, transformer = settings, num_hypothesis = 2, synthesize_hypothesis_per_step = True, hyp_diff_loss_weight = 0.5)
    assert (model.num_hypotheses, model.hypothesis_similarity_loss_weight) == (2, 0.5) and model.hypothesis_mixer is not None
    _, latents, _, _ = model(torch.randint(0, 16, (3, 5)), return_loss = False)
    assert latents.shape == (3, 2, 2, 32)

    # 0.0.32's default weight of the loss that pushes hypotheses apart is 1
    assert MultiStreamCoconut(num_reasoning_steps = 2, transformer = settings, num_hypothesis = 2).hypothesis_similarity_loss_weight == 1.
    with pytest.raises(TypeError, match = 'num_hypothesis'):
        MultiStreamCoconut(num_reasoning_steps = 2, transformer = settings, num_hypothesis = 2, num_hypotheses = 2)


def same_architecture(first, second):
    return {k: v.shape for k, v in first.state_dict().items()} == {k: v.shape for k, v in second.state_dict().items()}


def test_0032s_positional_order_with_the_transformer_second():
    settings = dict(num_tokens = 16, dim = 32, depth = 1)

    # Coconut(num_reasoning_steps, transformer, num_latents_per_step, learn_begin_of_thought, begin_thought_loss_weight, checkpoint)
    old = Coconut(3, settings, 2, True, 0.5, True)
    new = Coconut(num_reasoning_steps = 3, num_latents_per_step = 2, transformer = settings, learn_begin_of_thought = True, begin_thought_loss_weight = 0.5, checkpoint = True)
    assert (old.num_reasoning_steps, old.num_latents_per_step, old.learn_begin_of_thought, old.begin_thought_loss_weight, old.checkpoint) == (3, 2, True, 0.5, True)
    assert same_architecture(old, new)
    # this package's own order still works
    assert Coconut(3, 2, settings).num_latents_per_step == 2

    # the multi-stream module's: (..., learn_begin_of_thought, num_hypothesis, synthesize_hypothesis_per_step, checkpoint, ...)
    multi = MultiStreamCoconut(2, settings, 1, False, 3, True, True, 1., 0.25)
    assert (multi.num_hypotheses, multi.checkpoint, multi.hypothesis_similarity_loss_weight) == (3, True, 0.25) and multi.hypothesis_mixer is not None

    with pytest.raises(TypeError, match = 'multiple values'):
        Coconut(3, settings, 2, num_latents_per_step = 2)
    with pytest.raises(TypeError, match = 'at most 6 positional'):
        Coconut(3, settings, 2, True, 0.5, True, 'extra')


def test_0032_transformer_name_for_value_residual():
    settings = dict(num_tokens = 16, dim = 32, depth = 2)
    assert same_architecture(Transformer(**settings, accept_value_residual = False), Transformer(**settings, value_residual = False))
    assert not same_architecture(Transformer(**settings, accept_value_residual = False), Transformer(**settings))
