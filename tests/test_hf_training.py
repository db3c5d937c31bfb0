"""Runs over a pretrained (here: tiny, random, local) Hugging Face model: its tokenizer, the curriculum, checkpoints
that rebuild without the model's folder, resume, evaluation and text in / text out. No network."""

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('transformers')

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.hf_tokenizer import HFTokenizer
from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.data.tokenizer import tokenizer_from_dict
from coconut_pytorch.evaluate import evaluate_examples
from coconut_pytorch.training import TrainConfig, load_trained, train
from tiny_hf import BOS, bpe_tokenizer, save_tiny_model

TASK = dict(task = 'running_sum', task_kwargs = dict(num_digits = 3))
TEXTS = [text for example in get_task('running_sum', num_digits = 3).generate(300, seed = 0)
         for text in (example.question, *example.steps, example.answer)]
README = Path(__file__).resolve().parents[1] / 'README.md'
EXAMPLE = Example(question = '3 1 4', steps = ['4', '8'], answer = '8')


@pytest.fixture(scope = 'module')
def gpt2_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp('gpt2'), TEXTS, 'gpt2')


# the tokenizer

def test_an_example_is_the_question_then_each_step_and_a_newline_then_the_answer_and_its_end():
    hf = bpe_tokenizer(TEXTS)
    tokenizer = HFTokenizer.from_transformers(hf)
    question, steps, answer = tokenizer.encode_example(EXAMPLE)

    # the question's line ends with the separator, as each step's does
    assert question == hf('3 1 4')['input_ids'] + [tokenizer.sep_id] and tokenizer.question_prefix == ()
    assert steps == [hf('4', add_special_tokens = False)['input_ids'], hf('8', add_special_tokens = False)['input_ids']]
    assert answer == hf('8', add_special_tokens = False)['input_ids'] + [hf.eos_token_id]
    assert tokenizer.sep_id == hf('\n', add_special_tokens = False)['input_ids'][0] and tokenizer.eos_id == hf.eos_token_id
    assert tokenizer.decode(question) == '3 1 4' and tokenizer.decode(answer) == '8'
    assert tokenizer.normalize(' 3  1\n4 ') == '3 1 4'


def test_a_tokenizer_that_adds_a_begin_token_puts_it_before_questions_only():
    hf = bpe_tokenizer(TEXTS, with_bos = True)
    tokenizer = HFTokenizer.from_transformers(hf)
    bos = hf.convert_tokens_to_ids(BOS)
    question, steps, answer = tokenizer.encode_example(EXAMPLE)
    assert tokenizer.question_prefix == (bos,) and question[0] == bos and question == hf('3 1 4')['input_ids'] + [tokenizer.sep_id]
    assert bos not in [token for step in steps for token in step] and bos not in answer


def test_the_tokenizer_round_trips_through_a_checkpoint_and_a_pickle():
    tokenizer = HFTokenizer.from_transformers(bpe_tokenizer(TEXTS, with_bos = True), num_tokens = 400)
    state = tokenizer.to_dict()
    restored = tokenizer_from_dict(torch.load(_saved(state), weights_only = True))
    assert restored == tokenizer == pickle.loads(pickle.dumps(tokenizer))
    assert len(restored) == 400 and restored.encode_example(EXAMPLE) == tokenizer.encode_example(EXAMPLE)
    # ids past the tokenizer's own (a model's padded rows, which an untrained model can emit) have no text
    assert restored.decode([*restored.encode('3 1'), 399, 400]) == '3 1'


def _saved(state):
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_line_breaks_in_steps_or_answers_and_answers_the_tokenizer_cannot_write_are_refused():
    from coconut_pytorch.evaluate import encode_questions
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = HFTokenizer.from_transformers(bpe_tokenizer(TEXTS))
    with pytest.raises(ValueError, match = 'a step .* line break'):
        tokenizer.encode_example(Example(question = '1 2', steps = ['3\n4'], answer = '3'))
    with pytest.raises(ValueError, match = 'an answer .* line break'):
        tokenizer.encode_example(Example(question = '1 2', steps = [], answer = '3\n'))

    # a word-level tokenizer that maps what it does not know to <unk>: the gold answer could never be matched
    vocab = {'<unk>': 0, '<|endoftext|>': 1, '\n': 2, **{str(d): 3 + d for d in range(10)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token = '<unk>'))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(' ', 'removed'), pre_tokenizers.Split('\n', 'isolated')])
    words = HFTokenizer(backend, eos_id = 1)
    with pytest.raises(ValueError, match = "example 1: the tokenizer cannot write its answer 'x7'"):
        encode_questions([Example('1 2', (), '3'), Example('1 2', (), 'x7')], words)


def test_a_tokenizer_without_an_end_token_or_fewer_model_ids_is_refused():
    hf = bpe_tokenizer(TEXTS)
    with pytest.raises(ValueError, match = 'num_tokens'):
        HFTokenizer.from_transformers(hf, num_tokens = 10)
    hf.eos_token = None
    with pytest.raises(ValueError, match = 'end-of-sequence'):
        HFTokenizer.from_transformers(hf)
    with pytest.raises(TypeError, match = 'fast'):
        HFTokenizer.from_transformers(object())


# training over the model

def small(folder, **overrides):
    return TrainConfig(**{**TASK, 'hf_model': str(folder), 'train_size': 256, 'eval_size': 32, 'batch_size': 32,
                          'epochs_per_stage': 1, 'final_epochs': 0, 'warmup_steps': 2, 'lr': 1e-3, **overrides})


def test_settings_that_need_the_native_model_or_a_model_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match = 'cuda_graphs is for the native'):
        TrainConfig(hf_model = 'x', device = 'cuda', cuda_graphs = True)
    with pytest.raises(ValueError, match = 'compile is for the native'):
        TrainConfig(hf_model = 'x', compile = True)
    with pytest.raises(TypeError, match = 'hf_model must be a path'):
        TrainConfig(hf_model = 3)
    with pytest.raises(ValueError, match = "hf_model: .*missing'.*downloaded only when asked"):
        train(small(tmp_path / 'missing'), tmp_path / 'run')


def test_a_run_over_a_pretrained_model_resumes_exactly_and_its_checkpoint_needs_no_model_folder(gpt2_folder, tmp_path):
    folder = shutil.copytree(gpt2_folder, tmp_path / 'model')
    config = small(folder)

    # the run starts from the pretrained weights
    from coconut_pytorch.training.model import build_model
    from transformers import AutoModelForCausalLM
    pretrained = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    initial = build_model(config, 0, config.curriculum(2)).state_dict()
    assert all(torch.equal(initial[f'model.lm.{name}'], weight) for name, weight in pretrained.items())

    straight = train(config, tmp_path / 'straight')
    first = train(TrainConfig(**{**config.__dict__, 'time_budget': 0.}), tmp_path / 'resumed')
    assert not first['finished'] and first['epoch'] == 0
    # resumed from the checkpoint alone: the model's folder has moved away
    moved = folder.rename(tmp_path / 'moved')
    resumed = train(config, tmp_path / 'resumed', resume = True)

    straight_state = torch.load(tmp_path / 'straight' / 'checkpoint.pt', weights_only = True)
    resumed_state = torch.load(tmp_path / 'resumed' / 'checkpoint.pt', weights_only = True)
    assert straight_state['backbone']['model_type'] == 'gpt2' and straight_state['tokenizer']['type'] == 'HFTokenizer'
    for name, tensor in straight_state['model'].items():
        torch.testing.assert_close(tensor, resumed_state['model'][name], rtol = 1e-5, atol = 1e-6)
    assert resumed['accuracy'] == straight['accuracy']
    # and training moved them
    assert any(not torch.equal(straight_state['model'][f'model.lm.{name}'], weight) for name, weight in pretrained.items())

    shutil.rmtree(moved)
    model, tokenizer, loaded_config, info = load_trained(tmp_path / 'straight' / 'checkpoint.pt')
    assert isinstance(tokenizer, HFTokenizer) and loaded_config.hf_model == str(folder)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, straight_state['model'][name], rtol = 0, atol = 0)


def test_a_run_over_a_pretrained_model_is_evaluated_alike_by_training_the_command_and_text_in_text_out(tmp_path):
    # Llama's kind: a tokenizer that puts <s> first, and a vocabulary padded past the tokenizer's ids
    folder = save_tiny_model(tmp_path / 'llama', TEXTS, 'llama')
    held_out = get_task('running_sum', num_digits = 3).generate(40, seed = 99)
    data = tmp_path / 'held_out.json'
    data.write_text(json.dumps([dict(question = e.question, steps = e.steps, answer = e.answer) for e in held_out]))
    result = train(small(folder, eval_file = str(data), train_size = 256, epochs_per_stage = 2, lr = 3e-3), tmp_path / 'run')
    assert result['finished'] and result['num_thoughts'] == 2 and result['n'] == 40

    run = subprocess.run([sys.executable, '-m', 'coconut_pytorch.evaluate', '--checkpoint', str(tmp_path / 'run' / 'checkpoint.pt'),
                          '--data', str(data), '--device', 'cpu'], capture_output = True, text = True, check = True)
    evaluated = json.loads(run.stdout.strip().splitlines()[-1])

    # text in, text out, as the README writes it
    block = next(block for block in re.findall(r'```py\n(.*?)```', README.read_text(), flags = re.DOTALL) if 'answer_questions' in block)
    namespace = dict(questions = [e.question for e in held_out])
    exec(block.replace("'runs/gpt2/checkpoint.pt'", repr(str(tmp_path / 'run' / 'checkpoint.pt'))), namespace)
    answers = namespace['answers']
    model, tokenizer, _, info = load_trained(tmp_path / 'run' / 'checkpoint.pt')
    # the id space is the model's padded vocabulary, past the tokenizer's own ids
    assert len(tokenizer) == model.num_tokens == tokenizer.backend.get_vocab_size() + 5
    assert evaluate_examples(model, tokenizer, held_out, info['num_thoughts'], info['max_new_tokens'])['predictions'] == answers
    assert evaluated['accuracy'] == result['accuracy'] == sum(a == e.answer for a, e in zip(answers, held_out)) / len(held_out)


def test_coconut_over_a_transformers_model_learns_to_sort_through_generate():
    import transformers
    from coconut_pytorch import Coconut
    from coconut_pytorch.hf import HFBackbone
    from test_learning import NUM_DIGITS, sorting_exact_match

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size = NUM_DIGITS + 1, hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2,
                                      num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64)
    model = Coconut(num_reasoning_steps = 1, transformer = HFBackbone(transformers.LlamaForCausalLM(config)))
    exact_match = sorting_exact_match(model, num_steps = 400)
    assert exact_match >= 0.95, f'exact match {exact_match:.3f} after training'
