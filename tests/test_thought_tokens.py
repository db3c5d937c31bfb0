"""Ordered thought targets (`Coconut(thought_token_heads = m)`, `forward(thought_tokens = ...)`,
`TrainConfig.thought_token_loss`): each thought spells out, in order, the first m tokens of the language it replaced,
through m heads that generation never reads. The loss equals a by-hand computation in float64, the batches carry the
replaced ids in order, the recorded (CUDA-graph) step equals the eager one, and the option off changes nothing."""

import pytest
import torch
import torch.nn.functional as F
from models import NUM_TOKENS, float64_coconut

from coconut_pytorch import Coconut
from coconut_pytorch.data import Example, WordTokenizer
from coconut_pytorch.training import TrainConfig, train
from coconut_pytorch.training.batches import collate, encode_at_stage
from coconut_pytorch.training.schedule import Curriculum
from coconut_pytorch.training.step import TrainStep

DIM = 16


def make_model(heads = 3, **kwargs):
    return float64_coconut(num_reasoning_steps = 2, depth = 1, thought_token_heads = heads, thought_token_loss_weight = 0.7, **kwargs)


def test_the_loss_is_each_heads_cross_entropy_over_the_tokens_given():
    model = make_model(heads = 3)
    with torch.no_grad():      # heads away from their identity start, so that each head counts
        model.to_thought_tokens.weight.add_(torch.randn_like(model.to_thought_tokens.weight) * 0.3)
    prompt, answer = torch.randint(0, NUM_TOKENS, (3, 5)), torch.randint(0, NUM_TOKENS, (3, 4))
    steps = torch.tensor([2, 1, 0])
    tokens = torch.randint(0, NUM_TOKENS, (3, 2, 3))
    tokens[0, 1, 2] = -1                        # a thought that replaced two tokens only
    tokens[1, 0] = -1                           # a thought that replaced nothing

    loss, (breakdown, _, latents, _, _) = model(prompt, answer, num_reasoning_steps = steps, thought_tokens = tokens, return_intermediates = True)

    # by hand: head j of thought i is W_j t_i under the language-model head; only thoughts within their row's
    # steps (row 1 has one, row 2 none: its slots hold tokens the loss must not see) and real tokens count
    weight = model.to_thought_tokens.weight.view(3, DIM, DIM)
    terms = []
    for row in range(3):
        for slot in range(int(steps[row])):
            for head in range(3):
                token = int(tokens[row, slot, head])
                if token < 0:
                    continue
                logits = model.model.to_logits(weight[head] @ latents[row, slot])
                terms.append(F.cross_entropy(logits[None], torch.tensor([token])))
    expected = torch.stack(terms).mean()
    assert len(terms) == 3 + 2      # row 0: three tokens and two; row 1: none; row 2: no thoughts
    torch.testing.assert_close(breakdown.thought_token_loss, expected, atol = 1e-12, rtol = 0.)
    others = breakdown.answer_loss + breakdown.thought_token_loss * 0.7
    torch.testing.assert_close(loss, others, atol = 1e-12, rtol = 0.)

    # nothing to spell: 0, not NaN, and the heads still get a (zero) gradient path
    none = torch.full_like(tokens, -1)
    _, (breakdown, *_) = model(prompt, answer, num_reasoning_steps = steps, thought_tokens = none, return_intermediates = True)
    assert breakdown.thought_token_loss.item() == 0.


def test_heads_start_as_the_identity_and_the_option_off_changes_nothing():
    model = make_model(heads = 2)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 4))
    _, latents, _, _ = model(prompt, answer, return_loss = False)
    spelled = model.to_thought_tokens(latents).view(*latents.shape[:2], 2, DIM)
    torch.testing.assert_close(spelled, latents[:, :, None].expand(-1, -1, 2, -1), atol = 0., rtol = 0.)

    plain = make_model(heads = 0)
    assert plain.to_thought_tokens is None
    # every other parameter drawn as without the heads, so the two models answer alike
    with_heads = {name: p for name, p in model.named_parameters() if not name.startswith('to_thought_tokens')}
    assert with_heads.keys() == dict(plain.named_parameters()).keys()
    assert all(torch.equal(p, dict(plain.named_parameters())[name]) for name, p in with_heads.items())
    torch.testing.assert_close(model(prompt, answer), plain(prompt, answer), atol = 0., rtol = 0.)
    assert torch.equal(model.generate(prompt, 4, temperature = 0.), plain.generate(prompt, 4, temperature = 0.))


@pytest.mark.parametrize('tokens, kwargs, error, message', [
    (torch.zeros(2, 2, 3, dtype = torch.long), dict(heads = 0), ValueError, 'need Coconut\\(thought_token_heads > 0\\)'),
    (torch.zeros(2, 2, 2, dtype = torch.long), {}, ValueError, 'must have shape'),
    (torch.zeros(2, 2, 3), {}, TypeError, 'integer tensor'),
    (torch.full((2, 2, 3), NUM_TOKENS), {}, ValueError, 'token ids in'),
    (torch.full((2, 2, 3), -2), {}, ValueError, 'token ids in'),
])
def test_bad_thought_tokens_are_named(tokens, kwargs, error, message):
    model = make_model(**kwargs)
    with pytest.raises(error, match = message):
        model(torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 4)), thought_tokens = tokens)


def test_bad_head_settings_are_named():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match = 'thought_token_heads must be an int >= 0'):
            make_model(heads = bad)
    with pytest.raises(ValueError, match = 'single stream'):
        make_model(heads = 2, num_hypotheses = 2)


# training: the batches' ordered targets, the recorded step, the setting

EXAMPLES = [
    Example(question = 'q1 q2', steps = ['a b c', 'd e'], answer = 'z'),
    Example(question = 'q2 q1 q1', steps = ['e d c b a'], answer = 'y'),
]
TOKENIZER = WordTokenizer.from_texts([text for e in EXAMPLES for text in (e.question, *e.steps, e.answer)])


def test_batches_carry_each_thoughts_replaced_tokens_in_order():
    # 4 tokens a stage, 2 thoughts a stage: each thought replaced 2 tokens, in order; separators count as tokens
    curriculum = Curriculum(method = 'coconut', tokens_per_stage = 4, thoughts_per_step = 2, max_latent_stage = 2)
    staged = [encode_at_stage(e, TOKENIZER, curriculum, 1) for e in EXAMPLES]
    batch = collate(staged, token_width = 2)
    for row, example in enumerate(staged):
        language = [token for step in TOKENIZER.encode_example(EXAMPLES[row])[1] for token in step + [TOKENIZER.sep_id]]
        assert batch.thought_tokens[row].tolist() == [language[0:2], language[2:4]]
        assert [list(words) for words in example.thought_words] == [language[0:2], language[2:4]]
    # a narrower width keeps each thought's first tokens; slots past a row's thoughts are -1
    assert collate(staged, token_width = 1).thought_tokens[:, :, 0].tolist() == batch.thought_tokens[:, :, 0].tolist()
    assert collate(staged, token_width = 3).thought_tokens[:, :, 2].eq(-1).all()


def test_the_recorded_step_with_ordered_targets_equals_the_eager_step():
    curriculum = Curriculum(method = 'coconut', tokens_per_stage = 4, thoughts_per_step = 2, max_latent_stage = 2)
    staged = [encode_at_stage(e, TOKENIZER, curriculum, stage) for e, stage in zip(EXAMPLES, (1, 2))]
    batch = collate(staged, token_width = 2)
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 0, transformer = dict(num_tokens = len(TOKENIZER), dim = 16, depth = 1, dim_head = 8, heads = 2,
                                                                 num_residual_streams = 2), thought_token_heads = 2, thought_token_loss_weight = 0.5).double()
    step = TrainStep(model, loss_scale = 0.5)
    eager = step(batch)
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none = True)

    passes, prompt_length, target_length, _ = step.shape_key(batch)
    pad = lambda t, n: F.pad(t, (0, n - t.shape[1]), value = -1)
    recorded = step.graphed_body(pad(batch.prompt, prompt_length), pad(batch.target, target_length), batch.num_thoughts, passes,
                                 thought_tokens = batch.thought_tokens)
    assert eager.thought_token_loss > 0
    for name in eager._fields:
        torch.testing.assert_close(getattr(recorded, name), getattr(eager, name), atol = 1e-12, rtol = 1e-12, msg = name)
    for name, p in model.named_parameters():
        if name in eager_grads:
            torch.testing.assert_close(p.grad, eager_grads[name], atol = 1e-12, rtol = 1e-10, msg = name)


def test_the_setting_builds_the_heads_from_the_curriculum_and_is_logged(tmp_path):
    assert TrainConfig(thought_token_loss = 1., tokens_per_stage = 8, thoughts_per_step = 2).thought_tokens_per_thought() == 4
    assert TrainConfig(thought_token_loss = 1., tokens_per_stage = 8, thoughts_per_step = 3).thought_tokens_per_thought() == 3
    assert TrainConfig(thought_token_loss = 1., thought_token_heads = 5).thought_tokens_per_thought() == 5
    assert TrainConfig().thought_tokens_per_thought() == 0
    for setting, message in [(dict(thought_token_loss = 1.), 'needs --thought-token-heads'),
                             (dict(thought_token_loss = 1., thought_token_heads = 2, method = 'cot'), 'thought_token_loss trains thought slots'),
                             (dict(thought_token_loss = -1.), 'thought_token_loss must be finite and >= 0'),
                             (dict(thought_token_heads = 0), 'thought_token_heads')]:
        with pytest.raises(ValueError, match = message):
            TrainConfig(**setting)

    config = TrainConfig(task = 'running_sum', task_kwargs = dict(num_digits = 3), device = 'cpu', train_size = 64, eval_size = 8, batch_size = 32,
                         epochs_per_stage = 1, final_epochs = 1, max_latent_stage = 2, dim = 16, depth = 1, heads = 2, dim_head = 8,
                         num_residual_streams = 1, warmup_steps = 0, tokens_per_stage = 2, thoughts_per_step = 1, thought_token_loss = 0.5)
    result = train(config, tmp_path)
    history = torch.load(tmp_path / 'checkpoint.pt', weights_only = True)['history']
    assert result['finished'] and [h['thought_token_loss'] > 0 for h in history] == [False, True, True, True]
    weights = torch.load(tmp_path / 'checkpoint.pt', weights_only = True)['model']
    assert tuple(weights['to_thought_tokens.weight'].shape) == (16 * 2, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'needs CUDA')
def test_cuda_graph_replays_with_ordered_targets_equal_eager_steps():
    curriculum = Curriculum(method = 'coconut', tokens_per_stage = 4, thoughts_per_step = 2, max_latent_stage = 2)
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 0, transformer = dict(num_tokens = len(TOKENIZER), dim = 16, depth = 1, dim_head = 8, heads = 2),
                    thought_token_heads = 2).float().cuda()
    eager_step, graphed_step = TrainStep(model), TrainStep(model, cuda_graphs = True)
    for stages in [(1, 2), (2, 2), (1, 2)]:
        batch = collate([encode_at_stage(e, TOKENIZER, curriculum, stage) for e, stage in zip(EXAMPLES, stages)], token_width = 2)
        results = []
        for step in (eager_step, graphed_step):
            model.zero_grad(set_to_none = True)
            stats = step(batch)
            results.append((stats, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
        (eager, eager_grads), (graphed, graphed_grads) = results
        for name in eager._fields:
            torch.testing.assert_close(getattr(graphed, name), getattr(eager, name), atol = 1e-5, rtol = 1e-5, msg = name)
        assert graphed_grads.keys() == eager_grads.keys()
        for name in eager_grads:
            torch.testing.assert_close(graphed_grads[name], eager_grads[name], atol = 1e-5, rtol = 1e-4, msg = name)
    # graphs of batches with ordered targets are their own, keyed by the targets' width last
    assert all(key[-1] == 2 for key in graphed_step.graphs)
