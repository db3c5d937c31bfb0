"""A newcomer's path from a checkpoint to answers: `coconut_pytorch.load(path).answer(questions)`, the
`coconut_pytorch.sample` command, and the evaluation command's predictions file, on a tiny run trained here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / 'training'))    # the training tests' shared run settings
from helpers import TINY

import coconut_pytorch
from coconut_pytorch.data import Example, save_json_examples
from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.evaluate import answer_questions, evaluate_examples
from coconut_pytorch.sample import main
from coconut_pytorch.training import TrainConfig, load_trained, train

QUESTIONS = [example.question for example in get_task('running_sum', num_digits = 3).generate(8, seed = 123)]


@pytest.fixture(scope = 'module')
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('run')
    # the paper's objective: a model whose 3-token texts still differ from its answers (the checks below tell them apart)
    # at the feedforward width before the 2/3 rule (4 x dim): this barely trained model then writes a step separator
    # within 3 tokens for some questions, which the checks of answers against texts need
    result = train(TrainConfig(method = 'coconut', thought_loss = 0., ff_dim_inner = 4 * TINY['dim'], **TINY), out)
    assert result['num_thoughts'] > 0     # thoughts, so that a default of 0 would be seen
    return out / 'checkpoint.pt'


def with_inference(checkpoint: Path, path: Path, **inference) -> Path:
    """A copy of `checkpoint` whose saved inference settings are changed."""
    state = torch.load(checkpoint, weights_only = True)
    state['inference'] = {**state['inference'], **inference}
    torch.save(state, path)
    return path


# coconut_pytorch.load and LoadedRun.answer

def test_importing_the_package_does_not_import_training_nor_transformers():
    # one interpreter for both questions: `import coconut_pytorch` imports no training; training and evaluation no transformers
    code = ('import sys, coconut_pytorch; print(any(name.startswith("coconut_pytorch.training") for name in sys.modules)); '
            'import coconut_pytorch.training.loop, coconut_pytorch.evaluate, coconut_pytorch.sample; print("transformers" in sys.modules)')
    done = subprocess.run([sys.executable, '-c', code], capture_output = True, text = True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['False', 'False']


def test_load_answers_as_answer_questions_and_the_evaluation_do(checkpoint):
    run = coconut_pytorch.load(checkpoint)
    model, tokenizer, config, info = load_trained(checkpoint)
    assert run.model.device.type == ('cuda' if torch.cuda.is_available() else 'cpu') and not run.model.training
    assert run.num_thoughts == info['num_thoughts'] > 0 and run.config == config

    answers = run.answer(QUESTIONS)
    assert answers == answer_questions(model, tokenizer, QUESTIONS, num_thoughts = info['num_thoughts'], max_new_tokens = info['max_new_tokens'])
    texts = run.answer(QUESTIONS, with_text = True)
    assert texts == answer_questions(model, tokenizer, QUESTIONS, num_thoughts = info['num_thoughts'], max_new_tokens = info['max_new_tokens'], with_text = True)
    assert [answer for answer, _ in texts] == answers
    # the fixture tells thought counts apart: thinking changes what this model writes
    assert texts != answer_questions(model, tokenizer, QUESTIONS, num_thoughts = 0, max_new_tokens = info['max_new_tokens'], with_text = True)

    examples = [Example(question = question, steps = [], answer = '0') for question in QUESTIONS]
    evaluated = evaluate_examples(model, tokenizer, examples, info['num_thoughts'], info['max_new_tokens'])
    assert evaluated['predictions'] == answers and evaluated['texts'] == [text for _, text in texts]

    assert run.answer(QUESTIONS, num_thoughts = 0) == answer_questions(model, tokenizer, QUESTIONS, num_thoughts = 0, max_new_tokens = info['max_new_tokens'])


def test_answer_defaults_to_the_checkpoints_own_inference_settings(checkpoint, tmp_path):
    model, tokenizer, _, info = load_trained(checkpoint)

    no_thoughts = coconut_pytorch.load(with_inference(checkpoint, tmp_path / 'none.pt', num_thoughts = 0), device = 'cpu')
    assert no_thoughts.num_thoughts == 0
    assert no_thoughts.answer(QUESTIONS, with_text = True) == answer_questions(model, tokenizer, QUESTIONS, num_thoughts = 0, max_new_tokens = info['max_new_tokens'], with_text = True)

    short = coconut_pytorch.load(with_inference(checkpoint, tmp_path / 'short.pt', max_new_tokens = 1), device = 'cpu')
    texts = short.answer(QUESTIONS, with_text = True)
    assert texts == answer_questions(model, tokenizer, QUESTIONS, num_thoughts = info['num_thoughts'], max_new_tokens = 1, with_text = True)
    assert all(len(text.split()) <= 1 for _, text in texts)
    assert texts != coconut_pytorch.load(checkpoint, device = 'cpu').answer(QUESTIONS, with_text = True)


def test_answer_and_load_name_what_is_wrong(checkpoint, tmp_path):
    run = coconut_pytorch.load(checkpoint, device = 'cpu')
    for kwargs, error, name in ((dict(num_thoughts = -1), ValueError, 'num_thoughts'), (dict(max_new_tokens = 0), ValueError, 'max_new_tokens'),
                                (dict(batch_size = 0), ValueError, 'batch_size'), (dict(num_thoughts = 1.5), TypeError, 'num_thoughts')):
        with pytest.raises(error, match = name):
            run.answer(QUESTIONS, **kwargs)
    with pytest.raises(TypeError, match = 'not one str'):
        run.answer(QUESTIONS[0])
    with pytest.raises(ValueError, match = 'does not exist'):
        coconut_pytorch.load(tmp_path / 'missing.pt')
    with pytest.raises(TypeError, match = 'path'):
        coconut_pytorch.load(3)


# the sample command

def start(*args):
    return subprocess.Popen([sys.executable, '-m', 'coconut_pytorch.sample', *map(str, args)], stdout = subprocess.PIPE, stderr = subprocess.PIPE, text = True)


def test_the_sample_command_prints_what_load_answers(checkpoint, tmp_path, in_process):
    questions = tmp_path / 'questions.txt'
    questions.write_text(f'{QUESTIONS[0]}\n\n  {QUESTIONS[1]}  \n\n{QUESTIONS[2]}\n')
    damaged = tmp_path / 'damaged.pt'
    torch.save({k: v for k, v in torch.load(checkpoint, weights_only = True).items() if k != 'tokenizer'}, damaged)
    (tmp_path / 'empty.txt').write_text('\n  \n')

    # the command as installed, twice; its other cases through its main in this process
    runs = dict(
        plain = start('--checkpoint', checkpoint, '--device', 'cpu', QUESTIONS[0], QUESTIONS[1]),
        json = start('--checkpoint', checkpoint, '--file', questions, '--json', '--max-new-tokens', '3'),
    )
    finished = dict(
        steps = in_process(main, '--checkpoint', checkpoint, '--show-steps', '--num-thoughts', '0', QUESTIONS[0], QUESTIONS[1]),
        missing = in_process(main, '--checkpoint', tmp_path / 'missing.pt', QUESTIONS[0]),
        none = in_process(main, '--checkpoint', checkpoint, '--file', tmp_path / 'empty.txt'),
        nothing = in_process(main, '--checkpoint', checkpoint),
        empty = in_process(main, '--checkpoint', checkpoint, QUESTIONS[0], '  '),
        damaged = in_process(main, '--checkpoint', damaged, QUESTIONS[0]),
        unknown = in_process(main, '--checkpoint', checkpoint, 'what is this'),
    )
    finished.update({name: subprocess.CompletedProcess([], process.wait(), *process.communicate()) for name, process in runs.items()})

    run = coconut_pytorch.load(checkpoint, device = 'cpu')

    plain = finished['plain']
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [f'{question} -> {answer}' for question, answer in zip(QUESTIONS[:2], run.answer(QUESTIONS[:2]))]

    steps = finished['steps']
    assert steps.returncode == 0, steps.stderr
    expected = [line for question, (answer, text) in zip(QUESTIONS[:2], run.answer(QUESTIONS[:2], num_thoughts = 0, with_text = True))
                for line in (f'{question} -> {answer}', f'    {text}')]
    assert steps.stdout.splitlines() == expected

    done = finished['json']
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    expected = run.answer(QUESTIONS[:3], max_new_tokens = 3, with_text = True)
    assert records == [dict(question = question, answer = answer, text = text) for question, (answer, text) in zip(QUESTIONS[:3], expected)]
    assert any(answer != text for answer, text in expected)     # answers and texts are told apart

    for name, says in (('missing', 'missing.pt does not exist'), ('none', 'no questions'), ('nothing', 'no questions'),
                       ('empty', 'question 2 is empty'), ('damaged', 'missing: tokenizer'), ('unknown', 'what')):
        failed = finished[name]
        assert failed.returncode != 0 and failed.stdout == '', (name, failed.stdout)
        assert failed.stderr.startswith('error: ') and says in failed.stderr, (name, failed.stderr)
        assert len(failed.stderr.strip().splitlines()) == 1 and 'Traceback' not in failed.stderr, (name, failed.stderr)


# the evaluation command's predictions file

def test_evaluate_writes_one_prediction_per_example(checkpoint, tmp_path):
    run = coconut_pytorch.load(checkpoint, device = 'cpu')
    answers = run.answer(QUESTIONS)
    # gold answers the model gets right and ones it gets wrong, so that `correct` is seen both ways
    golds = [answer if index % 2 == 0 and answer else ('1' if answer != '1' else '2') for index, answer in enumerate(answers)]
    data = tmp_path / 'data.json'
    save_json_examples([Example(question = question, steps = [], answer = gold) for question, gold in zip(QUESTIONS, golds)], data)

    predictions = tmp_path / 'predictions.jsonl'
    done = subprocess.run([sys.executable, '-m', 'coconut_pytorch.evaluate', '--checkpoint', str(checkpoint), '--data', str(data),
                           '--device', 'cpu', '--predictions', str(predictions)], capture_output = True, text = True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= {'accuracy', 'n'} and not set(result) & {'predictions', 'texts', 'correct'}

    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == result['n'] == len(QUESTIONS)
    assert [record['question'] for record in records] == QUESTIONS and [record['gold'] for record in records] == golds
    assert [(record['prediction'], record['text']) for record in records] == run.answer(QUESTIONS, with_text = True)
    assert [record['correct'] for record in records] == [' '.join(record['prediction'].split()) == ' '.join(record['gold'].split()) for record in records]
    assert all(isinstance(record['correct'], bool) for record in records)
    assert {record['correct'] for record in records} == {True, False}
    assert sum(record['correct'] for record in records) / len(records) == result['accuracy']


def test_evaluate_refuses_a_predictions_path_it_cannot_write(checkpoint, tmp_path, in_process):
    from coconut_pytorch.evaluate import main as evaluate
    done = in_process(evaluate, '--checkpoint', checkpoint, '--data', tmp_path / 'data.json', '--predictions', tmp_path / 'no' / 'such' / 'dir.jsonl')
    assert done.returncode != 0 and '--predictions' in done.stderr and 'does not exist' in done.stderr and 'Traceback' not in done.stderr


def test_the_readme_quick_start_answers_as_written(checkpoint):
    # the README's Python lines for a trained run, with its path put in place of the example's
    import re
    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    block = next(block for block in re.findall(r'```py\n(.*?)```', readme, flags = re.DOTALL) if 'coconut_pytorch.load(' in block)
    assert 'runs/running_sum-coconut-TIME/checkpoint.pt' in block
    namespace = {}
    exec(block.replace('runs/running_sum-coconut-TIME/checkpoint.pt', str(checkpoint)), namespace)
    run = coconut_pytorch.load(checkpoint)
    assert namespace['answers'] == run.answer(['6 6 0 4', '8 7 6 4']) and len(namespace['answers']) == 2
