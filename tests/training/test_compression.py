"""Compression stages (`Curriculum.compress_thoughts`, `--compress-thoughts`): after the last removal stage of
`tokens_per_stage`, stages at which fewer thoughts (c' < c) take the place of each r tokens. Their schedule, their
layout of real multiplication examples (each thought's bag and ordered targets are the tokens it now replaces), that
the option off changes nothing, its errors, and a run through them that evaluates with the compressed count and
resumes across their boundary."""

import random
import shlex
from dataclasses import replace

import pytest
import torch
from helpers import ROOT

from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.data.tokenizer import WordTokenizer, target_lengths
from coconut_pytorch.training import TrainConfig, config_from_arguments, train
from coconut_pytorch.training.batches import EpochLayout, collate, encode_at_stage, staged_examples
from coconut_pytorch.training.checkpoints import inference_info
from coconut_pytorch.training.command import main, parse_args
from coconut_pytorch.training.schedule import Curriculum

TASK = get_task('multiplication', num_digits_a = 3, num_digits_b = 3)
TOKENIZER = WordTokenizer(TASK.vocabulary())
EXAMPLES = TASK.generate(24, seed = 0)


def curriculum(**kwargs) -> Curriculum:
    return Curriculum(**{**dict(method = 'coconut', thoughts_per_step = 8, tokens_per_stage = 8, max_latent_stage = 4,
                                epochs_per_stage = 2, compress_thoughts = (4, 2)), **kwargs})


def language_of(example) -> list[int]:
    """The example's language steps as the curriculum counts them: each step's ids, then <sep>."""
    return [token for step in TOKENIZER.encode_example(example)[1] for token in step + [TOKENIZER.sep_id]]


def test_each_compression_value_adds_a_stage_after_the_last_removal_stage():
    schedule = curriculum()
    assert (schedule.num_stages, schedule.final_stage, schedule.last_removal_stage, schedule.total_epochs) == (7, 6, 4, 14)
    assert [schedule.stage_at_epoch(epoch) for epoch in range(16)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 6]
    assert [schedule.thoughts_per_group(stage) for stage in range(7)] == [8, 8, 8, 8, 8, 4, 2]
    # what a model trained up to each stage thinks at inference: the last is the most compressed
    assert [schedule.most_thoughts(stage) for stage in range(7)] == [0, 8, 16, 24, 32, 16, 8]
    assert [inference_info(schedule, stage, 10)['num_thoughts'] for stage in range(7)] == [0, 8, 16, 24, 32, 16, 8]
    assert inference_info(schedule, 6, 10)['final_stage'] == 6
    one = curriculum(compress_thoughts = (3,), epochs_per_stage = 1)
    assert (one.num_stages, one.final_stage, one.total_epochs, one.most_thoughts(one.final_stage)) == (6, 5, 6, 12)
    # the run's epochs: the schedule's, then the final epochs at the last compression stage
    config = TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = '4,2', epochs_per_stage = 1, final_epochs = 3)
    assert config.curriculum(0, longest_language = 26) == curriculum(epochs_per_stage = 1, pad_latent_to_max = True)



def test_compression_stages_may_be_longer_than_the_removal_stages():
    schedule = curriculum(compress_epochs = 5)
    # 5 removal stages of 2 epochs (0-9), then 5 epochs at 4 a group (10-14) and 5 at 2 (15-19), which continues
    assert (schedule.num_stages, schedule.final_stage, schedule.total_epochs) == (7, 6, 20)
    assert [schedule.stage_at_epoch(epoch) for epoch in range(24)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] + [5] * 5 + [6] * 9
    shorter = curriculum(compress_epochs = 1, epochs_per_stage = 3)
    assert shorter.total_epochs == 17 and [shorter.stage_at_epoch(epoch) for epoch in range(14, 19)] == [4, 5, 6, 6, 6]
    # None is epochs_per_stage: the schedule without the option
    assert [curriculum(compress_epochs = 2).stage_at_epoch(e) for e in range(20)] == [curriculum().stage_at_epoch(e) for e in range(20)]
    config = TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = '4,2', compress_epochs = 5)
    assert config.curriculum(0, longest_language = 26).compress_epochs == 5
    assert config_from_arguments(parse_args(['--tokens-per-stage', '8', '--thoughts-per-step', '8', '--compress-thoughts', '4,2',
                                             '--compress-epochs', '7'])).compress_epochs == 7
    for value in (0, -1, 2., True):
        with pytest.raises(ValueError, match = 'compress_epochs must be a positive int'):
            curriculum(compress_epochs = value)
        with pytest.raises((ValueError, TypeError), match = 'compress_epochs'):
            TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = '4,2', compress_epochs = value)
    with pytest.raises(ValueError, match = 'compress_epochs sets the length of the compression stages'):
        curriculum(compress_thoughts = (), compress_epochs = 3)
    with pytest.raises(ValueError, match = 'compress_epochs sets the length of the compression stages: give --compress-thoughts'):
        TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_epochs = 3)

@pytest.mark.parametrize('pad', [False, True])
def test_at_a_compression_stage_each_thought_stands_for_the_tokens_it_replaces(pad):
    schedule = curriculum(pad_latent_to_max = pad)
    languages = [language_of(example) for example in EXAMPLES]
    assert {len(language) for language in languages} == {25}    # 3x3 products: 25 tokens, so the last group is 1 token
    for stage, c in ((5, 4), (6, 2)):
        staged = [encode_at_stage(example, TOKENIZER, schedule, stage) for example in EXAMPLES]
        width = 8 // c
        batch = collate(staged, num_tokens = len(TOKENIZER), token_width = width)
        for row, (example, language, laid) in enumerate(zip(EXAMPLES, languages, staged)):
            groups = [language[start:start + 8] for start in range(0, len(language), 8)]
            own = min(4, len(groups)) * c
            assert laid.num_thoughts == (4 * c if pad else own) and laid.halt_after == own
            # no language left: the target is the answer alone
            assert laid.target.tolist() == TOKENIZER.encode_example(example)[2]
            # c thoughts a group of 8 tokens, in order: 8 / c tokens each, and the short last group's token goes to
            # its last thought
            expected = [tuple(group[k * width:(k + 1) * width]) for group in groups[:-1] for k in range(c)]
            last = groups[-1]
            expected += [tuple(last[len(last) * k // c:len(last) * (k + 1) // c]) for k in range(c)]
            expected += [()] * (laid.num_thoughts - len(expected))
            assert laid.thought_words == tuple(expected)
            assert sum(laid.thought_words, ()) == tuple(language)
            # the batch's targets: the same tokens, as a bag and in order
            for slot, words in enumerate(expected):
                assert set(batch.thought_targets[row, slot].nonzero().flatten().tolist()) == set(words)
                assert batch.thought_tokens[row, slot].tolist() == list(words) + [-1] * (width - len(words))


def test_a_group_that_does_not_divide_gives_the_later_thoughts_one_more_token():
    example = EXAMPLES[0]
    language = language_of(example)
    staged = encode_at_stage(example, TOKENIZER, curriculum(compress_thoughts = (3,)), 5)
    sizes = [len(words) for words in staged.thought_words]
    # 8 tokens over 3 thoughts: 2, 3, 3; the last group's 1 token goes to its last thought
    assert len(language) == 25 and sizes == [2, 3, 3] * 3 + [0, 0, 1]
    assert sum(staged.thought_words, ()) == tuple(language)
    # the ordered targets take ceil(8 / 3) = 3 heads by default
    assert TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = (3,), thought_token_loss = 1.).thought_tokens_per_thought() == 3
    assert TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = (4, 2), thought_token_loss = 1.).thought_tokens_per_thought() == 4


def test_smoothing_removes_nothing_more_at_a_compression_stage_and_mixing_draws_every_stage():
    # removal smoothing's extra tokens are for the removal stages: a compression stage has no language left
    smoothed = curriculum(removal_smoothing = 1.)
    for stage in (5, 6):
        for example in EXAMPLES[:4]:
            assert (plain_data(encode_at_stage(example, TOKENIZER, smoothed, stage, extra_removed = 3))
                    == plain_data(encode_at_stage(example, TOKENIZER, smoothed, stage)))
    # with uniform_prob 1 every example is drawn at a stage from 0 to the final one, compression stages included: an
    # example's layout then is exactly its drawn stage's (the thoughts say which)
    mixed = curriculum(uniform_prob = 1.)
    staged = staged_examples(EXAMPLES * 40, TOKENIZER, mixed, 0, rng = random.Random(0))
    layouts = {stage: plain_data(encode_at_stage(EXAMPLES[0], TOKENIZER, mixed, stage)) for stage in range(mixed.final_stage + 1)}
    drawn = [next(stage for stage, layout in layouts.items() if layout == plain_data(laid)) for laid in staged[::len(EXAMPLES)]]
    assert set(drawn) <= set(range(7)) and {5, 6} & set(drawn)


def test_compression_needs_a_removal_stage_with_thoughts():
    with pytest.raises(ValueError, match = 'compress_thoughts compresses the thoughts of the removal stages: max_latent_stage 0'):
        TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = '4,2', max_latent_stage = 0)
    for text in ('--4', '4,²', '4;2'):
        with pytest.raises(ValueError, match = 'compress_thoughts must be comma-separated integers'):
            TrainConfig(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = text)


def plain_data(staged) -> tuple:
    return tuple(value.tolist() if torch.is_tensor(value) else value for value in staged)


def test_compression_changes_only_the_stages_it_adds():
    # the stages up to the last removal stage lay every example out as without the option, smoothed or not
    for extra in (dict(), dict(pad_latent_to_max = True), dict(removal_smoothing = 1.)):
        plain, compressed = curriculum(compress_thoughts = (), **extra), curriculum(**extra)
        assert (plain.num_stages, plain.final_stage, plain.last_removal_stage) == (5, 4, 4)
        for stage in range(5):
            assert plain.most_thoughts(stage) == compressed.most_thoughts(stage) == plain.layout(stage, 10 ** 6)[1]
            for example in EXAMPLES[:6]:
                for extra_removed in (0, 3):
                    assert (plain_data(encode_at_stage(example, TOKENIZER, plain, stage, extra_removed))
                            == plain_data(encode_at_stage(example, TOKENIZER, compressed, stage, extra_removed)))
    # off, the option is the configuration, curriculum, batches and heads of before
    config = TrainConfig(tokens_per_stage = 8, thoughts_per_step = 4, thought_token_loss = 1.)
    assert config.compress_thoughts == [] and config == TrainConfig(tokens_per_stage = 8, thoughts_per_step = 4, thought_token_loss = 1., compress_thoughts = '')
    assert config.thought_tokens_per_thought() == 2
    schedule = config.curriculum(0, longest_language = 26)
    assert schedule == Curriculum(thoughts_per_step = 4, max_latent_stage = 4, epochs_per_stage = 2, pad_latent_to_max = True, tokens_per_stage = 8)
    # the formula of the token stages before the option, stage for stage (one past the last too)
    for n in (1, 7, 8, 25, 26, 40):
        for stage in range(7):
            for extra_removed in (0, 3):
                removed = n if stage == 4 else min(stage * 8 + extra_removed, n)
                assert schedule.token_layout(stage, n, extra_removed) == (removed, stage * 4)
                assert replace(schedule, pad_latent_to_max = False).token_layout(stage, n, extra_removed) == (removed, min(stage, -(-n // 8)) * 4)


@pytest.mark.parametrize('kwargs, message', [
    (dict(compress_thoughts = (2, 4)), 'compress_thoughts must be strictly decreasing'),
    (dict(compress_thoughts = (4, 4)), 'compress_thoughts must be strictly decreasing'),
    (dict(compress_thoughts = (8,)), r'compress_thoughts: each value must be from 1 to thoughts_per_step - 1 = 7'),
    (dict(compress_thoughts = (9, 2)), r'compress_thoughts: each value must be from 1'),
    (dict(compress_thoughts = (4, 0)), r'compress_thoughts: each value must be from 1'),
    (dict(compress_thoughts = (4, -1)), r'compress_thoughts: each value must be from 1'),
    (dict(compress_thoughts = (2.,)), 'compress_thoughts must be integers'),
    (dict(compress_thoughts = (True,)), 'compress_thoughts must be integers'),
    (dict(tokens_per_stage = None), 'compress_thoughts needs tokens_per_stage'),
    (dict(method = 'cot'), "compress_thoughts adds stages to a curriculum with thoughts: method must be 'coconut' or 'pause_as_thought', got 'cot'"),
    (dict(method = 'coconut_no_curriculum'), "got 'coconut_no_curriculum'"),
    (dict(method = 'pause'), "got 'pause'"),
    (dict(method = 'no_thoughts'), "got 'no_thoughts'"),
])
def test_bad_compression_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match = message):
        curriculum(**kwargs)
    # and by the run's settings, before any data or model
    settings = {**dict(tokens_per_stage = 8, thoughts_per_step = 8, compress_thoughts = '4,2'), **kwargs}
    with pytest.raises(ValueError, match = message):
        TrainConfig(**settings)


def test_the_option_reads_from_the_command_line_and_recipes(tmp_path, in_process):
    base = ['--tokens-per-stage', '8', '--thoughts-per-step', '8']
    assert config_from_arguments(parse_args(base + ['--compress-thoughts', '4,2'])).compress_thoughts == [4, 2]
    assert config_from_arguments(parse_args(base + ['--compress-thoughts', ' 3 '])).compress_thoughts == [3]
    assert config_from_arguments(parse_args(base)).compress_thoughts == []
    recipe = tmp_path / 'compressed.yaml'
    for text in ('[4, 2]', "'4,2'"):
        recipe.write_text(f'tokens_per_stage: 8\nthoughts_per_step: 8\ncompress-thoughts: {text}\n')
        assert config_from_arguments(parse_args(['--config', str(recipe)])).compress_thoughts == [4, 2]
    recipe.write_text('compress_thoughts: [4, two]\n')
    with pytest.raises(SystemExit, match = 'compress_thoughts must be a list of integers'):
        parse_args(['--config', str(recipe)])
    # a bad value is one line, before the run's folder exists (a tiny run, should the check ever let it through)
    base += ['--train-size', '16', '--eval-size', '4', '--dim', '8', '--depth', '1', '--heads', '1', '--dim-head', '8', '--time-budget', '0']
    for value, message in (('4,x', "compress_thoughts must be comma-separated integers such as 4,2, got '4,x'"),
                           ('2,4', 'compress_thoughts must be strictly decreasing')):
        result = in_process(main, *base, '--compress-thoughts', value, '--device', 'cpu', '--out', tmp_path / 'run')
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], result.stderr
        assert not (tmp_path / 'run').exists()


# 2x2 products: 9 language tokens, so 4 tokens a stage make 3 removal stages (the last group 1 token), then 2 and 1
# thoughts a group
RUN = dict(task = 'multiplication', task_kwargs = dict(num_digits_a = 2, num_digits_b = 2), device = 'cpu', train_size = 32, eval_size = 8,
           batch_size = 32, epochs_per_stage = 1, final_epochs = 1, dim = 16, depth = 1, heads = 2, dim_head = 8, num_residual_streams = 1,
           warmup_steps = 0, tokens_per_stage = 4, thoughts_per_step = 4, compress_thoughts = (2, 1), thought_token_loss = 1.)


def test_a_run_trains_through_the_compression_stages_and_evaluates_with_the_last(tmp_path, monkeypatch):
    import coconut_pytorch.training.loop as loop
    evaluated, trained = [], []
    evaluate, batches = loop.evaluate_examples, EpochLayout.batches
    monkeypatch.setattr(loop, 'evaluate_examples', lambda *args, **kwargs: evaluated.append(kwargs['num_thoughts']) or evaluate(*args, **kwargs))

    def recorded(self, *args):
        laid = batches(self, *args)
        trained.append(max(batch.num_thoughts.max().item() for batch in laid))
        return laid

    monkeypatch.setattr(EpochLayout, 'batches', recorded)
    result = train(TrainConfig(**RUN), tmp_path)

    assert result['finished'] and (result['stage'], result['final_stage'], result['num_thoughts']) == (5, 5, 3)
    # 3 removal stages of 4 thoughts, then 2 and 1 a group of 4 tokens; the final epoch at the last
    assert trained == [0, 4, 8, 12, 6, 3, 3]
    assert evaluated == [3]
    state = torch.load(tmp_path / 'checkpoint.pt', weights_only = True)
    assert [h['stage'] for h in state['history']] == [0, 1, 2, 3, 4, 5, 5]
    assert all(h['thought_token_loss'] > 0 for h in state['history'][1:])
    assert state['inference']['num_thoughts'] == 3 and state['curriculum']['compress_thoughts'] == (2, 1)
    assert state['config']['compress_thoughts'] == [2, 1] and TrainConfig.from_dict(state['config']) == TrainConfig(**RUN)
    # one head a token a thought replaces at the most compressed stage: 4 / 1
    assert tuple(state['model']['to_thought_tokens.weight'].shape) == (16 * 4, 16)
    assert (tmp_path / 'stage3.pt').is_file() and (tmp_path / 'stage4.pt').is_file()



def test_a_run_spends_compress_epochs_at_each_compression_stage(tmp_path):
    result = train(TrainConfig(**{**RUN, 'compress_epochs': 2}), tmp_path)
    assert result['finished'] and (result['stage'], result['num_thoughts']) == (5, 3)
    state = torch.load(tmp_path / 'checkpoint.pt', weights_only = True)
    # one epoch at each removal stage (0-3), two at each compression stage, then the final epoch
    assert [h['stage'] for h in state['history']] == [0, 1, 2, 3, 4, 4, 5, 5, 5]

def test_a_run_resumed_across_a_compression_boundary_continues_exactly(tmp_path):
    # 8 tokens a stage: 2 removal stages of 4 thoughts (epochs 0-5, stage 0 included), then 2 and 1 a group (6-9), and
    # a final epoch; two epochs a stage, so that a resume inside a stage needs the optimizer's state
    settings = {**RUN, 'tokens_per_stage': 8, 'epochs_per_stage': 2}
    config = TrainConfig(**settings)
    straight = train(config, tmp_path / 'straight')
    # stopped at the end of the last removal stage (epoch 5), resumed for one epoch into the first compression stage,
    # then to the end
    stopped = TrainConfig(**{**settings, 'time_budget': 0.})
    first = train(stopped, tmp_path / 'resumed')
    while first['epoch'] < 5:
        first = train(stopped, tmp_path / 'resumed', resume = True)
    assert not first['finished'] and (first['epoch'], first['stage'], first['num_thoughts']) == (5, 2, 8)
    inside = train(stopped, tmp_path / 'resumed', resume = True)
    assert (inside['epoch'], inside['stage'], inside['num_thoughts']) == (6, 3, 4)
    resumed = train(config, tmp_path / 'resumed', resume = True)

    straight_state = torch.load(tmp_path / 'straight' / 'checkpoint.pt', weights_only = True)
    resumed_state = torch.load(tmp_path / 'resumed' / 'checkpoint.pt', weights_only = True)
    assert [h['stage'] for h in resumed_state['history']] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    for name in ('loss', 'thought_loss', 'thought_token_loss'):
        assert [h[name] for h in straight_state['history']] == pytest.approx([h[name] for h in resumed_state['history']], rel = 1e-5), name
    for name, tensor in straight_state['model'].items():
        torch.testing.assert_close(tensor, resumed_state['model'][name], rtol = 1e-5, atol = 1e-6)
    assert resumed_state['inference'] == straight_state['inference'] and resumed['num_thoughts'] == straight['num_thoughts'] == 2
    assert resumed['accuracy'] == straight['accuracy']
    # the compression stages are part of what the run learns: changing them refuses the resume
    with pytest.raises(ValueError, match = r'compress_thoughts \(\[2, 1\] in the checkpoint, \[3, 1\] now\)'):
        train(TrainConfig(**{**settings, 'compress_thoughts': (3, 1)}), tmp_path / 'resumed', resume = True)


def test_the_compressed_recipe_is_the_4x4_recipe_with_compression_stages():
    recipe = ROOT / 'recipes' / 'multiplication_4x4_compressed.yaml'
    compressed = config_from_arguments(parse_args(['--config', str(recipe)]))
    plain = config_from_arguments(parse_args(['--config', str(ROOT / 'recipes' / 'multiplication_4x4.yaml')]))
    assert (compressed.compress_thoughts, compressed.compress_epochs, compressed.thought_token_loss) == ([4, 2], 15, 1.)
    assert {**vars(compressed), 'compress_thoughts': [], 'compress_epochs': None, 'thought_token_loss': 0., 'final_epochs': 0} == {**vars(plain), 'final_epochs': 0}
    # its comment's command is the same recipe
    head = [line for line in recipe.read_text().splitlines() if line.startswith('#')]
    same_as = next(line for line in head if 'the same as:' in line).split('train_toy.py', 1)[1]
    assert config_from_arguments(parse_args(shlex.split(same_as))) == compressed
    assert any('--config recipes/multiplication_4x4_compressed.yaml' in line for line in head)
    # 4x4 products: 6 removal stages of 8 thoughts (48), then 4 and 2 a group of 8 tokens, ending at 12 thoughts
    task = get_task('multiplication', num_digits_a = 4, num_digits_b = 4)
    longest = max(steps for steps, _ in target_lengths(task.generate(200, seed = 0), WordTokenizer(task.vocabulary())))
    schedule = compressed.curriculum(0, longest_language = longest)
    assert [schedule.most_thoughts(stage) for stage in range(schedule.num_stages)] == [0, 8, 16, 24, 32, 40, 48, 24, 12]
    assert compressed.thought_tokens_per_thought() == 4
