"""Examples laid out at a stage (with stages mixed and removal smoothed), collated into batches that give what each
example gives alone, and the thought targets: the language each continuous thought replaced."""

import math
import random

import pytest
import torch
from helpers import EOS, EXAMPLE, SEP, TOKENIZER

from coconut_pytorch import Coconut
from coconut_pytorch.data import Example
from coconut_pytorch.training import TrainConfig
from coconut_pytorch.training.batches import collate, encode_at_stage, staged_examples
from coconut_pytorch.training.schedule import ALIGNABLE_METHODS, METHODS, Curriculum


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


@pytest.mark.parametrize('method', [m for m in METHODS if m not in ALIGNABLE_METHODS])
def test_methods_without_thought_slots_to_align_have_no_thought_targets(method):
    staged = encode_at_stage(EXAMPLE, TOKENIZER, Curriculum(method = method, thoughts_per_step = 1, max_latent_stage = 3), 2)
    assert staged.thought_words == ()
    if staged.num_thoughts > 0:
        with pytest.raises(ValueError, match = 'thought targets need a method with'):
            collate([staged], len(TOKENIZER))


@pytest.mark.parametrize('method', ['pause_as_thought', 'pause'])
def test_pause_slots_get_the_words_the_thoughts_would(method):
    # the supervised pause control: its slots replace the same language as Coconut's thoughts at the same stage
    curriculum = lambda name: Curriculum(method = name, thoughts_per_step = 1, max_latent_stage = 3)
    pause = encode_at_stage(EXAMPLE, TOKENIZER, curriculum(method), 2)
    thoughts = encode_at_stage(EXAMPLE, TOKENIZER, curriculum('coconut' if method == 'pause_as_thought' else 'coconut_no_curriculum'), 2)
    assert pause.thought_words == thoughts.thought_words and len(pause.thought_words) == pause.num_thoughts > 0


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
