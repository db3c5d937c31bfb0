"""A run's settings are written once, as TrainConfig's fields, and train_toy.py's options come from them."""

import argparse
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from coconut_pytorch.training import TrainConfig, add_config_arguments, config_from_arguments

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_arguments(parser.parse_args(list(argv)))


def test_no_options_give_the_default_configuration():
    assert parse() == TrainConfig()


def test_every_setting_has_an_option_that_sets_it_alone():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    defaults = vars(parser.parse_args([]))
    for setting in fields(TrainConfig):
        default = setting.default_factory() if setting.default is MISSING else setting.default
        option = '--' + (setting.metadata.get('cli') or setting.name.replace('_', '-'))
        # a value unlike the default, of the setting's kind (a switch flips)
        if setting.type == 'bool':
            argv, expected = [option], not default
        elif setting.metadata.get('choices'):
            choice = next(choice for choice in setting.metadata['choices'] if choice != default)
            argv, expected = [option, choice], choice
        elif setting.type == 'dict':
            argv, expected = [option, '{"depth": 3}'], {'depth': 3}
        elif setting.type.startswith('int'):
            argv, expected = [option, '7'], 7
        elif setting.type.startswith('float'):
            argv, expected = [option, '0.125'], 0.125
        else:
            argv, expected = [option, 'somewhere'], 'somewhere'
        assert expected != default, setting.name
        values = vars(parser.parse_args(argv))
        assert values == {**defaults, setting.name: expected}, setting.name


def test_the_options_the_hand_written_parser_had_missed_now_exist():
    config = parse('--max-grad-norm', '0.5', '--no-reset-optimizer', '--weight-decay', '0', '--checkpoint-activations',
                   '--task-kwargs', '{"num_digits": 3}')
    assert (config.max_grad_norm, config.reset_optimizer, config.weight_decay, config.checkpoint, config.task_kwargs) == (0.5, False, 0., True, {'num_digits': 3})


def test_a_bad_choice_is_refused_by_the_parser():
    with pytest.raises(SystemExit):
        parse('--method', 'magic')


def test_the_help_shows_every_setting_with_its_text_and_default():
    text = ' '.join(subprocess.run([sys.executable, str(ROOT / 'train_toy.py'), '--help'], capture_output = True, text = True, check = True, cwd = ROOT).stdout.split())
    for setting in fields(TrainConfig):
        assert ' '.join(setting.metadata['help'].split())[:40] in text, setting.name
    assert '(default: 0.01)' in text and '(default: running_sum)' in text
