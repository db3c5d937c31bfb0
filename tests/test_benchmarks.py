"""The training-throughput benchmark runs on a CPU and reports every stage it is asked for."""

import re
import subprocess
import sys
from pathlib import Path

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
