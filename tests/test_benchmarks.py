"""The training-throughput benchmark runs on a CPU and reports every stage it is asked for."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_smoke_run_reports_each_stage():
    out = subprocess.run(
        [sys.executable, 'benchmarks/train_throughput.py', '--device', 'cpu', '--small', '--batches', '2', '--warmup', '1', '--stages', '0,6'],
        cwd = ROOT, capture_output = True, text = True, timeout = 300, check = True
    ).stdout
    rows = [line.split('|')[1:-1] for line in out.splitlines() if re.match(r'\| \d', line)]
    assert [int(row[0]) for row in rows] == [0, 6]
    # stage 6 runs six thoughts and a short answer; every figure is a positive rate
    assert [int(row[1]) for row in rows] == [0, 6]
    assert all(float(row[3].replace(',', '')) > 0 for row in rows)


def test_train_throughput_with_the_thought_loss():
    out = subprocess.run(
        [sys.executable, 'benchmarks/train_throughput.py', '--device', 'cpu', '--small', '--batches', '2', '--warmup', '1', '--stages', '3',
         '--thought-loss', '1', '--pad-to-longest'],
        cwd = ROOT, capture_output = True, text = True, timeout = 300, check = True
    ).stdout
    assert 'thought loss 1.0, pad to longest True' in out
    rows = [line.split('|')[1:-1] for line in out.splitlines() if re.match(r'\| \d', line)]
    assert [int(row[1]) for row in rows] == [3]


def test_train_throughput_profiles_a_stage():
    out = subprocess.run(
        [sys.executable, 'benchmarks/train_throughput.py', '--device', 'cpu', '--small', '--profile', '3'],
        cwd = ROOT, capture_output = True, text = True, timeout = 300, check = True
    ).stdout
    assert 'aten::mm' in out and 'Self CPU time total' in out


def test_held_out_overlap_counts_the_questions_a_run_trained_on(tmp_path):
    # running sums of 3 digits have 1,000 questions: a 64-example held-out set overlaps 3 fresh sets of 400
    import json

    from coconut_pytorch.training.fresh_sets import fresh_data_seed, held_out_seed
    from coconut_pytorch.data.loaders import load_examples
    from coconut_pytorch.data.tasks import get_task

    settings = dict(task = 'running_sum', task_kwargs = dict(num_digits = 3), train_size = 400, eval_size = 64, fresh_data = True, seed = 2)
    unseen_file = tmp_path / 'unseen.json'

    def overlap(**changes) -> dict:
        out = subprocess.run(
            [sys.executable, 'scripts/held_out_overlap.py', '--config', json.dumps({**settings, **changes}), '--epochs', '3', '--unseen', str(unseen_file)],
            cwd = ROOT, capture_output = True, text = True, timeout = 300, check = True
        ).stdout
        return json.loads(out.splitlines()[-1])

    # the default keeps held-out questions out of every generated training set
    assert overlap()['also_trained_on'] == 0

    # runs from before that setting drew their sets unfiltered
    report = overlap(exclude_held_out = False)

    task = get_task('running_sum', num_digits = 3)
    seen = {e.question for seed in (2, fresh_data_seed(2, 1), fresh_data_seed(2, 2)) for e in task.generate(400, seed = seed)}
    held_out = task.generate(64, seed = held_out_seed(2))
    expected = sum(e.question in seen for e in held_out)
    assert 0 < expected < 64
    assert report['also_trained_on'] == expected and report['held_out'] == 64
    assert [e.question for e in load_examples(unseen_file)] == [e.question for e in held_out if e.question not in seen]


def test_op_count_counts_what_the_step_dispatches(capsys):
    # one more residual stream is more work per block: the count must see it
    sys.path.insert(0, 'benchmarks')
    from op_count import main as op_count
    counts = {}
    for streams in (1, 4):
        op_count(['--streams', str(streams), '--depth', '1', '--dim', '32', '--top', '3'])
        first = capsys.readouterr().out.splitlines()[0]
        counts[streams] = [int(word) for word in first.replace(',', '').split() if word.isdigit()]
    assert all(count > 0 for count in counts[1]) and counts[4][0] > counts[1][0] and counts[4][1] > counts[1][1]


def test_cpu_ratio_and_op_count_take_a_reference_by_path(capsys):
    # this repository holds coconut_pytorch/coconut.py as an installed 0.0.32 would: as its own reference, the op
    # counts are equal and every config gets its row
    sys.path.insert(0, 'benchmarks')
    from cpu_ratio import main as cpu_ratio
    from op_count import main as op_count
    op_count(['--depth', '1', '--dim', '32', '--top', '0', '--reference', '.'])
    assert 'ours / theirs = 1.00' in capsys.readouterr().out
    cpu_ratio(['--reference', '.', '--configs', 'A1', '--rounds', '2', '--warmup', '1'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('A1')]
    assert len(rows) == 1 and len(rows[0].split()) == 7     # name, two medians and fastest steps, the ratios


def test_epoch_times_splits_each_epoch_and_finds_the_first_crossing(tmp_path, monkeypatch):
    import json
    monkeypatch.syspath_prepend(str(ROOT / 'scripts'))
    from epoch_times import read_records, summary
    records = [dict(epoch = 0, stage = 0, seconds = 10., seconds_data = 1., seconds_train = 8.5),
               dict(epoch = 1, stage = 1, seconds = 25., seconds_data = 0., seconds_train = 12., eval_accuracy = 0.9, seconds_eval = 2.),
               dict(epoch = 2, stage = 1, seconds = 40., seconds_data = 0., seconds_train = 11., eval_accuracy = 0.985, seconds_eval = 2.)]
    path = tmp_path / 'metrics.jsonl'
    path.write_text(''.join(json.dumps(record) + '\n' for record in records))
    text = summary(read_records(path), 0.98)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:3]}
    # stage 0: 10 s of which 9.5 named; stage 1: walls 15 and 15, the second holding epoch 1's 2 s evaluation
    assert rows['0'][1:3] == ['1', '10.00'] and float(rows['0'][-1]) == 0.5
    assert rows['1'][1:3] == ['2', '15.00'] and float(rows['1'][-1]) == 2.5      # others 3 (15 - 12) and 2 (15 - 11 - 2)
    assert 'held-out evaluations 4.0 s' in text
    # the first crossing is epoch 2: 40 s less the 2 s evaluation before it
    assert 'after epoch 2 (stage 1), 38.0 s of training' in text
    assert 'no held-out evaluation reached 0.99' in summary(records, 0.99)
    path.write_text('{"epoch": 0}\n')
    with pytest.raises(ValueError, match = 'metrics.jsonl'):
        read_records(path)


def test_host_batch_times_each_stage_at_each_thread_count():
    out = subprocess.run(
        [sys.executable, 'benchmarks/host_batch.py', '--batches', '2', '--batch-size', '8', '--stages', '0,6', '--threads', '1,2', '--busy', '1'],
        cwd = ROOT, capture_output = True, text = True, timeout = 300, check = True
    ).stdout
    rows = [line.split('|')[1:-1] for line in out.splitlines() if re.match(r'\| \d', line)]
    assert [(int(row[0]), int(row[1]), int(row[2])) for row in rows] == [(0, 0, 1), (0, 0, 2), (6, 6, 1), (6, 6, 2)]
    assert all(float(row[3]) > 0 and float(row[4]) > 0 for row in rows)
    for bad in (['--stages', '7'], ['--stages', 'x'], ['--threads', '0']):
        failed = subprocess.run([sys.executable, 'benchmarks/host_batch.py', *bad], cwd = ROOT, capture_output = True, text = True, timeout = 300)
        assert failed.returncode == 2 and 'error: --' in failed.stderr, failed.stderr
