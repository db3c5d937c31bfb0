"""Learned halting in training (`TrainConfig.halt_loss`): each row's halting target is its own thought count at its
stage, without pad_latent_to_max's padding; the step's loss is the model's; the setting is checked, built into the
model, and logged."""

import pytest
import torch
from helpers import TINY

from coconut_pytorch import Coconut
from coconut_pytorch.data import Example, WordTokenizer
from coconut_pytorch.training import TrainConfig, load_trained, train
from coconut_pytorch.training.batches import collate, encode_at_stage
from coconut_pytorch.training.model import build_model
from coconut_pytorch.training.schedule import Curriculum
from coconut_pytorch.training.step import BatchLoss, TrainStep


EXAMPLES = [
    Example(question = 'q1 q2', steps = ['s1 a', 's2 b'], answer = 'ans'),
    Example(question = 'q3 q1 q2 q3 q1', steps = ['s3 c', 's4 d', 's1 a', 's2 b'], answer = 'ans'),
    Example(question = 'q2', steps = ['s2 b'], answer = 'ans'),
]

TOKENIZER = WordTokenizer.from_texts([text for e in EXAMPLES for text in (e.question, *e.steps, e.answer)])


def laid_out(stage, **curriculum):
    curriculum = Curriculum(**{'method': 'coconut', 'thoughts_per_step': 2, 'max_latent_stage': 3, **curriculum})
    return collate([encode_at_stage(e, TOKENIZER, curriculum, stage) for e in EXAMPLES], with_halt_after = True)


@pytest.mark.parametrize('stage, curriculum, num_thoughts, halt_after', [
    # c = 2, examples of 2, 4 and 1 steps: stage k gives k x 2 thoughts, padded; its own count stops at its steps
    (1, dict(pad_latent_to_max = True), [2, 2, 2], [2, 2, 2]),
    (2, dict(pad_latent_to_max = True), [4, 4, 4], [4, 4, 2]),
    (3, dict(pad_latent_to_max = True), [6, 6, 6], [4, 6, 2]),
    (3, dict(pad_latent_to_max = False), [4, 6, 2], [4, 6, 2]),
    # one thought at a time: stage 3 is 3 thoughts
    (3, dict(pad_latent_to_max = True, one_thought_at_a_time = True), [3, 3, 3], [3, 3, 2]),
    # without a curriculum, the last stage from the start
    (0, dict(method = 'coconut_no_curriculum', pad_latent_to_max = True), [6, 6, 6], [4, 6, 2]),
    # r = 3 tokens a stage ('s1 a <sep>' is 3 tokens), c = 2 thoughts in place of each r
    (2, dict(pad_latent_to_max = True, tokens_per_stage = 3, max_latent_stage = 4), [4, 4, 4], [4, 4, 2]),
    (0, dict(pad_latent_to_max = True), [0, 0, 0], [0, 0, 0]),
])
def test_each_row_halts_after_its_own_thoughts_at_its_stage(stage, curriculum, num_thoughts, halt_after):
    batch = laid_out(stage, **curriculum)
    assert batch.num_thoughts.tolist() == num_thoughts
    assert batch.halt_after.tolist() == halt_after


def test_batches_carry_halting_targets_only_when_asked():
    curriculum = Curriculum(method = 'coconut', thoughts_per_step = 2, max_latent_stage = 3)
    assert collate([encode_at_stage(e, TOKENIZER, curriculum, 1) for e in EXAMPLES]).halt_after is None


def halting_model(weight = 0.6):
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 0, transformer = dict(num_tokens = len(TOKENIZER), dim = 16, depth = 1, dim_head = 8, heads = 2),
                    halt_loss_weight = weight)
    return model.double().train()


def test_the_steps_loss_is_the_models_with_the_halting_loss():
    model = halting_model()
    batch = laid_out(3, pad_latent_to_max = True)
    expected, (breakdown, *_) = model(batch.prompt, batch.target, num_reasoning_steps = batch.num_thoughts, halt_after = batch.halt_after,
                                      return_intermediates = True)
    assert breakdown.halt_loss > 0
    torch.testing.assert_close(expected, breakdown.answer_loss + 0.6 * breakdown.halt_loss,
                               atol = 1e-12, rtol = 1e-12)

    model.zero_grad()
    stats = TrainStep(model)(batch)
    torch.testing.assert_close(stats.loss, expected.detach(), atol = 1e-12, rtol = 1e-12)
    torch.testing.assert_close(stats.halt_loss, breakdown.halt_loss.detach(), atol = 1e-12, rtol = 1e-12)
    assert model.to_halt_logit.weight.grad is not None and model.to_halt_logit.weight.grad.abs().sum() > 0

    # what BatchLoss runs (the module DDP would wrap): the same, with every row's steps as a tensor
    loss, recorded = BatchLoss(model)(batch.prompt, batch.target, batch.num_thoughts, int(batch.num_thoughts.max()), halt_after = batch.halt_after)
    torch.testing.assert_close(loss, expected, atol = 1e-12, rtol = 1e-12)
    torch.testing.assert_close(recorded.halt_loss, stats.halt_loss, atol = 1e-12, rtol = 1e-12)

    # without halting targets there is no halting loss
    assert TrainStep(model)(batch._replace(halt_after = None)).halt_loss.item() == 0.


def pad(t, length):
    return torch.nn.functional.pad(t, (0, length - t.shape[1]), value = -1)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('stage, pad_latent_to_max', [(3, True), (2, False), (0, False)])
def test_the_recorded_step_with_halting_targets_equals_the_eager_step(stage, pad_latent_to_max):
    # what a CUDA graph records: padded prompt and answer, every row's steps as a tensor, the batch's most steps,
    # and the halting targets from a buffer of their own
    model = halting_model()
    batch = laid_out(stage, pad_latent_to_max = pad_latent_to_max)
    step = TrainStep(model, loss_scale = 0.5)
    eager = step(batch)
    eager_grads = gradients(model)
    model.zero_grad(set_to_none = True)

    passes, prompt_length, target_length, _ = step.shape_key(batch)
    recorded = step.graphed_body(pad(batch.prompt, prompt_length + 3), pad(batch.target, target_length + 2), batch.num_thoughts, passes,
                                 halt_after = batch.halt_after)
    recorded_grads = gradients(model)

    assert (eager.halt_loss > 0) == (stage > 0)
    for name in eager._fields:
        torch.testing.assert_close(getattr(recorded, name), getattr(eager, name), atol = 1e-12, rtol = 1e-12, msg = name)
    assert recorded_grads.keys() == eager_grads.keys()
    assert (eager_grads['to_halt_logit.weight'].abs().sum() > 0) == (stage > 0)
    for name in eager_grads:
        torch.testing.assert_close(recorded_grads[name], eager_grads[name], atol = 1e-12, rtol = 1e-10, msg = name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'needs CUDA')
def test_cuda_graph_replays_with_halting_targets_equal_eager_steps():
    model = halting_model().float().cuda()
    eager_step, graphed_step = TrainStep(model), TrainStep(model, cuda_graphs = True)
    for stage, pad_latent_to_max in [(3, True), (2, False), (3, True)]:
        batch = laid_out(stage, pad_latent_to_max = pad_latent_to_max)
        results = []
        for step in (eager_step, graphed_step):
            model.zero_grad(set_to_none = True)
            results.append(([step(batch), step(batch)], gradients(model)))
        (eager_stats, eager_grads), (graphed_stats, graphed_grads) = results
        for eager, graphed in zip(eager_stats, graphed_stats):
            for name in eager._fields:
                torch.testing.assert_close(getattr(graphed, name), getattr(eager, name), atol = 1e-5, rtol = 1e-5, msg = name)
        assert graphed_grads.keys() == eager_grads.keys()
        for name in eager_grads:
            torch.testing.assert_close(graphed_grads[name], eager_grads[name], atol = 1e-5, rtol = 1e-4, msg = name)
    # graphs of batches with halting targets are their own: (passes, prompt, answer, thought targets, halting targets, share)
    assert all(key[4] for key in graphed_step.graphs) and len(graphed_step.graphs) == 2
    # the same batch without halting targets gets a graph that reads none
    batch = laid_out(2)._replace(halt_after = None)
    assert graphed_step(batch).halt_loss.item() == 0. and len(graphed_step.graphs) == 3


def test_a_halting_model_trains_in_one_process_only():
    model = halting_model()
    from coconut_pytorch.distributed import World
    with pytest.raises(ValueError, match = 'halting model'):
        TrainStep(model, world = World(rank = 0, size = 2, distributed = True))


@pytest.mark.parametrize('setting, error, message', [
    (dict(halt_loss = -0.5), ValueError, 'halt_loss must be finite and >= 0'),
    (dict(halt_loss = float('nan')), ValueError, 'halt_loss must be finite and >= 0'),
    (dict(halt_loss = '1'), TypeError, 'halt_loss must be a number'),
    (dict(halt_loss = 1., method = 'cot'), ValueError, 'halt_loss decides after each fed-back thought'),
    (dict(halt_loss = 1., method = 'pause_as_thought'), ValueError, 'halt_loss decides after each fed-back thought'),
])
def test_bad_halting_settings_are_named(setting, error, message):
    with pytest.raises(error, match = message):
        TrainConfig(**setting)


def test_halting_trains_under_cuda_graphs_too():
    assert TrainConfig(halt_loss = 1., cuda_graphs = True, device = 'cuda', bf16 = True).halt_loss == 1.


def test_the_setting_is_off_by_default_and_builds_the_head():
    curriculum = Curriculum()
    assert TrainConfig().halt_loss == 0. and TrainConfig.from_dict(dict(task = 'running_sum')).halt_loss == 0.
    assert build_model(TrainConfig(device = 'cpu'), len(TOKENIZER), curriculum).to_halt_logit is None
    model = build_model(TrainConfig(device = 'cpu', halt_loss = 0.3), len(TOKENIZER), curriculum)
    assert model.halt_loss_weight == 0.3 and model.to_halt_logit is not None
    TrainConfig(method = 'coconut_no_curriculum', halt_loss = 1.)


@pytest.fixture(scope = 'module')
def halting_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('halting')
    result = train(TrainConfig(method = 'coconut', halt_loss = 0.5, **TINY), out / 'run')
    return result, out / 'run'


def test_a_halting_run_trains_and_logs_its_halting_loss(halting_run):
    result, out = halting_run
    history = torch.load(out / 'checkpoint.pt', weights_only = True)['history']
    for record in history:
        # stage 0 has no thoughts, so no halting loss
        assert (record['halt_loss'] > 0) == (record['stage'] > 0), record
    model, *_ = load_trained(result['checkpoint'])
    assert model.halt_loss_weight == 0.5 and model.to_halt_logit is not None


# evaluation

def test_evaluation_halts_each_question_and_reports_the_thoughts_it_used(halting_run):
    from coconut_pytorch.data.tasks import get_task
    from coconut_pytorch.evaluate import encode_questions, evaluate_examples, generate_greedy

    model, tokenizer, _, info = load_trained(halting_run[0]['checkpoint'], device = 'cpu')
    model.double()
    examples = get_task('running_sum', num_digits = 3).generate(12, seed = 5)
    most = 4

    # a threshold between the halting probabilities the questions reach, so that they stop at different counts
    prompts = encode_questions(examples, tokenizer)
    probabilities = torch.cat([model(prompt[None], return_loss = False, num_reasoning_steps = most).latent_tokens[0] for prompt in prompts])
    probabilities = model.halt_probability(probabilities[:, None]).sort().values
    threshold = float(probabilities[len(probabilities) // 2])

    result = evaluate_examples(model, tokenizer, examples, num_thoughts = most, max_new_tokens = 8, batch_size = 5, halt_threshold = threshold)
    used = result['thoughts_used']
    assert all(1 <= count <= most for count in used) and len(set(used)) > 1, used
    assert result['mean_num_thoughts'] == sum(used) / len(used) and result['halt_threshold'] == threshold

    # each question's answer is the one it gets thinking its count, alone
    for index, prompt in enumerate(prompts):
        alone = generate_greedy(model, [prompt], tokenizer.eos_id, used[index], 8)
        assert tokenizer.decode(alone[0]) == result['texts'][index], index

    with pytest.raises(ValueError, match = 'num_samples'):
        evaluate_examples(model, tokenizer, examples, num_thoughts = most, max_new_tokens = 8, halt_threshold = threshold, num_samples = 2)


def test_the_evaluate_command_halts(halting_run, in_process, tmp_path):
    import json
    from coconut_pytorch.data import Example, save_json_examples
    from coconut_pytorch.evaluate import main as evaluate

    data = tmp_path / 'data.json'
    save_json_examples([Example(question = q, steps = [], answer = a) for q, a in (('1 2 3', '6'), ('4 4 4', '2'), ('3 1', '4'))], data)
    run = lambda *args: in_process(evaluate, '--checkpoint', halting_run[0]['checkpoint'], '--data', data, '--device', 'cpu', *args)

    plain = run()
    halted = run('--halt-threshold', 0.5, '--max-reasoning-steps', 3, '--predictions', tmp_path / 'predictions.jsonl')
    assert plain.returncode == 0 and halted.returncode == 0, halted.stderr
    plain, halted = (json.loads(result.stdout.strip().splitlines()[-1]) for result in (plain, halted))
    assert set(halted) - set(plain) == {'halt_threshold', 'mean_num_thoughts'}
    assert halted['num_thoughts'] == 3 and 1 <= halted['mean_num_thoughts'] <= 3
    records = [json.loads(line) for line in (tmp_path / 'predictions.jsonl').read_text().splitlines()]
    assert sum(record['num_thoughts'] for record in records) / 3 == halted['mean_num_thoughts']

    for args, flag in [(('--halt-threshold', 1.5), '--halt-threshold'), (('--max-reasoning-steps', 2), '--max-reasoning-steps'),
                       (('--halt-threshold', 0.5, '--num-samples', 2), '--halt-threshold'),
                       (('--halt-threshold', 0.5, '--max-reasoning-steps', 0), '--max-reasoning-steps')]:
        failed = run(*args)
        assert failed.returncode == 2 and flag in failed.stderr, args
