"""The export command writes a task's generated sets to files: a run's held-out set exactly as training generates it,
in the paper's JSON format and in iCoT's line format, each read back by the loaders."""

import subprocess
import sys

from coconut_pytorch.data.loaders import load_examples
from coconut_pytorch.export import main
from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.training import TrainConfig
from coconut_pytorch.training.datasets import load_data


def start(*args):
    return subprocess.Popen([sys.executable, '-m', 'coconut_pytorch.export', *map(str, args)], stdout = subprocess.PIPE, stderr = subprocess.PIPE, text = True)


def fields(examples):
    return [(example.question, example.steps, example.answer) for example in examples]


def test_export_writes_a_runs_held_out_set_and_a_seeds_set_in_both_formats(tmp_path, in_process):
    sums = dict(num_digits = 4)
    # the command as installed, once; its other cases through its main in this process
    command = start('--task', 'prosqa', '--held-out', '--seed', 3, '--size', 20, '--out', tmp_path / 'held_out.json')
    finished = dict(
        icot = in_process(main, '--task', 'prosqa', '--held-out', '--seed', 3, '--size', 20, '--out', tmp_path / 'held_out.txt'),
        seeded = in_process(main, '--task', 'running_sum', '--task-kwargs', '{"num_digits": 4}', '--seed', 3, '--size', 7, '--out', tmp_path / 'sums.txt'),
        unknown = in_process(main, '--task', 'prosqa_nope', '--seed', 3, '--size', 5, '--out', tmp_path / 'nope.json'),
        bad_kwargs = in_process(main, '--task', 'running_sum', '--task-kwargs', '{"digits": 4}', '--seed', 3, '--size', 5, '--out', tmp_path / 'bad.json'),
        bad_size = in_process(main, '--task', 'prosqa', '--seed', 3, '--size', 0, '--out', tmp_path / 'zero.json'),
    )
    finished['json'] = subprocess.CompletedProcess([], command.wait(), *command.communicate())

    _, held_out, _, _ = load_data(TrainConfig(task = 'prosqa', seed = 3, eval_size = 20, train_size = 16))
    assert len(held_out) == 20
    for name, path in (('json', 'held_out.json'), ('icot', 'held_out.txt')):
        assert finished[name].returncode == 0, finished[name].stderr
        assert fields(load_examples(tmp_path / path)) == fields(held_out), name
    assert (tmp_path / 'held_out.json').read_text().lstrip().startswith('[')
    assert not (tmp_path / 'held_out.txt').read_text().lstrip().startswith('[') and '||' in (tmp_path / 'held_out.txt').read_text()

    assert finished['seeded'].returncode == 0, finished['seeded'].stderr
    assert fields(load_examples(tmp_path / 'sums.txt')) == fields(get_task('running_sum', **sums).generate(7, seed = 3))

    for name, says in (('unknown', "unknown task 'prosqa_nope'"), ('bad_kwargs', 'digits'), ('bad_size', '--size must be >= 1')):
        failed = finished[name]
        assert failed.returncode != 0 and failed.stdout == '', (name, failed.stdout)
        assert failed.stderr.startswith('error: ') and says in failed.stderr, (name, failed.stderr)
        assert len(failed.stderr.strip().splitlines()) == 1 and 'Traceback' not in failed.stderr, (name, failed.stderr)
    assert not any((tmp_path / name).exists() for name in ('nope.json', 'bad.json', 'zero.json'))
