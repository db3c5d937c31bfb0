"""Stage construction for every method, mixed-stage batches, training, resuming and evaluation."""

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from coconut_pytorch import Coconut
from coconut_pytorch.curriculum import METHODS, Curriculum, collate, encode_at_stage, staged_examples
from coconut_pytorch.data import Example, WordTokenizer, save_json_examples
from coconut_pytorch.evaluate import answer_text
from coconut_pytorch.training import TrainConfig, load_trained, train

EXAMPLE = Example(question = 'q1 q2 q3', steps = ['s1 a', 's2 b', 's3 c', 's4 d'], answer = 'ans')
TOKENIZER = WordTokenizer.from_texts([EXAMPLE.question, *EXAMPLE.steps, EXAMPLE.answer])


def layout(method, stage, **kwargs):
    curriculum = Curriculum(method = method, **{'thoughts_per_step': 2, 'max_latent_stage': 3, **kwargs})
    staged = encode_at_stage(EXAMPLE, TOKENIZER, curriculum, stage)
    return TOKENIZER.decode(staged.target, skip_special = False), staged.num_thoughts


SEP, EOS = '<sep>', '<eos>'


@pytest.mark.parametrize('method, stage, target, thoughts', [
    ('coconut', 0, f's1 a {SEP} s2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 0),
    ('coconut', 1, f's2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 2),
    ('coconut', 2, f's3 c {SEP} s4 d {SEP} ans {EOS}', 4),
    # the last stage drops the remaining language steps
    ('coconut', 3, f'ans {EOS}', 6),
    ('coconut_no_curriculum', 0, f'ans {EOS}', 6),
    ('no_thoughts', 2, f's3 c {SEP} s4 d {SEP} ans {EOS}', 0),
    ('no_thoughts', 3, f'ans {EOS}', 0),
    ('pause_as_thought', 1, f's2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 2),
    ('pause', 0, f'ans {EOS}', 6),
    ('cot', 0, f's1 a {SEP} s2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 0),
    ('no_cot', 0, f'ans {EOS}', 0),
])
def test_stage_layout_per_method(method, stage, target, thoughts):
    assert layout(method, stage) == (target, thoughts)


@pytest.mark.parametrize('method, stage, target, thoughts', [
    # 12 language tokens (s1 a <sep> s2 b <sep> ...), 5 removed per stage: 3 stages, the last removes all
    ('coconut', 0, f's1 a {SEP} s2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 0),
    ('coconut', 1, f'{SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 2),
    ('coconut', 2, f'd {SEP} ans {EOS}', 4),
    ('coconut', 3, f'ans {EOS}', 6),
    ('no_thoughts', 2, f'd {SEP} ans {EOS}', 0),
    ('pause_as_thought', 1, f'{SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 2),
    # methods without a curriculum ignore it
    ('cot', 0, f's1 a {SEP} s2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 0),
    ('pause', 0, f'ans {EOS}', 6),
])
def test_token_stages_remove_tokens_not_steps(method, stage, target, thoughts):
    assert layout(method, stage, tokens_per_stage = 5) == (target, thoughts)


def test_token_stages_cap_thoughts_at_an_examples_own_chunks():
    curriculum = Curriculum(method = 'coconut', thoughts_per_step = 2, max_latent_stage = 3, tokens_per_stage = 5)
    short = Example(question = 'q1', steps = ['s1 a'], answer = 'ans')    # 3 language tokens: one chunk of 5
    assert encode_at_stage(short, TOKENIZER, curriculum, 2).num_thoughts == 2
    padded = Curriculum(**{**curriculum.__dict__, 'pad_latent_to_max': True})
    assert encode_at_stage(short, TOKENIZER, padded, 2).num_thoughts == 4
    for bad, message in ((dict(tokens_per_stage = 0), 'tokens_per_stage'), (dict(tokens_per_stage = 2, one_thought_at_a_time = True), 'cannot be combined')):
        with pytest.raises(ValueError, match = message):
            Curriculum(**bad)
        with pytest.raises(ValueError, match = message):
            TrainConfig(**bad)


def test_removal_smoothing_removes_a_few_examples_tokens_early():
    curriculum = Curriculum(method = 'no_thoughts', max_latent_stage = 3, tokens_per_stage = 5, removal_smoothing = 1.)
    staged = staged_examples([EXAMPLE] * 2000, TOKENIZER, curriculum, stage = 1, rng = random.Random(0))
    removed = [12 + 2 - len(s.target) for s in staged]     # 12 language tokens, then 'ans <eos>'
    extra = [r - 5 for r in removed]
    assert min(extra) == 0 and all(s.num_thoughts == 0 for s in staged)
    # P(o >= 1) = exp(-1) with lambda = 1, P(o >= 2) = exp(-2)
    assert abs(sum(o >= 1 for o in extra) / 2000 - math.exp(-1.)) < 0.03
    assert abs(sum(o >= 2 for o in extra) / 2000 - math.exp(-2.)) < 0.02
    # the last stage removes everything anyway; without smoothing nothing changes
    final = staged_examples([EXAMPLE] * 50, TOKENIZER, curriculum, stage = 3, rng = random.Random(0))
    assert all(len(s.target) == 2 for s in final)
    plain = Curriculum(method = 'no_thoughts', max_latent_stage = 3, tokens_per_stage = 5)
    assert {len(s.target) for s in staged_examples([EXAMPLE] * 50, TOKENIZER, plain, 1, random.Random(0))} == {12 - 5 + 2}
    for bad, message in ((dict(removal_smoothing = 4.), 'needs tokens_per_stage'), (dict(tokens_per_stage = 8, removal_smoothing = 0.), 'removal_smoothing must be')):
        with pytest.raises(ValueError, match = message):
            Curriculum(**bad)
        with pytest.raises(ValueError, match = message):
            TrainConfig(**bad)


def test_token_stages_default_to_removing_the_longest_examples_language(tmp_path):
    from coconut_pytorch.data.tasks import get_task
    from coconut_pytorch.data.tokenizer import target_lengths
    task = get_task('running_sum', num_digits = 3)
    longest = max(steps for steps, _ in target_lengths(task.generate(SMALL['train_size'], seed = 0), WordTokenizer(task.vocabulary())))
    result = train(TrainConfig(method = 'no_thoughts', tokens_per_stage = 4, **SMALL), tmp_path)
    assert result['final_stage'] == -(-longest // 4) and result['stage'] == result['final_stage'] and result['num_thoughts'] == 0


def test_one_thought_at_a_time_schedule():
    curriculum = Curriculum(method = 'coconut', thoughts_per_step = 2, max_latent_stage = 3, one_thought_at_a_time = True)
    assert curriculum.num_stages == 7
    # a step leaves language only once both of its thoughts are in
    assert layout('coconut', 1, one_thought_at_a_time = True) == (f's1 a {SEP} s2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 1)
    assert layout('coconut', 2, one_thought_at_a_time = True)[1] == 2
    assert layout('coconut', 3, one_thought_at_a_time = True) == (f's2 b {SEP} s3 c {SEP} s4 d {SEP} ans {EOS}', 3)


def test_pad_latent_to_max_caps_short_examples():
    short = Example(question = 'q1', steps = ['s1 a'], answer = 'ans')
    padded = Curriculum(method = 'coconut', thoughts_per_step = 2, max_latent_stage = 3, pad_latent_to_max = True)
    capped = Curriculum(method = 'coconut', thoughts_per_step = 2, max_latent_stage = 3, pad_latent_to_max = False)
    assert encode_at_stage(short, TOKENIZER, padded, 2).num_thoughts == 4
    assert encode_at_stage(short, TOKENIZER, capped, 2).num_thoughts == 2


def test_stage_schedule_and_bad_settings():
    curriculum = Curriculum(method = 'coconut', max_latent_stage = 2, epochs_per_stage = 3)
    assert [curriculum.stage_at_epoch(e) for e in range(11)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert Curriculum(method = 'cot').stage_at_epoch(5) == 0

    for bad in (dict(method = 'magic'), dict(thoughts_per_step = 0), dict(uniform_prob = 1.5), dict(epochs_per_stage = 0)):
        with pytest.raises(ValueError, match = next(iter(bad))):
            Curriculum(**bad)


def test_uniform_prob_mixes_stages():
    curriculum = Curriculum(method = 'coconut', max_latent_stage = 3, uniform_prob = 0.5)
    staged = staged_examples([EXAMPLE] * 200, TOKENIZER, curriculum, stage = 3, rng = random.Random(0))
    counts = {s.num_thoughts for s in staged}
    assert counts == {0, 1, 2, 3}


@pytest.mark.parametrize('method', ['coconut', 'pause_as_thought'])
def test_mixed_stage_batch_equals_each_example_alone(method):
    examples = [
        Example(question = 'q1 q2', steps = ['s1 a', 's2 b'], answer = 'ans'),
        Example(question = 'q3 q1 q2 q3 q1', steps = ['s3 c', 's4 d', 's1 a'], answer = 'ans'),
        Example(question = 'q2', steps = ['s2 b'], answer = 'ans'),
    ]
    curriculum = Curriculum(method = method, thoughts_per_step = 2, max_latent_stage = 3)
    staged = [encode_at_stage(example, TOKENIZER, curriculum, stage) for example, stage in zip(examples, (1, 2, 0))]
    batch = collate(staged)
    assert batch.num_thoughts.tolist() == [2, 4, 0]

    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 0, transformer = dict(num_tokens = len(TOKENIZER), dim = 32, depth = 2, dim_head = 8, heads = 4), thought_mode = curriculum.thought_mode).double().eval()

    batched = model(batch.prompt, batch.target, return_loss = False, num_reasoning_steps = batch.num_thoughts).answer_logits
    for index, s in enumerate(staged):
        alone = model(s.prompt[None], s.target[None], return_loss = False, num_reasoning_steps = s.num_thoughts).answer_logits
        torch.testing.assert_close(batched[index, :len(s.target)], alone[0], atol = 1e-8, rtol = 1e-8)


def test_answer_text_takes_what_follows_the_last_separator():
    tokenizer = WordTokenizer(['Tom', 'is', 'a', 'wumpus', '.'])
    ids = tokenizer.encode('Tom is a wumpus.')
    generated = ids + [tokenizer.sep_id] + ids + [tokenizer.eos_id] + ids + [-1, -1]
    assert answer_text(generated, tokenizer) == 'Tom is a wumpus.'
    assert answer_text(ids, tokenizer) == 'Tom is a wumpus.'


SMALL = dict(task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 512, eval_size = 64, batch_size = 64,
             epochs_per_stage = 1, final_epochs = 1, dim = 32, depth = 1, heads = 2, dim_head = 16, warmup_steps = 5)


@pytest.mark.parametrize('method', METHODS)
def test_every_method_trains_saves_and_evaluates(tmp_path, method):
    result = train(TrainConfig(method = method, **SMALL), tmp_path)
    assert result['finished'] and result['n'] == 64 and 0. <= result['accuracy'] <= 1.
    assert (tmp_path / 'training.png').stat().st_size > 0

    model, tokenizer, config, info = load_trained(tmp_path / 'checkpoint.pt')
    assert config.method == method
    expected_thoughts = {'coconut': 2, 'coconut_no_curriculum': 2, 'pause': 2, 'pause_as_thought': 2}.get(method, 0)
    assert info['num_thoughts'] == expected_thoughts


@pytest.mark.parametrize('fresh_data, rewarm', [(False, False), (True, False), (False, True)])
def test_resume_continues_exactly(tmp_path, fresh_data, rewarm):
    config = TrainConfig(method = 'coconut', fresh_data = fresh_data, rewarm_each_stage = rewarm, **SMALL)

    straight = train(config, tmp_path / 'straight')

    # stop after the first epoch (a zero budget), then resume to the end
    first = train(TrainConfig(**{**config.__dict__, 'time_budget': 0.}), tmp_path / 'resumed')
    assert not first['finished'] and first['epoch'] == 0
    resumed = train(config, tmp_path / 'resumed', resume = True)

    straight_state = torch.load(tmp_path / 'straight' / 'checkpoint.pt', weights_only = True)
    resumed_state = torch.load(tmp_path / 'resumed' / 'checkpoint.pt', weights_only = True)
    assert [h['loss'] for h in straight_state['history']] == pytest.approx([h['loss'] for h in resumed_state['history']], rel = 1e-5)
    for name, tensor in straight_state['model'].items():
        torch.testing.assert_close(tensor, resumed_state['model'][name], rtol = 1e-5, atol = 1e-6)
    assert resumed['accuracy'] == straight['accuracy']
    assert resumed_state['inference'] == straight_state['inference']

    with pytest.raises(ValueError, match = 'differs'):
        train(TrainConfig(**{**config.__dict__, 'lr': 0.5}), tmp_path / 'resumed', resume = True)


def test_fresh_data_draws_new_sets_apart_from_the_held_out_seed():
    from coconut_pytorch.data.tasks import get_task
    from coconut_pytorch.data.fresh_sets import fresh_data_seed, held_out_seed

    seeds = [fresh_data_seed(seed, epoch) for seed in (0, 1, 7) for epoch in range(1, 50)]
    held_out = {held_out_seed(seed) for seed in (0, 1, 7)}
    assert len(set(seeds)) == len(seeds) and not held_out & set(seeds) and not {0, 1, 7} & set(seeds)

    task = get_task('running_sum', num_digits = 4)
    first, second = (task.generate(64, seed = fresh_data_seed(0, epoch)) for epoch in (1, 2))
    assert [e.question for e in first] != [e.question for e in second]


def test_fresh_sets_from_the_workers_equal_sets_made_in_line():
    from coconut_pytorch.curriculum import EpochLayout
    from coconut_pytorch.data.fresh_sets import FreshSets, fresh_data_seed, generate_epoch
    from coconut_pytorch.data.tasks import get_task

    tokenizer = WordTokenizer(get_task('prosqa').vocabulary())
    curriculum = Curriculum(max_latent_stage = 6, epochs_per_stage = 1, uniform_prob = 0.3)
    # with thought targets, so that every field of a batch travels back from the workers
    layout = EpochLayout(tokenizer, curriculum, batch_size = 10, seed = 3, with_thought_targets = True)
    in_line = {epoch: generate_epoch('prosqa', {}, 24, fresh_data_seed(3, epoch), layout, epoch) for epoch in (1, 2, 3)}

    def same(made, expected):
        (batches, longest), (expected_batches, expected_longest) = made, expected
        assert longest == expected_longest and len(batches) == len(expected_batches) == 3
        for batch, expected_batch in zip(batches, expected_batches):
            assert batch.thought_targets is not None
            for t, e in zip(batch, expected_batch):
                assert torch.equal(t, e)

    sets = FreshSets('prosqa', {}, 24, 3, total_epochs = 4, layout = layout, workers = 2)
    try:
        assert sets.pool is not None and sorted(sets.pending) == [1, 2]   # two epochs in the making ahead
        fetched = {epoch: sets.get(epoch) for epoch in (1, 2, 3)}
        assert not sets.pending  # nothing is generated past the last epoch
    finally:
        sets.close()
    for epoch in (1, 2, 3):
        same(fetched[epoch], in_line[epoch])
    # batches come back by value, not as shared-memory tensors that each hold a file descriptor open
    assert not any(t.is_shared() for batch in fetched[1][0] for t in batch)
    # each epoch is laid out at its own stage (most rows; uniform_prob mixes in others)
    assert [int(fetched[epoch][0][0].num_thoughts.mode().values) for epoch in (1, 2, 3)] == [1, 2, 3]

    # workers that cannot run fall back to making the epoch in line
    broken = FreshSets('prosqa', {}, 24, 3, total_epochs = 4, layout = layout, workers = 1)
    broken.close()
    same(broken.get(2), in_line[2])


def test_training_run_learns(tmp_path):
    config = TrainConfig(method = 'coconut', task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 1000, eval_size = 200,
                         batch_size = 64, epochs_per_stage = 2, final_epochs = 10, dim = 64, depth = 2, heads = 4, dim_head = 16, lr = 2e-3)
    result = train(config, tmp_path)
    assert result['accuracy'] >= 0.9, result


def test_evaluate_command_on_files(tmp_path):
    train(TrainConfig(method = 'coconut', **SMALL), tmp_path)
    checkpoint = tmp_path / 'checkpoint.pt'

    data = tmp_path / 'data.json'
    save_json_examples([Example(question = '1 2 3', steps = ['3', '6'], answer = '6'), Example(question = '4 4 4', steps = ['8', '2'], answer = '2')], data)

    unknown = tmp_path / 'unknown.json'
    save_json_examples([Example(question = '1 2 3', steps = [], answer = '6'), Example(question = 'what is this', steps = [], answer = '6')], unknown)
    broken = tmp_path / 'broken.json'
    broken.write_text('[{"question": "1 2"')
    # a gold answer the vocabulary cannot write would count as wrong whatever the model did: an error instead
    unwritable = tmp_path / 'unwritable.json'
    save_json_examples([Example(question = '1 2 3', steps = [], answer = '6'), Example(question = '1 2 3', steps = [], answer = 'six')], unwritable)
    damaged = tmp_path / 'damaged.pt'
    torch.save({k: v for k, v in torch.load(checkpoint, weights_only = True).items() if k != 'tokenizer'}, damaged)

    # every command starts at once (each spends seconds importing torch), then each is judged
    def start(*args, checkpoint = checkpoint):
        return subprocess.Popen([sys.executable, '-m', 'coconut_pytorch.evaluate', '--checkpoint', str(checkpoint), *args],
                                stdout = subprocess.PIPE, stderr = subprocess.PIPE, text = True)
    runs = dict(done = start('--data', str(data), '--device', 'cpu', '--num-thoughts', '0', '--limit', '1'),
                unknown = start('--data', str(unknown), '--device', 'cpu'),
                broken = start('--data', str(broken), '--device', 'cpu'),
                unwritable = start('--data', str(unwritable), '--device', 'cpu'),
                damaged = start('--data', str(data), checkpoint = damaged),
                **{flag: start('--data', str(data), '--device', 'cpu', flag, '0') for flag in ('--batch-size', '--max-new-tokens')})
    finished = {name: (process.communicate(), process.returncode) for name, process in runs.items()}
    run = lambda name: subprocess.CompletedProcess([], finished[name][1], *finished[name][0])

    done = run('done')
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result['n'] == 1 and result['num_thoughts'] == 0 and set(result) >= {'accuracy', 'n', 'mean_new_tokens', 'seconds'}

    failed = run('unknown')
    assert failed.returncode != 0 and 'example 1' in failed.stderr and 'what' in failed.stderr

    failed = run('broken')
    assert failed.returncode != 0 and 'broken.json' in failed.stderr

    failed = run('unwritable')
    assert failed.returncode != 0 and 'example 1' in failed.stderr and 'six' in failed.stderr

    failed = run('damaged')
    assert failed.returncode != 0 and 'missing: tokenizer' in failed.stderr

    for flag in ('--batch-size', '--max-new-tokens'):
        failed = run(flag)
        assert failed.returncode != 0 and flag in failed.stderr


@pytest.mark.parametrize('setting, error, message', [
    (dict(batch_size = 0), ValueError, 'batch_size must be >= 1'),
    (dict(train_size = 2.5), TypeError, 'train_size must be an int'),
    (dict(depth = True), TypeError, 'depth must be an int'),
    (dict(final_epochs = -1), ValueError, 'final_epochs must be >= 0'),
    (dict(lr = 0.), ValueError, 'lr must be finite and > 0'),
    (dict(lr = float('nan')), ValueError, 'lr must be finite and > 0'),
    (dict(lr = float('inf')), ValueError, 'lr must be finite'),
    (dict(lr_decay_epochs = float('inf')), ValueError, 'lr_decay_epochs must be finite'),
    (dict(thought_loss = float('inf')), ValueError, 'thought_loss must be finite'),
    (dict(seed = -1), ValueError, 'seed must be >= 0'),
    (dict(lr = '1e-3'), TypeError, 'lr must be a number'),
    (dict(uniform_prob = 1.5), ValueError, 'uniform_prob must be at most 1'),
    (dict(time_budget = -1.), ValueError, 'time_budget must be finite and >= 0'),
    (dict(task = 'gsm8k'), ValueError, 'task must be one of'),
    (dict(method = 'icot'), ValueError, 'method must be one of'),
    (dict(task_kwargs = '{}'), TypeError, 'task_kwargs must be a dict'),
    (dict(train_file = 3), TypeError, 'train_file must be a path'),
    (dict(train_file = 'x.json', fresh_data = True), ValueError, 'cannot be used with train_file'),
    (dict(cuda_graphs = True), ValueError, 'cuda_graphs needs a CUDA device'),
    (dict(cuda_graphs = True, compile = True, device = 'cuda'), ValueError, 'cannot be combined'),
    (dict(cuda_graphs = True, checkpoint = True, device = 'cuda'), ValueError, 'cannot be combined'),
])
def test_train_config_names_the_bad_setting(setting, error, message):
    with pytest.raises(error, match = message):
        TrainConfig(**setting)


def running_sum_files(tmp_path, train_size = 600, eval_size = 40):
    from coconut_pytorch.data.tasks import get_task
    task = get_task('running_sum', num_digits = 3)
    train_file, eval_file = tmp_path / 'train.json', tmp_path / 'eval.json'
    save_json_examples(task.generate(train_size, seed = 0), train_file)
    save_json_examples(task.generate(eval_size, seed = 1), eval_file)
    return train_file, eval_file


def test_load_data_from_files_splits_off_a_disjoint_held_out_set(tmp_path):
    from coconut_pytorch.data import load_json_examples
    from coconut_pytorch.training import load_data

    train_file, eval_file = running_sum_files(tmp_path)
    everything = load_json_examples(train_file)

    train_set, eval_set, tokenizer, max_steps = load_data(TrainConfig(train_file = str(train_file), eval_size = 50, seed = 4))
    assert len(eval_set) == 50 and len(train_set) == len(everything) - 50
    held_out = {id(e) for e in eval_set}
    assert not held_out & {id(e) for e in train_set}
    assert sorted(map(repr, train_set + eval_set)) == sorted(map(repr, everything))
    assert max_steps == max(len(e.steps) for e in everything)
    words = {word for e in everything for text in (e.question, *e.steps, e.answer) for word in text.split()}
    assert all(word in tokenizer for word in words)

    # the split follows the seed
    again, _, _, _ = load_data(TrainConfig(train_file = str(train_file), eval_size = 50, seed = 4))
    other, _, _, _ = load_data(TrainConfig(train_file = str(train_file), eval_size = 50, seed = 5))
    assert again == train_set and other != train_set

    # with an eval file nothing is split off
    train_set, eval_set, _, _ = load_data(TrainConfig(train_file = str(train_file), eval_file = str(eval_file)))
    assert train_set == everything and eval_set == load_json_examples(eval_file)

    with pytest.raises(ValueError, match = 'too few'):
        load_data(TrainConfig(train_file = str(train_file), eval_size = 600))
    empty = tmp_path / 'empty.json'
    empty.write_text('[]')
    with pytest.raises(ValueError, match = 'holds no examples'):
        load_data(TrainConfig(train_file = str(empty)))
    # an empty held-out file is found before training, with a generated task or a training file
    with pytest.raises(ValueError, match = 'eval_file .*empty.json holds no examples'):
        load_data(TrainConfig(eval_file = str(empty)))
    with pytest.raises(ValueError, match = 'eval_file .*empty.json holds no examples'):
        load_data(TrainConfig(train_file = str(train_file), eval_file = str(empty)))


@pytest.mark.parametrize('fresh_data', [False, True])
def test_generated_training_sets_never_ask_a_held_out_question(fresh_data):
    from coconut_pytorch.data.fresh_sets import FreshSets, generate_set
    from coconut_pytorch.training import held_out_questions, load_data

    # 3-digit running sums: 1,000 questions, so 400 draws from another seed would repeat many of the 100 held out
    config = TrainConfig(task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 400, eval_size = 100, fresh_data = fresh_data, seed = 3)
    train_set, eval_set, _, _ = load_data(config)
    excluded = held_out_questions(config, eval_set)
    assert len(train_set) == 400 and len(excluded) > 80 and not excluded & {e.question for e in train_set}
    # the filter only removes: what is left of the unfiltered set comes first, in its order
    unfiltered, _, _, _ = load_data(TrainConfig(**{**config.__dict__, 'exclude_held_out': False}))
    kept = [e for e in unfiltered if e.question not in excluded]
    assert len(kept) < 400 and train_set[:len(kept)] == kept

    if fresh_data:
        examples, _ = generate_set(config.task, config.task_kwargs, 400, 12345, excluded)
        assert len(examples) == 400 and not excluded & {e.question for e in examples}
        fresh = FreshSets(config.task, config.task_kwargs, 400, config.seed, 3, None, workers = 1, excluded = excluded)
        assert fresh.arguments(1)[-1] == excluded
        fresh.close()


def test_checkpoints_from_before_the_held_out_filter_read_as_unfiltered():
    assert TrainConfig.from_dict(dict(task = 'running_sum')).exclude_held_out is False
    assert TrainConfig.from_dict(dict(task = 'running_sum', exclude_held_out = True)).exclude_held_out is True


def test_train_names_an_out_dir_that_is_a_file_and_a_missing_gpu(tmp_path):
    a_file = tmp_path / 'taken'
    a_file.write_text('')
    with pytest.raises(ValueError, match = 'is a file'):
        train(TrainConfig(**SMALL), a_file)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match = 'sees no CUDA GPU'):
            train(TrainConfig(**{**SMALL, 'device': 'cuda'}), tmp_path / 'run')
        assert not (tmp_path / 'run').exists()


def test_resume_refuses_data_files_whose_vocabulary_changed(tmp_path):
    train_file, eval_file = running_sum_files(tmp_path)
    config = TrainConfig(**{**SMALL, 'train_file': str(train_file), 'eval_file': str(eval_file), 'time_budget': 0.})
    train(config, tmp_path / 'run')
    # the same number of words, one spelled differently: every id after it would silently shift
    for path in (train_file, eval_file):
        path.write_text(path.read_text().replace('7', 'x7'))
    with pytest.raises(ValueError, match = 'vocabulary'):
        train(config, tmp_path / 'run', resume = True)


def test_trains_on_files_and_the_evaluate_command_agrees(tmp_path):
    train_file, eval_file = running_sum_files(tmp_path)
    config = TrainConfig(**{**SMALL, 'train_file': str(train_file), 'eval_file': str(eval_file)})
    result = train(config, tmp_path / 'run')
    assert result['n'] == 40 and result['task'] == str(train_file)

    run = subprocess.run([sys.executable, '-m', 'coconut_pytorch.evaluate', '--checkpoint', str(tmp_path / 'run' / 'checkpoint.pt'),
                          '--data', str(eval_file)], capture_output = True, text = True)
    assert run.returncode == 0, run.stderr
    evaluated = json.loads(run.stdout.strip().splitlines()[-1])
    assert evaluated['n'] == 40 and evaluated['accuracy'] == result['accuracy'] and evaluated['task'] == result['task'] == str(train_file)


def test_a_generated_run_names_the_eval_file_it_cannot_encode(tmp_path):
    bad = tmp_path / 'bad.json'
    save_json_examples([Example(question = '1 2 zebra', steps = ['3'], answer = '3')], bad)
    with pytest.raises(ValueError, match = 'bad.json.*zebra'):
        train(TrainConfig(**{**SMALL, 'eval_file': str(bad)}), tmp_path / 'run')
    assert not (tmp_path / 'run' / 'checkpoint.pt').exists()  # before any training


def test_rewarm_restarts_the_warmup_at_each_optimizer_reset():
    from coconut_pytorch.training import learning_rate

    plain = TrainConfig(lr = 1e-3, warmup_steps = 4)
    rewarm = TrainConfig(lr = 1e-3, warmup_steps = 4, rewarm_each_stage = True)
    # the first optimizer: both warm up over steps 0-3
    assert [learning_rate(c, step, 0) for c in (plain, rewarm) for step in (0, 3, 9)] == pytest.approx([2.5e-4, 1e-3, 1e-3] * 2)
    # an optimizer made at step 10: only rewarm starts over
    assert [learning_rate(plain, step, 10) for step in (10, 11, 13)] == pytest.approx([1e-3] * 3)
    assert [learning_rate(rewarm, step, 10) for step in (10, 11, 13)] == pytest.approx([2.5e-4, 5e-4, 1e-3])


def test_rewarm_changes_training_only_after_the_first_stage(tmp_path):
    histories = {}
    for rewarm in (False, True):
        train(TrainConfig(method = 'coconut', rewarm_each_stage = rewarm, **{**SMALL, 'warmup_steps': 50}), tmp_path / str(rewarm))
        histories[rewarm] = [h['loss'] for h in torch.load(tmp_path / str(rewarm) / 'checkpoint.pt', weights_only = True)['history']]
    assert histories[True][0] == histories[False][0]     # stage 0: the same optimizer and warmup
    assert histories[True][1] != histories[False][1]     # stage 1: a fresh optimizer, warmed up again or not



def test_lr_decay_takes_the_last_epochs_linearly_to_zero():
    from coconut_pytorch.training import learning_rate

    config = TrainConfig(lr = 1e-3, warmup_steps = 1, lr_decay_epochs = 2)
    assert [learning_rate(config, 100, 0, left) for left in (5., 2., 1., .5, 0.)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 0.])
    assert learning_rate(TrainConfig(lr = 1e-3, warmup_steps = 1), 100, 0, 0.) == pytest.approx(1e-3)  # off: constant
    with pytest.raises(ValueError, match = 'lr_decay_epochs'):
        TrainConfig(lr_decay_epochs = -1)


def test_a_run_decays_its_lr_over_its_last_epochs(tmp_path, monkeypatch):
    # the loop hands each optimizer step how much of the run is left: with lr_decay_epochs = 1, every epoch but the
    # last runs at the full lr, and the last one falls to 0 step by step
    lrs = []
    step = torch.optim.AdamW.step
    # recorded where every update happens, whichever module runs the loop (steps are never skipped here: the loss is finite)
    monkeypatch.setattr(torch.optim.AdamW, 'step', lambda self, *args, **kwargs: (lrs.append(self.param_groups[0]['lr']), step(self, *args, **kwargs))[1])
    train(TrainConfig(method = 'coconut', lr_decay_epochs = 1, **{**SMALL, 'warmup_steps': 0}), tmp_path)

    epochs = len(torch.load(tmp_path / 'checkpoint.pt', weights_only = True)['history'])
    per_epoch = len(lrs) // epochs
    assert epochs > 1 and per_epoch > 1 and len(lrs) == epochs * per_epoch
    assert lrs[:-per_epoch] == pytest.approx([TrainConfig.lr] * (epochs - 1) * per_epoch)
    assert lrs[-per_epoch:] == pytest.approx([TrainConfig.lr * (per_epoch - k) / per_epoch for k in range(1, per_epoch + 1)])

# thought targets: the language each continuous thought replaced

def words_of(staged):
    return [TOKENIZER.decode(list(words), skip_special = False) for words in staged.thought_words]


def test_each_thought_is_paired_with_the_step_it_replaced():
    # c = 2: thoughts 2k and 2k + 1 replace step k, the first its first half, the second the rest; with
    # pad_latent_to_max, thoughts past the steps replace nothing
    staged = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(thoughts_per_step = 2, max_latent_stage = 3), 2)
    assert staged.num_thoughts == 4 and words_of(staged) == ['s1', 'a', 's2', 'b']

    short = Example(question = 'q1', steps = ['s1 a'], answer = 'ans')
    padded = encode_at_stage(short, TOKENIZER, Curriculum(thoughts_per_step = 2, max_latent_stage = 3, pad_latent_to_max = True), 2)
    assert words_of(padded) == ['s1', 'a', '', '']

    # c = 3 on a 2-word step: one thought has no word of its own
    three = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(thoughts_per_step = 3, max_latent_stage = 3), 1)
    assert words_of(three) == ['', 's1', 'a']
    odd = Example(question = 'q1', steps = ['s1 a b c d'], answer = 'ans')
    assert words_of(encode_at_stage(odd, TOKENIZER, Curriculum(thoughts_per_step = 2, max_latent_stage = 1), 1)) == ['s1 a', 'b c d']

    # the last stage drops steps past max_latent_stage without a thought for them
    last = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(thoughts_per_step = 1, max_latent_stage = 2), 2)
    assert words_of(last) == ['s1 a', 's2 b'] and TOKENIZER.decode(last.target, skip_special = False) == f'ans {EOS}'

    # one thought at a time: a thought belongs to its step before the step leaves language
    one = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(thoughts_per_step = 2, max_latent_stage = 3, one_thought_at_a_time = True), 3)
    assert words_of(one) == ['s1', 'a', 's2']

    no_curriculum = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(method = 'coconut_no_curriculum', thoughts_per_step = 1, max_latent_stage = 4), 0)
    assert words_of(no_curriculum) == ['s1 a', 's2 b', 's3 c', 's4 d']


def test_with_token_stages_each_thought_is_paired_with_its_tokens():
    # r = 3 tokens a stage, separators counted: "s1 a <sep> | s2 b <sep> | s3 c ..."
    curriculum = Curriculum(thoughts_per_step = 1, max_latent_stage = 4, tokens_per_stage = 3)
    staged = encode_at_stage(EXAMPLE, TOKENIZER, curriculum, 2)
    assert words_of(staged) == [f's1 a {SEP}', f's2 b {SEP}']
    assert TOKENIZER.decode(staged.target, skip_special = False).startswith('s3 c')
    # with c = r, one token per thought
    one_each = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(thoughts_per_step = 3, max_latent_stage = 4, tokens_per_stage = 3), 2)
    assert words_of(one_each) == ['s1', 'a', SEP, 's2', 'b', SEP]


@pytest.mark.parametrize('method', [m for m in METHODS if m not in ('coconut', 'coconut_no_curriculum')])
def test_methods_without_continuous_thoughts_have_no_thought_targets(method):
    staged = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(method = method, thoughts_per_step = 1, max_latent_stage = 3), 2)
    assert staged.thought_words == ()
    if staged.num_thoughts > 0:
        with pytest.raises(ValueError, match = 'thought targets need a method with continuous thoughts'):
            collate([staged], len(TOKENIZER))


def test_collated_thought_targets_mark_the_replaced_words():
    curriculum = Curriculum(thoughts_per_step = 1, max_latent_stage = 3)
    staged = [encode_at_stage(EXAMPLE, TOKENIZER, curriculum, stage) for stage in (2, 0, 3)]
    batch = collate(staged, len(TOKENIZER))
    assert batch.thought_targets.shape == (3, 3, len(TOKENIZER)) and batch.thought_targets.dtype == torch.bool
    for row, example in enumerate(staged):
        for slot in range(3):
            expected = set(example.thought_words[slot]) if slot < example.num_thoughts else set()
            assert set(batch.thought_targets[row, slot].nonzero().flatten().tolist()) == expected
    assert collate(staged).thought_targets is None


def test_thought_loss_is_trained_and_logged(tmp_path):
    config = TrainConfig(method = 'coconut', thought_loss = 1., **{**SMALL, 'epochs_per_stage': 2, 'final_epochs': 2})
    result = train(config, tmp_path)
    history = torch.load(tmp_path / 'checkpoint.pt', weights_only = True)['history']
    thought_losses = [record['thought_loss'] for record in history]
    assert thought_losses[0] == 0.      # stage 0 has no thoughts
    latent = [loss for loss, record in zip(thought_losses, history) if record['stage'] > 0]
    assert all(loss > 0 for loss in latent) and latent[-1] < latent[0], thought_losses
    model, _, loaded, _ = load_trained(result['checkpoint'])
    assert loaded.thought_loss == 1. and model.thought_loss_weight == 1.

    with pytest.raises(ValueError, match = 'thought_loss needs continuous thoughts'):
        TrainConfig(method = 'pause', thought_loss = 1.)
    with pytest.raises(ValueError, match = 'thought_loss must be finite and >= 0'):
        TrainConfig(thought_loss = -1.)
