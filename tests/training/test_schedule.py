"""The curriculum: the stage of each epoch, and what each method's stage removes and puts in its place (whole steps,
or a number of tokens)."""

import pytest
from helpers import EOS, EXAMPLE, SEP, TOKENIZER

from coconut_pytorch.data import Example
from coconut_pytorch.training import TrainConfig
from coconut_pytorch.training.batches import encode_at_stage
from coconut_pytorch.training.schedule import Curriculum, thought_mix_at_epoch


def layout(method, stage, **kwargs):
    curriculum = Curriculum(method = method, **{'thoughts_per_step': 2, 'max_latent_stage': 3, **kwargs})
    staged = encode_at_stage(EXAMPLE, TOKENIZER, curriculum, stage)
    return TOKENIZER.decode(staged.target, skip_special = False), staged.num_thoughts


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


def test_the_mixing_weight_anneals_linearly_to_0_after_each_stage_change():
    curriculum = Curriculum(method = 'coconut', max_latent_stage = 2, epochs_per_stage = 3)
    # stages start at epochs 0, 3 and 6 (the last goes on past the schedule); over 2 epochs: w, w / 2, then 0
    weights = [thought_mix_at_epoch(curriculum, epoch, 0.8, 2) for epoch in range(11)]
    assert weights == pytest.approx([0.8, 0.4, 0., 0.8, 0.4, 0., 0.8, 0.4, 0., 0., 0.], abs = 1e-12)
    # over more epochs than a stage lasts: cut off at the next stage change
    weights = [thought_mix_at_epoch(curriculum, epoch, 1., 4) for epoch in range(8)]
    assert weights == pytest.approx([1., 0.75, 0.5, 1., 0.75, 0.5, 1., 0.75], abs = 1e-12)
    # one stage from the first epoch (no curriculum): one anneal
    single = Curriculum(method = 'coconut_no_curriculum', max_latent_stage = 2, epochs_per_stage = 3)
    assert [thought_mix_at_epoch(single, epoch, 0.5, 2) for epoch in range(4)] == pytest.approx([0.5, 0.25, 0., 0.], abs = 1e-12)
    assert [thought_mix_at_epoch(curriculum, epoch, 0., 2) for epoch in range(4)] == [0.] * 4
