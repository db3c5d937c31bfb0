"""Runs never lose or corrupt work: overwrites, concurrent runs (the lock), atomic saves, damaged checkpoints named
in one line, a device with an index, and data that changed before a resume."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import ROOT, SMALL, TINY, checkpoint_bytes, running_sum_files

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.loaders import save_json_examples
from coconut_pytorch.training import TrainConfig, load_trained, train
from coconut_pytorch.training.checkpoints import RunLock, RunLockError, read_checkpoint, save_checkpoint


@pytest.fixture(scope = 'module')
def trained(tmp_path_factory):
    """A finished tiny run: its directory."""
    out = tmp_path_factory.mktemp('trained')
    train(TrainConfig(**TINY), out)
    return out


# overwrites, locks, atomic saves


def test_a_new_run_refuses_an_out_dir_that_holds_one(trained):
    good = checkpoint_bytes(trained)
    with pytest.raises(ValueError, match = '--resume.*--overwrite'):
        train(TrainConfig(**TINY), trained)
    assert checkpoint_bytes(trained) == good
    with pytest.raises(ValueError, match = 'cannot be combined'):
        train(TrainConfig(**TINY), trained, resume = True, overwrite = True)


def test_overwrite_replaces_a_run(tmp_path):
    train(TrainConfig(**TINY), tmp_path)
    first = read_checkpoint(tmp_path / 'checkpoint.pt')['config']['seed']
    train(TrainConfig(**{**TINY, 'seed': 1}), tmp_path, overwrite = True)
    assert first == 0 and read_checkpoint(tmp_path / 'checkpoint.pt')['config']['seed'] == 1


def test_a_locked_out_dir_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from coconut_pytorch.training.checkpoints import RunLock; '
                               'lock = RunLock(sys.argv[1]); lock.acquire(); print("held", flush = True); time.sleep(60)', str(tmp_path)],
                              stdout = subprocess.PIPE, text = True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(RunLockError, match = f'pid {holder.pid}'):
            train(TrainConfig(**TINY), tmp_path)
        assert not (tmp_path / 'checkpoint.pt').exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the dead holder's lock: the file it left is no obstacle
    assert (tmp_path / 'run.lock').exists()
    with RunLock(tmp_path):
        assert (tmp_path / 'run.lock').read_text() == str(os.getpid())
    assert not (tmp_path / 'run.lock').exists()


def test_two_runs_started_together_into_one_out_dir_one_is_refused(tmp_path):
    args = ['--train-size', '128', '--eval-size', '8', '--batch-size', '32', '--dim', '16', '--depth', '1', '--heads', '2',
            '--dim-head', '8', '--num-residual-streams', '1', '--epochs-per-stage', '1', '--final-epochs', '0', '--out', str(tmp_path / 'run')]
    runs = [subprocess.Popen([sys.executable, str(ROOT / 'train_toy.py'), *args, '--seed', str(seed)], stdout = subprocess.PIPE,
                             stderr = subprocess.PIPE, text = True, cwd = tmp_path) for seed in (0, 1)]
    outputs = [run.communicate(timeout = 300) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes[0] == 0 and codes[1] != 0, outputs
    refused = outputs[[run.returncode for run in runs].index(codes[1])][1]
    assert 'in use by another run' in refused or 'already holds a run' in refused
    winner = [json.loads(out.splitlines()[-1]) for out, _ in outputs if out.strip()]
    assert len(winner) == 1
    seed = read_checkpoint(tmp_path / 'run' / 'checkpoint.pt')['config']['seed']
    assert winner[0]['checkpoint'].endswith('checkpoint.pt') and seed in (0, 1)


def test_concurrent_saves_never_mix_and_leave_no_temporary_files(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    states = [dict(model = dict(w = torch.full((64, 64), float(value))), value = value) for value in range(2)]

    def save_repeatedly(state):
        for _ in range(10):
            save_checkpoint(state, path)

    threads = [threading.Thread(target = save_repeatedly, args = (state,)) for state in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    saved = torch.load(path, weights_only = True)
    assert torch.equal(saved['model']['w'], torch.full((64, 64), float(saved['value'])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pt']


def test_an_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint.pt'
    save_checkpoint(dict(value = 1), path)

    def broken_save(state, file):
        file.write(b'half a checkpoint')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(dict(value = 2), path)
    monkeypatch.undo()
    assert torch.load(path, weights_only = True) == dict(value = 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pt']


# loading checkpoints: one checked path


def damaged_copies(trained: Path, tmp_path: Path) -> dict[str, Path]:
    source = trained / 'checkpoint.pt'
    state = torch.load(source, weights_only = True)
    copies = {}

    def write(name, value):
        copies[name] = tmp_path / f'{name}.pt'
        torch.save(value, copies[name])

    copies['empty'] = tmp_path / 'empty.pt'
    copies['empty'].write_bytes(b'')
    copies['truncated'] = tmp_path / 'truncated.pt'
    copies['truncated'].write_bytes(source.read_bytes()[:len(source.read_bytes()) // 2])
    write('a list', [1, 2])
    write('no tokenizer', {k: v for k, v in state.items() if k != 'tokenizer'})
    # a configuration asking for a model of 65536 x 64 with the small model's weights: refused before allocating
    write('huge config', {**state, 'config': {**state['config'], 'dim': 65536, 'depth': 64}})
    nan_model = dict(state['model'])
    name = next(iter(nan_model))
    nan_model[name] = nan_model[name].clone().fill_(float('nan'))
    write('nan weights', {**state, 'model': nan_model})
    write('bad inference', {**state, 'inference': {**state['inference'], 'num_thoughts': -3}})
    write('bad config', {**state, 'config': {**state['config'], 'dim': 'wide'}})
    return copies


EXPECTED = {
    'empty': 'is empty',
    'truncated': 'could not be read',
    'a list': 'not a dict',
    'no tokenizer': 'missing: tokenizer',
    'huge config': 'do not match the model its configuration describes',
    'nan weights': 'non-finite weights',
    'bad inference': 'num_thoughts',
    'bad config': 'configuration is not valid',
}


def test_damaged_checkpoints_are_named_in_one_line_by_evaluate_and_resume(trained, tmp_path, monkeypatch):
    copies = damaged_copies(trained, tmp_path)
    from coconut_pytorch.transformer import Transformer
    built = []
    build = Transformer.__init__
    # (dim, the device a model is built on): the default device is 'meta' inside `with torch.device('meta')`
    monkeypatch.setattr(Transformer, '__init__', lambda self, *args, **kwargs: (built.append((kwargs['dim'], torch.empty(0).device.type)), build(self, *args, **kwargs))[1])

    for name, path in copies.items():
        with pytest.raises(ValueError, match = EXPECTED[name]) as error:
            load_trained(path)
        assert '\n' not in str(error.value) and str(path) in str(error.value)

        out = tmp_path / f'run-{name.replace(" ", "-")}'
        out.mkdir()
        (out / 'checkpoint.pt').write_bytes(path.read_bytes())
        with pytest.raises(ValueError, match = EXPECTED[name]):
            train(TrainConfig(**TINY), out, resume = True)
    # the huge model was only ever described on the meta device
    assert (65536, 'meta') in built and (65536, 'cpu') not in built


def test_evaluate_refuses_a_damaged_checkpoint_without_a_traceback(trained, tmp_path, in_process):
    from coconut_pytorch.evaluate import main as evaluate
    copies = damaged_copies(trained, tmp_path)
    data = tmp_path / 'data.json'
    save_json_examples([Example(question = '1 2 3', steps = [], answer = '6')], data)
    # one command as installed (what a person sees), the others through its main in this process
    command = subprocess.Popen([sys.executable, '-m', 'coconut_pytorch.evaluate', '--checkpoint', str(copies['truncated']), '--data', str(data), '--device', 'cpu'],
                               stdout = subprocess.PIPE, stderr = subprocess.PIPE, text = True)
    finished = {name: in_process(evaluate, '--checkpoint', copies[name], '--data', data, '--device', 'cpu') for name in ('nan weights', 'empty')}
    finished['truncated'] = subprocess.CompletedProcess(command.args, command.wait(), *command.communicate())
    for name, done in finished.items():
        assert done.returncode != 0 and EXPECTED[name] in done.stderr and 'Traceback' not in done.stderr, done.stderr


def test_a_device_with_an_index_round_trips(tmp_path):
    result = train(TrainConfig(**{**TINY, 'device': 'cpu:0', 'time_budget': 0.}), tmp_path)
    assert result['finished'] is False and result['stopped'] == 'time_budget'
    train(TrainConfig(**{**TINY, 'device': 'cpu:0'}), tmp_path, resume = True)
    model, *_ = load_trained(tmp_path / 'checkpoint.pt', device = 'cpu:0')
    assert model.device.type == 'cpu'


# resuming over data that changed


def test_resume_refuses_data_files_whose_vocabulary_changed(tmp_path):
    train_file, eval_file = running_sum_files(tmp_path)
    config = TrainConfig(**{**SMALL, 'train_file': str(train_file), 'eval_file': str(eval_file), 'time_budget': 0.})
    train(config, tmp_path / 'run')
    # the same number of words, one spelled differently: every id after it would silently shift
    for path in (train_file, eval_file):
        path.write_text(path.read_text().replace('7', 'x7'))
    with pytest.raises(ValueError, match = 'vocabulary'):
        train(config, tmp_path / 'run', resume = True)


def test_resume_refuses_training_files_whose_answers_changed(tmp_path):
    from coconut_pytorch.data.tasks import get_task
    task = get_task('running_sum', num_digits = 3)
    train_file, eval_file = tmp_path / 'train.json', tmp_path / 'eval.json'
    save_json_examples(task.generate(160, seed = 0), train_file)
    save_json_examples(task.generate(8, seed = 1), eval_file)
    config = TrainConfig(**{**TINY, 'train_file': str(train_file), 'eval_file': str(eval_file), 'time_budget': 0.})
    train(config, tmp_path / 'run')

    # the same words, two answers swapped: the vocabulary is unchanged, the data is not
    records = json.loads(train_file.read_text())
    records[0]['answer'], records[1]['answer'] = records[1]['answer'], records[0]['answer']
    assert records[0]['answer'] != records[1]['answer']
    train_file.write_text(json.dumps(records))

    with pytest.raises(ValueError, match = 'train_file changed.*--allow-changed-data'):
        train(config, tmp_path / 'run', resume = True)
    result = train(config, tmp_path / 'run', resume = True, allow_changed_data = True)
    assert result['epoch'] >= 1
