"""The latent alignment options of `Coconut`, in float64: the MSE and cosine losses against the mean embedding of the
replaced words, RMS scale matching of the fed-back thoughts, and the embedding-mixing blend; each against a by-hand
computation, and each off giving exactly the plain model."""

import pytest
import torch
import torch.nn.functional as F

from test_coconut import NUM_TOKENS, make_model

EXACT = dict(atol = 1e-10, rtol = 0.)


def targets_with_gaps(steps: torch.Tensor, c: int) -> torch.Tensor:
    """(b, max steps x c, V) bool: a few words per thought, one thought without any, and words marked past a row's
    own steps (which must count for nothing)."""
    generator = torch.Generator().manual_seed(1)
    targets = torch.rand((len(steps), int(steps.max()) * c, NUM_TOKENS), generator = generator) < 0.1
    targets[0, 0] = False                   # a thought that replaced nothing
    targets[0, 1, [3, 5, 9]] = True         # and one with words for sure
    return targets


def mean_embedding(model, words: torch.Tensor) -> torch.Tensor:
    return model.model.token_emb.weight[words].mean(dim = 0)


def embedding_rms_by_hand(model) -> torch.Tensor:
    return model.model.token_emb.weight.pow(2).mean().sqrt()


def record_fed_back(model) -> list:
    """Every input `model.fed_back` returns, in call order (patched on the instance)."""
    fed, original = [], model.fed_back

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        fed.append(out)
        return out
    model.fed_back = recording
    return fed


@pytest.mark.parametrize('rms_match', [False, True])
def test_alignment_losses_equal_a_by_hand_computation(rms_match):
    steps, c = torch.tensor([2, 1]), 2
    model = make_model(num_latents_per_step = 2, thought_loss_weight = 0., align_mse_weight = 0.3, align_cosine_weight = 0.7, thought_rms_match = rms_match)
    plain = make_model(num_latents_per_step = 2, thought_loss_weight = 0., thought_rms_match = rms_match)     # the same without the losses
    if rms_match:
        with torch.no_grad():
            model.thought_gain.fill_(1.3)
            plain.thought_gain.fill_(1.3)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    targets = targets_with_gaps(steps, c)

    loss, (breakdown, _, latents, _, _) = model(prompt, answer, num_reasoning_steps = steps, thought_targets = targets, return_intermediates = True)
    base = plain(prompt, answer, num_reasoning_steps = steps, thought_targets = targets)

    squared_errors, cosine_distances = [], []
    for row in range(2):
        for slot in range(int(steps[row]) * c):
            words = targets[row, slot].nonzero().flatten()
            if len(words) == 0:
                continue
            thought = latents[row, slot]
            if rms_match:
                thought = thought * 1.3 * embedding_rms_by_hand(model) / thought.pow(2).mean().sqrt()
            target = mean_embedding(model, words)
            squared_errors.append((thought - target).pow(2).mean())
            cosine_distances.append(1 - (thought @ target) / (thought.norm() * target.norm()))
    # row 1 has words marked past its own steps, which count for nothing
    assert len(squared_errors) >= 3 and targets[1, 2:].any()

    mse, cosine = torch.stack(squared_errors).mean(), torch.stack(cosine_distances).mean()
    torch.testing.assert_close(breakdown.align_mse_loss, mse, **EXACT)
    torch.testing.assert_close(breakdown.align_cosine_loss, cosine, **EXACT)
    torch.testing.assert_close(loss, base + 0.3 * mse + 0.7 * cosine, **EXACT)


def test_alignment_without_any_target_is_zero_not_nan():
    model = make_model(align_mse_weight = 1., align_cosine_weight = 1.).train()
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    loss, (breakdown, *_) = model(prompt, answer, thought_targets = torch.zeros((2, 2, NUM_TOKENS), dtype = torch.bool), return_intermediates = True)
    assert breakdown.align_mse_loss == 0 and breakdown.align_cosine_loss == 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_targets_are_detached_and_the_losses_reach_the_thoughts():
    model = make_model(align_mse_weight = 1., align_cosine_weight = 1., thought_loss_weight = 0.).train()
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    targets = torch.zeros((2, 2, NUM_TOKENS), dtype = torch.bool)
    targets[:, :, 30] = True                # a word no prompt or answer holds: only the alignment could move its row
    prompt, answer = prompt.clamp(max = 29), answer.clamp(max = 29)

    _, (breakdown, *_) = model(prompt, answer, thought_targets = targets, return_intermediates = True)
    (breakdown.align_mse_loss + breakdown.align_cosine_loss).backward()
    assert model.begin_of_thought.grad.abs().sum() > 0
    assert model.model.token_emb.weight.grad[30].abs().sum() == 0


@pytest.mark.parametrize('mix', [0., 'tensor'])
def test_options_off_give_exactly_the_plain_model(mix):
    prompt, answer = torch.randint(0, NUM_TOKENS, (3, 5)), torch.randint(0, NUM_TOKENS, (3, 4))
    steps = torch.tensor([2, 0, 1])
    targets = targets_with_gaps(steps, 2)

    def loss_and_grads(**kwargs):
        model = make_model(num_latents_per_step = 2, **kwargs).train()
        thought_mix = torch.zeros((), dtype = torch.float64) if mix == 'tensor' and kwargs else 0.
        loss = model(prompt, answer, num_reasoning_steps = steps, thought_targets = targets, thought_mix = thought_mix)
        loss.backward()
        return loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    off_loss, off_grads = loss_and_grads(align_mse_weight = 0., align_cosine_weight = 0., thought_rms_match = False)
    assert torch.equal(plain_loss, off_loss)
    assert plain_grads.keys() == off_grads.keys()
    assert all(torch.equal(plain_grads[name], off_grads[name]) for name in plain_grads)

    # and what is fed back is the hidden state itself, untouched (both models above share this code)
    model = make_model(num_latents_per_step = 2, align_mse_weight = 0., align_cosine_weight = 0., thought_rms_match = False)
    fed = record_fed_back(model)
    thought_mix = torch.zeros((), dtype = torch.float64) if mix == 'tensor' else 0.
    latents = model(prompt, answer, num_reasoning_steps = steps, thought_targets = targets, thought_mix = thought_mix, return_loss = False).latent_tokens
    assert len(fed) == 2 and all(torch.equal(inputs, latents[:, 2 * step:2 * step + 2]) for step, inputs in enumerate(fed))


# RMS scale matching

def test_rms_match_feeds_back_thoughts_at_gain_times_the_embedding_rms():
    model = make_model(num_latents_per_step = 2, num_reasoning_steps = 3, thought_rms_match = True).train()
    with torch.no_grad():
        model.thought_gain.fill_(0.7)
        model.model.token_emb.weight.mul_(3.)       # away from the hidden states' own scale
    fed = record_fed_back(model)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))

    loss = model(prompt, answer)
    assert len(fed) == 3                        # the thoughts of <bot> and of steps 1 and 2; step 3's are the tail's
    wanted = 0.7 * embedding_rms_by_hand(model)
    for thoughts in fed:
        torch.testing.assert_close(thoughts.pow(2).mean(dim = -1).sqrt(), wanted.expand(thoughts.shape[:-1]), **EXACT)

    loss.backward()
    assert torch.isfinite(model.thought_gain.grad) and model.thought_gain.grad != 0


def test_rms_match_state_dicts():
    plain, matched = make_model(), make_model(thought_rms_match = True)
    assert 'thought_gain' not in plain.state_dict() and 'thought_gain' in matched.state_dict()
    # a checkpoint of a model without the option loads into one without it, as before
    restored = make_model(seed = 5)
    restored.load_state_dict(plain.state_dict())
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    assert torch.equal(restored(prompt, answer), plain(prompt, answer))
    again = make_model(thought_rms_match = True, seed = 5)
    again.load_state_dict(matched.state_dict())
    assert torch.equal(again(prompt, answer), matched(prompt, answer))


def naive_rms_matched_answer_logits(model, prompt, answer, num_steps):
    """Coconut with thought_rms_match without a cache: every step re-runs the whole sequence, each thought rescaled by
    hand before it is appended."""
    transformer, c = model.model, model.num_latents_per_step
    scale = model.thought_gain * embedding_rms_by_hand(model)
    seq = torch.cat((transformer.embed(prompt), model.begin_of_thought[0][None].expand(prompt.shape[0], -1, -1)), dim = 1)
    for _ in range(num_steps):
        thought = transformer.forward_with_cache([seq]).hiddens[:, -c:]
        seq = torch.cat((seq, thought * scale / thought.pow(2).mean(dim = -1, keepdim = True).sqrt()), dim = 1)
    seq = torch.cat((seq, model.end_of_thought.expand(prompt.shape[0], 1, -1)), dim = 1)
    first_answer_position = seq.shape[1] - 1
    seq = torch.cat((seq, transformer.embed(answer[:, :-1])), dim = 1)
    return transformer.to_logits(transformer.forward_with_cache([seq]).hiddens[:, first_answer_position:])


@pytest.mark.parametrize('num_latents_per_step', [1, 2])
@pytest.mark.parametrize('num_steps', [1, 3])
def test_rms_matched_generation_equals_teacher_forced_recomputation(num_latents_per_step, num_steps):
    model = make_model(num_latents_per_step = num_latents_per_step, seed = num_steps, thought_rms_match = True)
    with torch.no_grad():
        model.thought_gain.fill_(1.5)
    prompt = torch.randint(0, NUM_TOKENS, (2, 6))

    generated = model.generate(prompt, max_length = 10, temperature = 0., num_reasoning_steps = num_steps)
    cached = model(prompt, generated, return_loss = False, num_reasoning_steps = num_steps).answer_logits
    recomputed = naive_rms_matched_answer_logits(model, prompt, generated, num_steps)

    torch.testing.assert_close(cached, recomputed, atol = 1e-8, rtol = 1e-8)
    assert torch.equal(cached.argmax(dim = -1), generated)
    # and the option does change what is generated from: the plain recurrence gives other logits
    with torch.no_grad():
        model.thought_gain.fill_(1.)
        plain = make_model(num_latents_per_step = num_latents_per_step, seed = num_steps)
    assert not torch.allclose(plain(prompt, generated, return_loss = False, num_reasoning_steps = num_steps).answer_logits,
                              model(prompt, generated, return_loss = False, num_reasoning_steps = num_steps).answer_logits)


# the embedding-mixing blend

@pytest.mark.parametrize('w', [0., 0.25, 1.])
def test_mixing_feeds_the_blend_of_thought_and_mean_embedding(w):
    steps, c = torch.tensor([3, 2]), 2
    model = make_model(num_latents_per_step = c, num_reasoning_steps = 3)
    fed = record_fed_back(model)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    targets = targets_with_gaps(steps, c)

    # as a tensor, so that w = 0 goes through the blend too (as under CUDA graphs) and must still be exact
    out = model(prompt, answer, num_reasoning_steps = steps, thought_targets = targets, thought_mix = torch.tensor(w, dtype = torch.float64), return_loss = False)
    latents = out.latent_tokens
    means, _ = model.step_embeddings(targets, steps)
    assert len(fed) == 3

    for step, inputs in enumerate(fed):
        for row in range(2):
            for k in range(c):
                slot = step * c + k
                thought, words = latents[row, slot], targets[row, slot].nonzero().flatten()
                if len(words) == 0 or step >= int(steps[row]):
                    assert torch.equal(inputs[row, k], thought)          # no target: the thought as it is
                elif w == 1.:
                    assert torch.equal(inputs[row, k], means[row, slot])       # the thought replaced
                    torch.testing.assert_close(means[row, slot], mean_embedding(model, words), **EXACT)
                elif w == 0.:
                    assert torch.equal(inputs[row, k], thought)
                else:
                    torch.testing.assert_close(inputs[row, k], 0.75 * thought + 0.25 * mean_embedding(model, words), **EXACT)


def test_a_set_of_words_counts_each_word_once():
    model = make_model()
    targets = torch.zeros((1, 2, NUM_TOKENS))
    targets[0, 0, [4, 9]] = 1.
    means, has_target = model.step_embeddings(targets.bool(), None)
    torch.testing.assert_close(means[0, 0], mean_embedding(model, torch.tensor([4, 9])), **EXACT)
    assert has_target.tolist() == [[True, False]] and torch.equal(means[0, 1], torch.zeros(32, dtype = torch.float64))


@pytest.mark.parametrize('kwargs, call, error, message', [
    (dict(), dict(thought_mix = 0.5), ValueError, 'thought_mix needs thought_targets'),
    (dict(), dict(thought_mix = 1.5, targets = True), ValueError, r'thought_mix must be in \[0, 1\]'),
    (dict(), dict(thought_mix = float('nan'), targets = True), ValueError, 'thought_mix'),
    (dict(), dict(thought_mix = torch.zeros(2), targets = True), TypeError, 'thought_mix must be a number or a 0-dim'),
    (dict(thought_mode = 'pause'), dict(thought_mix = 0.5, targets = True), ValueError, 'thought_mix blends the thoughts that are fed back'),
])
def test_bad_thought_mix_is_named(kwargs, call, error, message):
    model = make_model(**kwargs)
    targets = torch.ones((2, 2, NUM_TOKENS), dtype = torch.bool) if call.get('targets') else None
    with pytest.raises(error, match = message):
        model(torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3)), thought_targets = targets, thought_mix = call['thought_mix'])


@pytest.mark.parametrize('kwargs, message', [
    (dict(align_mse_weight = -1.), 'align_mse_weight must be a finite number >= 0'),
    (dict(align_cosine_weight = float('inf')), 'align_cosine_weight'),
    (dict(align_cosine_weight = 1., thought_mode = 'pause'), 'align_cosine_weight aligns the thoughts that are fed back'),
    (dict(thought_rms_match = True, thought_mode = 'pause'), 'thought_rms_match rescales'),
])
def test_bad_alignment_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match = message):
        make_model(**kwargs)
