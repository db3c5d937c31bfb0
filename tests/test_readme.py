"""The README's code runs as written, and its two set-up commands are the ones CI runs."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / 'README.md'


def python_blocks():
    return re.findall(r'```python\n(.*?)```', README.read_text(), flags = re.DOTALL)


def test_readme_usage_runs_as_written():
    blocks = python_blocks()
    assert len(blocks) >= 2

    torch.manual_seed(0)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), 'exec'), namespace)

    assert namespace['answer'].shape == (2, 64)
    assert namespace['tokens'].shape == (3, 8)
    assert torch.isfinite(namespace['loss'])
    assert namespace['reply'].shape == (2, 4)


def test_readme_names_the_commands_ci_runs():
    text = README.read_text()
    ci = (README.parent / '.ci' / 'run').read_text()

    assert 'python train_toy.py' in text
    for command in ('pip install -e ".[test,hf]"', 'python -m pytest tests -q'):
        assert command in text and command in ci
