"""A run's settings are written once, as TrainConfig's fields, and train_toy.py's options come from them; a bad
setting is named; old checkpoints' settings read with the defaults they ran with."""

import argparse
import subprocess
import sys
from dataclasses import MISSING, fields

import pytest
import torch
from helpers import ROOT

from coconut_pytorch.data.tasks import TASKS
from coconut_pytorch.helpers import check_device
from coconut_pytorch.training import TrainConfig, add_config_arguments, config_from_arguments
from coconut_pytorch.training.config import task_settings


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


@pytest.mark.parametrize('setting, error, message', [
    (dict(batch_size = 0), ValueError, 'batch_size must be >= 1'),
    (dict(train_size = 2.5), TypeError, 'train_size must be an int'),
    (dict(depth = True), TypeError, 'depth must be an int'),
    (dict(final_epochs = -1), ValueError, 'final_epochs must be >= 0'),
    (dict(lr = 0.), ValueError, 'lr must be finite and > 0'),
    (dict(lr = float('nan')), ValueError, 'lr must be finite and > 0'),
    (dict(lr = float('inf')), ValueError, 'lr must be finite'),
    (dict(lr_decay_epochs = float('inf')), ValueError, 'lr_decay_epochs must be finite'),
    (dict(thought_loss = float('inf')), ValueError, 'thought_loss must be finite'),
    (dict(seed = -1), ValueError, 'seed must be >= 0'),
    (dict(lr = '1e-3'), TypeError, 'lr must be a number'),
    (dict(uniform_prob = 1.5), ValueError, 'uniform_prob must be at most 1'),
    (dict(time_budget = -1.), ValueError, 'time_budget must be finite and >= 0'),
    (dict(task = 'gsm8k'), ValueError, 'task must be one of'),
    (dict(method = 'icot'), ValueError, 'method must be one of'),
    (dict(task_kwargs = '{}'), TypeError, 'task_kwargs must be a dict'),
    (dict(train_file = 3), TypeError, 'train_file must be a path'),
    (dict(train_file = 'x.json', fresh_data = True), ValueError, 'cannot be used with train_file'),
    (dict(cuda_graphs = True, device = 'cpu'), ValueError, 'cuda_graphs needs a CUDA device'),
    (dict(task_kwargs = {'digits': 3}), ValueError, "task_kwargs: running_sum has no setting 'digits'; it accepts: num_digits, modulus$"),
    (dict(task = 'prosqa', task_kwargs = {'num_digits': 3}), ValueError, "task_kwargs: prosqa has no setting 'num_digits'; it accepts: steps, min_steps, max_steps, num_nodes$"),
    (dict(device = 'gpu'), ValueError, "device must be auto, cpu, cuda or cuda:N"),
    (dict(device = 'cuda:x'), ValueError, "device must be auto, cpu, cuda or cuda:N"),
    (dict(device = 0), TypeError, "device must be a str"),
    (dict(cuda_graphs = True, compile = True, device = 'cuda'), ValueError, 'cannot be combined'),
    (dict(cuda_graphs = True, checkpoint = True, device = 'cuda'), ValueError, 'cannot be combined'),
    # the latent alignment options
    (dict(align_mse = -0.5), ValueError, 'align_mse must be finite and >= 0'),
    (dict(align_cosine = float('nan')), ValueError, 'align_cosine must be finite and >= 0'),
    (dict(align_cosine = '1'), TypeError, 'align_cosine must be a number'),
    (dict(mix_start = float('inf')), ValueError, 'mix_start must be finite and >= 0'),
    (dict(mix_start = 1.5), ValueError, 'mix_start must be at most 1'),
    (dict(mix_epochs = -1), ValueError, 'mix_epochs'),
    (dict(mix_epochs = 1.5), (TypeError, ValueError), 'mix_epochs'),
    (dict(mix_start = 0.5, mix_epochs = 0), ValueError, 'mix_start needs mix_epochs >= 1'),
    (dict(thought_rms_match = 1), TypeError, 'thought_rms_match must be a bool'),
    (dict(method = 'cot', align_mse = 1.), ValueError, r"align_mse acts on the continuous thoughts that are fed back: method must be one of \['coconut', 'coconut_no_curriculum'\], got 'cot'"),
    (dict(method = 'pause_as_thought', align_cosine = 1.), ValueError, 'align_cosine acts on the continuous thoughts'),
    (dict(method = 'pause', thought_rms_match = True), ValueError, 'thought_rms_match acts on the continuous thoughts'),
    (dict(method = 'no_thoughts', mix_start = 0.5), ValueError, 'mix_start acts on the continuous thoughts'),
])
def test_train_config_names_the_bad_setting(setting, error, message):
    with pytest.raises(error, match = message):
        TrainConfig(**setting)


def test_checkpoints_from_before_the_held_out_filter_read_as_unfiltered():
    assert TrainConfig.from_dict(dict(task = 'running_sum')).exclude_held_out is False
    assert TrainConfig.from_dict(dict(task = 'running_sum', exclude_held_out = True)).exclude_held_out is True


def test_the_thought_loss_is_on_by_default_for_coconut_only_and_off_for_old_checkpoints():
    # on for the methods whose thoughts are fed back, off (as in the paper) for the baselines, which then still run
    # without naming it; a weight given is kept, 0 included
    assert TrainConfig().thought_loss == 1. and parse().thought_loss == 1.
    assert TrainConfig(method = 'coconut_no_curriculum').thought_loss == 1.
    for method in ('cot', 'no_cot', 'pause', 'pause_as_thought', 'no_thoughts'):
        assert TrainConfig(method = method).thought_loss == 0., method
        assert parse('--method', method).thought_loss == 0., method
    assert TrainConfig(thought_loss = 0.).thought_loss == 0. and parse('--thought-loss', '0').thought_loss == 0.
    assert TrainConfig(method = 'pause_as_thought', thought_loss = 0.5).thought_loss == 0.5
    # a checkpoint from before the thought loss existed trained without it
    assert TrainConfig.from_dict(dict(task = 'running_sum', method = 'coconut')).thought_loss == 0.
    assert TrainConfig.from_dict(dict(task = 'running_sum', thought_loss = 1.)).thought_loss == 1.


def test_c_is_thoughts_per_step_and_answers_to_the_papers_name():
    # the paper's name on the command line, and in checkpoints written before the rename
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert config_from_arguments(parser.parse_args(['--c-thought', '3'])).thoughts_per_step == 3
    assert config_from_arguments(parser.parse_args(['--thoughts-per-step', '2'])).thoughts_per_step == 2
    assert TrainConfig.from_dict(dict(c_thought = 4)).thoughts_per_step == 4
    assert TrainConfig(thoughts_per_step = 2).curriculum(task_max_steps = 3).thoughts_per_step == 2


def test_every_task_setting_is_accepted_and_only_those():
    for task in TASKS:
        settings = task_settings(task)
        assert settings, task
        # every setting the task takes may be given (with its own default: the task accepts it)
        assert TrainConfig(task = task, task_kwargs = dict(settings)).task_kwargs == settings
        with pytest.raises(ValueError, match = f"^task_kwargs: {task} has no setting 'colour'; it accepts: {', '.join(settings)}$"):
            TrainConfig(task = task, task_kwargs = dict(colour = 1))


def test_the_device_defaults_to_auto_resolved_for_this_machine():
    # the resolved name is the one saved in checkpoints
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert TrainConfig().device == expected and parse().device == expected
    assert TrainConfig(device = 'auto').device == expected
    assert TrainConfig(device = 'cpu:0').device == 'cpu:0'
    # a GPU's name is kept where there is none: a checkpoint trained on one must still read
    assert TrainConfig.from_dict(dict(device = 'cuda:1')).device == 'cuda:1'


def test_auto_is_cuda_where_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert TrainConfig().device == 'cuda' and TrainConfig(device = 'cpu').device == 'cpu'


@pytest.mark.skipif(torch.cuda.is_available(), reason = 'this machine has the CUDA GPU the check refuses')
def test_check_device_refuses_what_this_machine_lacks():
    assert check_device('auto') == torch.device('cpu') and check_device('cpu:0') == torch.device('cpu:0')
    for device in ('cuda', 'cuda:5'):
        with pytest.raises(ValueError, match = 'this torch build sees no CUDA GPU'):
            check_device(device)
    with pytest.raises(ValueError, match = 'device must be auto, cpu, cuda'):
        check_device('gpu')


def test_the_alignment_options_are_off_by_default_and_need_thought_targets_when_on():
    config = TrainConfig()
    assert (config.align_mse, config.align_cosine, config.thought_rms_match, config.mix_start) == (0., 0., False, 0.)
    # the thought loss, on by default for coconut, needs them anyway: without it, nothing does
    assert config.uses_thought_targets and not TrainConfig(thought_loss = 0.).uses_thought_targets
    for setting in (dict(align_mse = 0.1), dict(align_cosine = 0.1), dict(mix_start = 0.1), dict(thought_loss = 0.1)):
        assert TrainConfig(**{'thought_loss': 0., **setting}).uses_thought_targets, setting
    # the RMS match needs no targets; the alignment works for the method without a curriculum too
    assert not TrainConfig(thought_rms_match = True, thought_loss = 0.).uses_thought_targets
    TrainConfig(method = 'coconut_no_curriculum', align_mse = 1., align_cosine = 1., thought_rms_match = True, mix_start = 1.)
    # checkpoints from before the options read them as off
    assert TrainConfig.from_dict(dict(task = 'running_sum')).uses_thought_targets is False
