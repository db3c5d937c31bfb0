"""The training command as a newcomer meets it: recipes as YAML files (--config) whose values the options override,
each task's settings in --help, and mistakes (a recipe's, a task setting's, a device's) as one line before anything
is created."""

import inspect
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY

from coconut_pytorch.data.tasks import TASKS
from coconut_pytorch.helpers import check_device
from coconut_pytorch.training import TrainConfig, config_from_arguments, train
from coconut_pytorch.evaluate import main as evaluate
from coconut_pytorch.training.command import build_parser, main, parse_args

RECIPES = ROOT / 'recipes'

# the README's recipes ("Training with the paper's curriculum"), flag for flag
README_FLAGS = {
    'prosqa.yaml': """--task prosqa --task-kwargs '{"steps": "frontier"}' --fresh-data --thought-loss 1 --device cuda --bf16 --cuda-graphs
        --max-latent-stage 6 --train-size 20000 --final-epochs 24 --dim 256 --depth 6 --heads 8 --dim-head 32
        --num-residual-streams 1 --batch-size 128 --lr 1e-3 --time-budget 440 --out runs/prosqa""",
    'multiplication_4x4.yaml': """--task multiplication --task-kwargs '{"num_digits_a": 4, "num_digits_b": 4}'
        --tokens-per-stage 8 --thoughts-per-step 8 --thought-loss 1 --fresh-data --train-size 20000 --epochs-per-stage 1
        --final-epochs 14 --lr-decay-epochs 5 --device cuda --bf16 --cuda-graphs --dim 256 --depth 6 --heads 8
        --dim-head 32 --num-residual-streams 1 --batch-size 128 --lr 1e-3 --eval-size 1000 --out runs/mult4""",
    'multiplication_5x5.yaml': """--task multiplication --task-kwargs '{"num_digits_a": 5, "num_digits_b": 5}'
        --tokens-per-stage 8 --thoughts-per-step 8 --thought-loss 1 --fresh-data --train-size 20000 --epochs-per-stage 1
        --final-epochs 9 --lr-decay-epochs 4 --device cuda --bf16 --cuda-graphs --dim 256 --depth 6 --heads 8
        --dim-head 32 --num-residual-streams 1 --batch-size 256 --lr 1e-3 --eval-size 1000 --out runs/mult5""",
}


def config(*argv: str) -> TrainConfig:
    """The TrainConfig the command's own parser makes of `argv`."""
    return config_from_arguments(parse_args(list(argv)))


def start_command(*argv: str, module: str | None = None) -> subprocess.Popen:
    command = [sys.executable, '-m', module] if module else [sys.executable, str(ROOT / 'train_toy.py')]
    return subprocess.Popen(command + list(argv), stdout = subprocess.PIPE, stderr = subprocess.PIPE, text = True, cwd = ROOT)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout = 300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str):
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize('name', sorted(README_FLAGS))
def test_a_recipe_gives_exactly_the_configuration_of_its_flags(name):
    recipe = RECIPES / name
    flags = shlex.split(README_FLAGS[name])
    from_file = config('--config', str(recipe))
    assert from_file == config(*flags)
    assert from_file != TrainConfig()
    # the command its comment gives is the same recipe, and it names how to run the file
    head = [line for line in recipe.read_text().splitlines() if line.startswith('#')]
    same_as = next(line for line in head if 'the same as:' in line).split('train_toy.py', 1)[1]
    assert config(*shlex.split(same_as)) == from_file
    assert any(f'--config recipes/{name}' in line for line in head)


@pytest.mark.parametrize('name', sorted(README_FLAGS))
def test_options_on_the_command_line_override_the_recipe(name):
    recipe = str(RECIPES / name)
    base = config('--config', recipe)
    overridden = config('--config', recipe, '--lr', '5e-4', '--no-fresh-data', '--no-cuda-graphs', '--device', 'cpu', '--seed', '3')
    assert (overridden.lr, overridden.fresh_data, overridden.cuda_graphs, overridden.device, overridden.seed) == (5e-4, False, False, 'cpu', 3)
    # the rest is the file's
    assert {**vars(overridden), 'lr': base.lr, 'fresh_data': True, 'cuda_graphs': True, 'device': base.device, 'seed': base.seed} == vars(base)
    # the options may come before the file as well
    assert config('--lr', '5e-4', '--config', recipe).lr == 5e-4


def test_every_recipe_loads_into_a_valid_configuration():
    recipes = sorted(RECIPES.iterdir())
    assert {recipe.name for recipe in recipes} >= set(README_FLAGS)
    for recipe in recipes:
        assert recipe.suffix == '.yaml', recipe
        assert recipe.read_text().startswith('# '), f'{recipe}: the first line says what it reproduces'
        assert isinstance(config('--config', str(recipe)), TrainConfig)


def test_a_recipe_may_use_the_dashed_spellings(tmp_path):
    recipe = tmp_path / 'dashed.yaml'
    recipe.write_text('task-kwargs: {num_digits: 3}\ndim-head: 8\nc-thought: 2\ncheckpoint-activations: true\nlr: 1e-3\n'
                      'pad-latent-to-max: false\n')
    assert config('--config', str(recipe)) == config('--task-kwargs', '{"num_digits": 3}', '--dim-head', '8', '--thoughts-per-step', '2',
                                                     '--checkpoint-activations', '--lr', '1e-3', '--no-pad-latent-to-max')


@pytest.mark.parametrize('text, message', [
    ('batch_sise: 8\n', "unknown setting 'batch_sise'; the settings are: task, task_kwargs, method,"),
    ('no_fresh_data: true\n', "unknown setting 'no_fresh_data' (write fresh_data: false)"),
    ('batch_size: big\n', "batch_size must be an integer, got 'big'"),
    ('batch_size: 8.5\n', 'batch_size must be an integer, got 8.5'),
    ('lr: fast\n', "lr must be a number, got 'fast'"),
    ('fresh_data: 1\n', 'fresh_data must be true or false, got 1'),
    ('depth: true\n', 'depth must be an integer, got True'),
    ("task_kwargs: '{\"num_digits\": 3}'\n", 'task_kwargs must be a mapping'),
    ('task_kwargs: {}\ntask-kwargs: {}\n', "'task-kwargs' sets task_kwargs, which the file already set"),
    ('- lr\n', 'expected a mapping of settings to values, got list'),
    ('lr: [\n', 'cannot be read as YAML'),
])
def test_a_bad_recipe_is_named_with_its_key(tmp_path, text, message):
    recipe = tmp_path / 'bad.yaml'
    recipe.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(['--config', str(recipe)])
    assert str(exit_info.value.code).startswith(f'error: --config {recipe}: ')
    assert message in str(exit_info.value.code) and '\n' not in str(exit_info.value.code)


def test_the_help_lists_every_task_with_its_settings_and_defaults():
    text = build_parser().format_help()
    epilog = text[text.index('task settings'):]
    for task, task_class in TASKS.items():
        line = next(line for line in epilog.splitlines() if line.strip().startswith(f'{task}:'))
        for name, parameter in inspect.signature(task_class).parameters.items():
            assert f'{name}={parameter.default!r}' in line, (task, name, line)
    assert "prosqa: steps='proof'" in epilog
    assert '--config FILE' in text


def test_a_bad_recipe_or_task_setting_stops_the_command_before_the_run_directory_exists(tmp_path, in_process):
    recipe = tmp_path / 'bad.yaml'
    recipe.write_text('depht: 3\n')
    assert_one_line_error(in_process(main, '--config', recipe, '--out', tmp_path / 'recipe'), str(recipe), "'depht'")
    assert_one_line_error(in_process(main, '--task-kwargs', '{"digits": 3}', '--out', tmp_path / 'task'),
                          "task_kwargs: running_sum has no setting 'digits'; it accepts: num_digits, modulus")
    assert not (tmp_path / 'recipe').exists() and not (tmp_path / 'task').exists()


@pytest.fixture(scope = 'module')
def trained_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('trained')
    train(TrainConfig(**{**TINY, 'time_budget': 0.}), out)
    return out / 'checkpoint.pt'


DEVICES = dict(gpu = 'must be auto, cpu, cuda or cuda:N', **({} if torch.cuda.is_available() else {'cuda': 'sees no CUDA GPU', 'cuda:5': 'sees no CUDA GPU'}))


def test_a_device_this_machine_lacks_is_one_line_from_both_commands(tmp_path, trained_checkpoint, in_process):
    for device, message in DEVICES.items():
        with pytest.raises(ValueError, match = message):
            check_device(device)
    data = tmp_path / 'data.json'
    data.write_text('[{"question": "1 2 3", "steps": ["1", "3"], "answer": "6"}]')
    # the training command in this process; the evaluation command once as installed (what a person sees), once in-process
    missing = 'cuda' if not torch.cuda.is_available() else f'cuda:{torch.cuda.device_count()}'
    command = start_command('--checkpoint', str(trained_checkpoint), '--data', str(data), '--device', 'gpu', module = 'coconut_pytorch.evaluate')
    for device in ('gpu', missing):
        message = DEVICES['gpu'] if device == 'gpu' else 'sees no CUDA GPU' if device == 'cuda' else 'GPU'
        assert_one_line_error(in_process(main, '--device', device, '--out', tmp_path / device), repr(device), message)
        assert not (tmp_path / device).exists()
        # evaluation: refused before the checkpoint is read (torch's own refusal there is a traceback)
        evaluated = finish(command) if device == 'gpu' else in_process(evaluate, '--checkpoint', trained_checkpoint, '--data', data, '--device', device)
        assert_one_line_error(evaluated, '--device', repr(device), message)
