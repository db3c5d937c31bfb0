"""A run keeps its own records (config.json, metrics.jsonl, stage snapshots, held-out accuracy every N epochs), can be
extended once finished, can start from another run's weights, and the command stops cleanly on Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from helpers import ROOT, TINY
from coconut_pytorch.training import TrainConfig, train


def test_a_run_folder_holds_its_settings_its_epochs_and_a_snapshot_per_stage(tmp_path):
    messages = []
    config = TrainConfig(**{**TINY, 'final_epochs': 1, 'eval_every': 2})
    result = train(config, tmp_path, say = messages.append)
    state = torch.load(tmp_path / 'checkpoint.pt', weights_only = True)

    assert json.loads((tmp_path / 'config.json').read_text()) == asdict(config)
    lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert lines == state['history'] and [line['epoch'] for line in lines] == list(range(len(lines)))
    # held-out accuracy every 2 epochs, not at the last one (the result holds that)
    assert [line['epoch'] for line in lines if 'eval_accuracy' in line] == [epoch for epoch in range(len(lines) - 1) if (epoch + 1) % 2 == 0]
    # where each epoch's time went: its batches, its steps (no CUDA graphs on the CPU), its evaluation
    assert all(line['seconds_train'] > 0 and line['seconds_data'] >= 0 and line['seconds_capture'] == 0 for line in lines)
    assert all(('seconds_eval' in line) == ('eval_accuracy' in line) and line.get('seconds_eval', 1) > 0 for line in lines)
    assert all(line['seconds_data'] + line['seconds_train'] <= line['seconds'] - (previous['seconds'] if previous else 0) + 0.02     # 'seconds' is rounded to 0.01
               for previous, line in zip([None] + lines, lines))
    # a snapshot at the end of each stage but the last, which the checkpoint itself holds
    stages = sorted({line['stage'] for line in lines})
    assert sorted(p.name for p in tmp_path.glob('stage*.pt')) == sorted(f'stage{stage}.pt' for stage in stages[:-1])
    snapshot = torch.load(tmp_path / f'stage{stages[0]}.pt', weights_only = True)
    assert snapshot['epoch'] == max(line['epoch'] for line in lines if line['stage'] == stages[0])
    assert result['plot'] == str(tmp_path / 'training.png') and (tmp_path / 'training.png').is_file()
    assert result['metrics'] == str(tmp_path / 'metrics.jsonl') and messages == [f'run folder: {tmp_path}']


def test_a_finished_run_is_extended_by_more_final_epochs(tmp_path):
    first = train(TrainConfig(**TINY), tmp_path)
    messages = []
    more = train(TrainConfig(**{**TINY, 'final_epochs': 2}), tmp_path, resume = True, say = messages.append)
    assert first['finished'] and more['finished'] and more['epoch'] == first['epoch'] + 2
    assert messages == [f'run folder: {tmp_path}', f'resuming {tmp_path} at epoch {first["epoch"] + 1} of 0-{first["epoch"] + 2} (epoch {first["epoch"]} was the last saved)']
    lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [line['epoch'] for line in lines] == list(range(more['epoch'] + 1))


def test_a_run_starts_from_another_runs_weights_and_refuses_ones_that_do_not_fit(tmp_path):
    cot = train(TrainConfig(**{**TINY, 'method': 'cot'}), tmp_path / 'cot')
    messages = []
    config = TrainConfig(**{**TINY, 'init_from': cot['checkpoint'], 'time_budget': 0., 'lr': 1e-12, 'warmup_steps': 0})
    train(config, tmp_path / 'coconut', say = messages.append)
    assert messages == [f'run folder: {tmp_path / "coconut"}', f'starting from the weights of {cot["checkpoint"]}']
    # at a learning rate of 1e-12 one epoch leaves the weights where the CoT run left them
    before, after = (torch.load(path, weights_only = True)['model'] for path in (tmp_path / 'cot' / 'checkpoint.pt', tmp_path / 'coconut' / 'checkpoint.pt'))
    assert all(torch.allclose(before[name], after[name], atol = 1e-6) for name in before)
    # but it did train: AdamW stepped every parameter with its gradients (whose updates float32 weights may not show)
    optimizer = torch.load(tmp_path / 'coconut' / 'checkpoint.pt', weights_only = True)['optimizer']['state']
    assert len(optimizer) > 0 and all(state['step'] > 0 and state['exp_avg'].abs().sum() > 0 for state in optimizer.values())

    with pytest.raises(ValueError, match = 'init_from .* do not fit'):
        train(TrainConfig(**{**TINY, 'dim': 32, 'init_from': cot['checkpoint']}), tmp_path / 'wider')
    assert not (tmp_path / 'wider' / 'checkpoint.pt').exists()
    with pytest.raises(ValueError, match = 'init_from .* vocabulary'):
        train(TrainConfig(**{**TINY, 'task': 'pointer_chase', 'task_kwargs': {}, 'init_from': cot['checkpoint']}), tmp_path / 'other-words')


COMMAND = ['--train-size', '128', '--eval-size', '8', '--batch-size', '32', '--epochs-per-stage', '1', '--final-epochs', '2',
           '--dim', '16', '--depth', '1', '--heads', '2', '--dim-head', '8', '--num-residual-streams', '1', '--warmup-steps', '0',
           '--task-kwargs', '{"num_digits": 3}']


def test_ctrl_c_keeps_the_last_epoch_says_how_to_continue_and_the_continued_run_equals_an_uninterrupted_one(tmp_path):
    # no --out: the run gets its own folder under runs/, and --resume finds the latest one
    # the commands use this process's number of threads, so that the in-process run below reduces in the same order
    environment = {**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads())}
    # with Ctrl-C's default disposition: a test run started in the background (`&` in a script) ignores SIGINT, and a
    # child would inherit that and never see the interrupt
    child = subprocess.Popen([sys.executable, str(ROOT / 'train_toy.py'), *COMMAND], cwd = tmp_path, stdout = subprocess.PIPE,
                             stderr = subprocess.PIPE, text = True, env = environment,
                             preexec_fn = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in child.stdout:
        if line.startswith('{"epoch": 1,'):
            break
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout = 60)
    assert child.returncode == 130 and 'Traceback' not in stderr, stderr
    assert 'interrupted:' in stderr and '--resume' in stderr, stderr
    folder, = (tmp_path / 'runs').iterdir()
    assert folder.name.startswith('running_sum-coconut-') and f'run folder: runs/{folder.name}' in stderr

    resumed = subprocess.run([sys.executable, str(ROOT / 'train_toy.py'), *COMMAND, '--resume'], cwd = tmp_path, capture_output = True, text = True,
                             env = environment)
    assert resumed.returncode == 0, resumed.stderr
    assert f'resuming runs/{folder.name} at epoch' in resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])['finished']

    arguments = dict(zip([flag[2:].replace('-', '_') for flag in COMMAND[::2]], COMMAND[1::2]))
    whole = train(TrainConfig(**{key: json.loads(value) if key == 'task_kwargs' else type(getattr(TrainConfig, key))(value)
                                 for key, value in arguments.items()}), tmp_path / 'whole')
    assert whole['finished']
    continued, uninterrupted = (torch.load(path / 'checkpoint.pt', weights_only = True)['model'] for path in (folder, tmp_path / 'whole'))
    assert all(torch.equal(continued[name], uninterrupted[name]) for name in continued)
