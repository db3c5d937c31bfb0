"""The training step: what a CUDA graph records (padded static buffers, per-row steps as a tensor) gives the eager
step's loss, token counts and gradients; on a GPU, graph replays give them too."""

import pytest
import torch

from coconut_pytorch import Coconut
from coconut_pytorch.data import Example, WordTokenizer
from coconut_pytorch.inputs import PAD_ID
from coconut_pytorch.training.batches import Batch, collate, encode_at_stage
from coconut_pytorch.training.schedule import Curriculum
from coconut_pytorch.training.step import BatchLoss, TrainStep


EXAMPLES = [
    Example(question = 'q1 q2', steps = ['s1 a', 's2 b'], answer = 'ans'),
    Example(question = 'q3 q1 q2 q3 q1', steps = ['s3 c', 's4 d', 's1 a'], answer = 'ans'),
    Example(question = 'q2', steps = ['s2 b'], answer = 'ans'),
    Example(question = 'q1 q3 q3', steps = ['s4 d', 's3 c'], answer = 'ans'),
]

TOKENIZER = WordTokenizer.from_texts([text for e in EXAMPLES for text in (e.question, *e.steps, e.answer)])


def model_and_batch(thought_mode: str, stages, dtype = torch.float64, device = 'cpu', thought_targets = False, **coconut_kwargs):
    curriculum = Curriculum(method = 'coconut' if thought_mode == 'continuous' else 'pause_as_thought', thoughts_per_step = 2, max_latent_stage = 3)
    staged = [encode_at_stage(e, TOKENIZER, curriculum, stage) for e, stage in zip(EXAMPLES, stages)]
    batch = collate(staged, len(TOKENIZER) if thought_targets else None)
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 0, transformer = dict(num_tokens = len(TOKENIZER), dim = 32, depth = 2, dim_head = 8, heads = 4, num_residual_streams = 2), thought_mode = thought_mode, **coconut_kwargs)
    return model.to(device, dtype).train(), batch


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def pad(t: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[1]), value = PAD_ID)


@pytest.mark.parametrize('thought_mode, learn_begin_of_thought, thought_targets', [
    ('continuous', False, False), ('pause', False, False), ('continuous', True, False), ('continuous', False, True)
])
@pytest.mark.parametrize('stages', [(1, 2, 0, 3), (2, 2, 2, 2), (0, 0, 0, 0)])
def test_the_recorded_step_on_padded_buffers_equals_the_eager_step(thought_mode, learn_begin_of_thought, thought_targets, stages):
    model, batch = model_and_batch(thought_mode, stages, learn_begin_of_thought = learn_begin_of_thought, thought_targets = thought_targets, thought_loss_weight = 0.7)
    step = TrainStep(model, loss_scale = 0.5)

    eager = step(batch)
    eager_grads = gradients(model)
    model.zero_grad(set_to_none = True)

    # what a graph records: longer prompt and answer buffers, every row's steps as a tensor (a mask even where
    # all rows agree), the batch's most steps
    num_steps, prompt_length, target_length, with_targets = step.shape_key(batch)
    assert with_targets == thought_targets
    assert (prompt_length, target_length) != tuple(batch.prompt.shape[1:]) + tuple(batch.target.shape[1:])
    recorded = step.graphed_body(pad(batch.prompt, prompt_length + 3), pad(batch.target, target_length + 2), batch.num_thoughts, num_steps, batch.thought_targets)
    recorded_grads = gradients(model)

    if thought_targets and stages != (0, 0, 0, 0):
        assert eager.thought_loss > 0
    for name in ('loss', 'correct', 'counted', 'thought_loss'):
        torch.testing.assert_close(getattr(recorded, name), getattr(eager, name), atol = 1e-12, rtol = 1e-12)
    assert recorded_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(recorded_grads[name], eager_grads[name], atol = 1e-12, rtol = 1e-10, msg = name)

    # a parameter the step does not use gets no gradient (AdamW then skips it, as in eager training)
    if stages == (0, 0, 0, 0):
        assert 'begin_of_thought' not in eager_grads


def test_graph_shapes_round_up_and_pad_to_an_epochs_longest():
    model, batch = model_and_batch('continuous', (1, 2, 0, 3))
    step = TrainStep(model, prompt_multiple = 32, target_multiple = 16)
    # the most thoughts of any row (the stage-3 row has 2 steps of 2 thoughts), lengths rounded up
    assert tuple(batch.prompt.shape) == (4, 5) and step.shape_key(batch) == (4, 32, 16, False)
    step.pad_to(40, 17)
    assert step.shape_key(batch) == (4, 64, 32, False)
    # batches with thought targets get graphs of their own, which read the targets too
    _, with_targets = model_and_batch('continuous', (1, 2, 0, 3), thought_targets = True)
    assert step.shape_key(with_targets) == (4, 64, 32, True)


def test_graphed_steps_check_their_batches_before_any_compute():
    # `replay` checks on the CPU before it captures or copies anything, so the checks run here without a GPU
    model, batch = model_and_batch('continuous', (1, 1, 1, 1))
    step = TrainStep(model)
    bad_prompt = batch.prompt.clone()
    bad_prompt[0, 0] = len(TOKENIZER)
    with pytest.raises(ValueError, match = 'prompt holds token ids'):
        step.replay(Batch(bad_prompt, batch.target, batch.num_thoughts))
    with pytest.raises(ValueError, match = 'answer has no tokens'):
        step.replay(Batch(batch.prompt, torch.full_like(batch.target, PAD_ID), batch.num_thoughts))
    with pytest.raises(ValueError, match = 'num_reasoning_steps must be >= 0'):
        step.replay(Batch(batch.prompt, batch.target, -batch.num_thoughts))
    with pytest.raises(ValueError, match = 'thought_targets must have shape'):
        step.replay(batch._replace(thought_targets = torch.zeros(4, 1, len(TOKENIZER), dtype = torch.bool)))


def test_cuda_graphs_need_a_cuda_model():
    model, _ = model_and_batch('continuous', (1, 1, 1, 1))
    with pytest.raises(ValueError, match = 'cuda_graphs needs the model on a CUDA device'):
        TrainStep(model, cuda_graphs = True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'needs CUDA')
@pytest.mark.parametrize('thought_mode, thought_targets', [('continuous', False), ('pause', False), ('continuous', True)])
def test_cuda_graph_replays_equal_eager_steps(thought_mode, thought_targets):
    model, _ = model_and_batch(thought_mode, (0, 0, 0, 0), dtype = torch.float32, device = 'cuda')
    eager_step, graphed_step = TrainStep(model, loss_scale = 0.5), TrainStep(model, loss_scale = 0.5, cuda_graphs = True)

    # several shapes, a shape seen again, and gradients accumulating over two steps before they are compared
    for stages in [(1, 2, 0, 3), (2, 2, 2, 2), (1, 2, 0, 3), (0, 0, 0, 0), (3, 3, 3, 3)]:
        _, batch = model_and_batch(thought_mode, stages, thought_targets = thought_targets)
        results = []
        for step in (eager_step, graphed_step):
            model.zero_grad(set_to_none = True)
            stats = [step(batch), step(batch)]
            results.append((stats, gradients(model)))
        (eager_stats, eager_grads), (graphed_stats, graphed_grads) = results
        for eager, graphed in zip(eager_stats, graphed_stats):
            for name in ('loss', 'correct', 'counted', 'thought_loss'):
                torch.testing.assert_close(getattr(graphed, name), getattr(eager, name), atol = 1e-5, rtol = 1e-5)
        assert graphed_grads.keys() == eager_grads.keys()
        for name in eager_grads:
            torch.testing.assert_close(graphed_grads[name], eager_grads[name], atol = 1e-5, rtol = 1e-4, msg = name)

    # (1, 2, 0, 3) and (2, 2, 2, 2) both take 4 thoughts (at most), a 32-token prompt and a 16-token answer: one graph
    # (keys: passes, prompt, answer, thought targets, halting targets, a rank's share weights)
    assert sorted(graphed_step.graphs) == [(n, 32, 16, thought_targets, False, False) for n in (0, 4, 6)]
    # the three captures' time is counted (an epoch's record reports it: seconds_capture); eager steps add none
    assert graphed_step.capture_seconds > 0 and eager_step.capture_seconds == 0
    # a batch of another size (an epoch's last) runs eagerly
    _, batch = model_and_batch(thought_mode, (1, 1, 1, 1), thought_targets = thought_targets)
    graphed_step(Batch(*(t[:3] if t is not None else None for t in batch)))
    assert len(graphed_step.graphs) == 3


ALIGNED = dict(thought_loss_weight = 0.7, align_mse_weight = 0.3, align_cosine_weight = 0.2, thought_rms_match = True)


@pytest.mark.parametrize('stages', [(1, 2, 0, 3), (0, 0, 0, 0)])
def test_the_recorded_step_with_latent_alignment_equals_the_eager_step(stages):
    model, batch = model_and_batch('continuous', stages, thought_targets = True, **ALIGNED)
    with torch.no_grad():
        model.thought_gain.fill_(1.2)
    step = TrainStep(model, loss_scale = 0.5, thought_mix = True)
    step.set_thought_mix(0.3)

    eager = step(batch)
    eager_grads = gradients(model)
    model.zero_grad(set_to_none = True)
    num_steps, prompt_length, target_length, _ = step.shape_key(batch)
    recorded = step.graphed_body(pad(batch.prompt, prompt_length), pad(batch.target, target_length), batch.num_thoughts, num_steps, batch.thought_targets)
    recorded_grads = gradients(model)

    for name in eager._fields:
        torch.testing.assert_close(getattr(recorded, name), getattr(eager, name), atol = 1e-12, rtol = 1e-12, msg = name)
    assert recorded_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(recorded_grads[name], eager_grads[name], atol = 1e-12, rtol = 1e-10, msg = name)

    # the statistics: the losses of the model's breakdown, every row's own thoughts at gain x the embeddings' RMS
    _, (breakdown, *_) = model(batch.prompt, batch.target, num_reasoning_steps = batch.num_thoughts, thought_targets = batch.thought_targets,
                               thought_mix = 0.3, return_intermediates = True)
    thoughts = int(batch.num_thoughts.sum())
    embedding_rms = model.model.token_emb.weight.pow(2).mean().sqrt()
    torch.testing.assert_close(eager.embedding_rms, embedding_rms, atol = 1e-12, rtol = 0.)
    assert eager.thoughts == thoughts
    if thoughts > 0:
        torch.testing.assert_close(eager.align_mse, breakdown.align_mse_loss.detach(), atol = 1e-12, rtol = 0.)
        torch.testing.assert_close(eager.align_cosine, breakdown.align_cosine_loss.detach(), atol = 1e-12, rtol = 0.)
        torch.testing.assert_close(eager.thought_rms, 1.2 * embedding_rms * thoughts, atol = 1e-10, rtol = 0.)
    else:
        assert eager.align_mse == eager.align_cosine == eager.thought_rms == 0


def test_the_mixing_weight_is_read_in_place_by_every_step():
    model, batch = model_and_batch('continuous', (1, 2, 0, 3), thought_targets = True)
    step = TrainStep(model, thought_mix = True)
    buffer = step.thought_mix
    losses = {}
    for weight in (0., 0.6, 1.):
        step.set_thought_mix(weight)
        model.zero_grad(set_to_none = True)
        losses[weight] = step(batch).loss
        expected = model(batch.prompt, batch.target, num_reasoning_steps = batch.num_thoughts, thought_targets = batch.thought_targets, thought_mix = weight)
        torch.testing.assert_close(losses[weight], expected.detach(), atol = 1e-12, rtol = 0.)
    assert step.thought_mix is buffer                   # the same tensor: a captured graph reads the new value
    assert len({float(loss) for loss in losses.values()}) == 3
    with pytest.raises(ValueError, match = 'thought_mix = True'):
        TrainStep(model).set_thought_mix(0.5)


def test_a_ranks_objective_weights_the_alignment_losses_by_its_share_of_the_thoughts():
    model, batch = model_and_batch('continuous', (1, 2, 0, 3), thought_targets = True, **ALIGNED)
    loss_module = BatchLoss(model)
    args = (batch.prompt, batch.target, batch.num_thoughts, int(batch.num_thoughts.max()), batch.thought_targets)
    whole, _ = loss_module(*args)
    # with every share 1 the objective is the loss; with only the thoughts' share, the thought terms alone
    torch.testing.assert_close(loss_module(*args, torch.ones(3, dtype = torch.float64))[0], whole, atol = 1e-12, rtol = 0.)
    _, (breakdown, *_) = model(batch.prompt, batch.target, num_reasoning_steps = batch.num_thoughts, thought_targets = batch.thought_targets, return_intermediates = True)
    thought_terms = 0.7 * breakdown.thought_loss + 0.3 * breakdown.align_mse_loss + 0.2 * breakdown.align_cosine_loss
    torch.testing.assert_close(loss_module(*args, torch.tensor([0., 1., 0.], dtype = torch.float64))[0], thought_terms, atol = 1e-12, rtol = 0.)


@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'needs CUDA')
def test_cuda_graph_replays_with_latent_alignment_and_mixing_equal_eager_steps():
    model, _ = model_and_batch('continuous', (0, 0, 0, 0), dtype = torch.float32, device = 'cuda', **ALIGNED)
    eager_step, graphed_step = TrainStep(model, thought_mix = True), TrainStep(model, cuda_graphs = True, thought_mix = True)
    _, batch = model_and_batch('continuous', (1, 2, 0, 3), thought_targets = True)
    # one graph, replayed at every weight: the weight is read from the step's buffer
    for weight in (0.5, 0., 1.):
        results = []
        for step in (eager_step, graphed_step):
            step.set_thought_mix(weight)
            model.zero_grad(set_to_none = True)
            results.append((step(batch), gradients(model)))
        (eager, eager_grads), (graphed, graphed_grads) = results
        for name in eager._fields:
            torch.testing.assert_close(getattr(graphed, name), getattr(eager, name), atol = 1e-5, rtol = 1e-5, msg = name)
        for name in eager_grads:
            torch.testing.assert_close(graphed_grads[name], eager_grads[name], atol = 1e-5, rtol = 1e-4, msg = name)
    assert len(graphed_step.graphs) == 1


def test_graphs_no_batch_replayed_since_the_last_epoch_are_released(monkeypatch):
    # the bookkeeping alone, on the CPU: capture stands in for the GPU's
    model, _ = model_and_batch('continuous', (0, 0, 0, 0))
    step = TrainStep(model, max_graphs = 8)
    captured = []
    monkeypatch.setattr(step, 'capture', lambda *key: captured.append(key) or object())
    stage_a, stage_b, stage_c = (1, 32, 16, False), (2, 32, 16, False), (3, 32, 16, False)

    for key in (stage_a, stage_a, stage_b):       # an epoch that ends at a stage change
        step.graph_for(key)
    assert step.release_unreplayed() == 0 and list(step.graphs) == [stage_a, stage_b]
    step.graph_for(stage_b)                        # the next epoch: only the new stage's shape
    assert step.release_unreplayed() == 1 and list(step.graphs) == [stage_b]
    step.graph_for(stage_c)
    step.graph_for(stage_b)
    assert step.release_unreplayed() == 0 and list(step.graphs) == [stage_c, stage_b]
    assert step.release_unreplayed() == 2 and not step.graphs      # an epoch that replayed nothing (all eager)
    step.graph_for(stage_a)                        # a shape seen again is captured again
    assert captured == [stage_a, stage_b, stage_c, stage_a]


def test_the_loop_releases_unreplayed_graphs_after_every_epoch(tmp_path, monkeypatch):
    from helpers import SMALL
    from coconut_pytorch.training import TrainConfig, train
    calls = []
    original = TrainStep.release_unreplayed
    monkeypatch.setattr(TrainStep, 'release_unreplayed', lambda self: calls.append(None) or original(self))
    result = train(TrainConfig(**SMALL), tmp_path)
    assert len(calls) == len(torch.load(result['checkpoint'], weights_only = True)['history']) > 1
