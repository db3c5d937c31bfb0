"""The gated feedforward's width: at the same constructor arguments the model has coconut-pytorch 0.0.32's size
(inner width int(dim * ff_mult * 2 / 3), three matrices holding what a plain 4 x dim feedforward would), an exact
width can be given, and checkpoints made under the earlier rule (4 x dim) still load and resume as they were made."""

import pytest
import torch

from coconut_pytorch import Coconut, Transformer
from coconut_pytorch.training import TrainConfig, load_trained, train
from coconut_pytorch.training.checkpoints import read_checkpoint, save_checkpoint


def feedforward_widths(model):
    return {tuple(module.proj_out.weight.shape) for module in model.modules() if type(module).__name__ == 'FeedForward'}


@pytest.mark.parametrize('dim, ff_mult, inner', [(512, 4, 1365), (64, 4, 170), (96, 2, 128), (30, 1.5, 30)])
def test_the_inner_width_is_two_thirds_of_dim_times_ff_mult(dim, ff_mult, inner):
    transformer = Transformer(num_tokens = 32, dim = dim, depth = 2, dim_head = 8, heads = 2, ff_mult = ff_mult, num_residual_streams = 1)
    assert feedforward_widths(transformer) == {(dim, inner)}
    # the gated feedforward (three matrices of dim x inner) holds what a plain one of width dim * ff_mult does, to
    # within the rounding down of the inner width
    gated = 3 * dim * inner
    assert gated <= 2 * dim * dim * ff_mult < gated + 3 * dim


def test_the_same_arguments_make_0032s_size():
    # coconut-pytorch 0.0.32 at these arguments (num_tokens 256, dim 512, depth 6, its default dim_head 64, heads 8,
    # 4 streams) has 19,224,404 parameters: counted with it installed beside this package. Ours differ only by its
    # feedforward biases (2 x 1365 + 512 a layer) and our layers' small extras (final norm, value-residual gate bias)
    model = Coconut(num_reasoning_steps = 3, transformer = dict(num_tokens = 256, dim = 512, depth = 6))
    count = sum(p.numel() for p in model.parameters())
    assert count == 19_204_960
    assert abs(count / 19_224_404 - 1) < 0.002


def test_an_exact_width_overrides_the_rule_and_bad_widths_are_named():
    transformer = Transformer(num_tokens = 32, dim = 16, depth = 1, dim_head = 8, heads = 2, ff_dim_inner = 64)
    assert feedforward_widths(transformer) == {(16, 64)}
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match = 'ff_dim_inner must be a positive integer'):
            Transformer(num_tokens = 32, dim = 16, depth = 1, ff_dim_inner = bad)
    with pytest.raises(ValueError, match = 'ff_mult gives a feedforward width of 0'):
        Transformer(num_tokens = 32, dim = 1, depth = 1, dim_head = 8, heads = 2, ff_mult = 1)
    with pytest.raises(ValueError, match = 'ff_dim_inner'):
        TrainConfig(ff_dim_inner = 0)


SMALL = dict(task = 'running_sum', task_kwargs = dict(num_digits = 3), device = 'cpu', train_size = 32, eval_size = 4, batch_size = 16,
             epochs_per_stage = 1, final_epochs = 0, max_latent_stage = 1, dim = 16, depth = 1, heads = 2, dim_head = 8,
             num_residual_streams = 1, warmup_steps = 0)


def as_made_before_the_rule(path):
    """Rewrite a checkpoint as one saved before `ff_dim_inner` existed: no such setting, feedforwards 4 x dim wide."""
    state = read_checkpoint(path)
    del state['config']['ff_dim_inner']
    dim, inner = state['config']['dim'], 4 * state['config']['dim']
    generator = torch.Generator().manual_seed(0)
    for key in list(state['model']):
        if key.endswith('proj_in.weight'):
            state['model'][key] = torch.randn(2 * inner, dim, generator = generator)
        elif key.endswith('proj_out.weight'):
            state['model'][key] = torch.randn(dim, inner, generator = generator)
    save_checkpoint(state, path)
    return state


def test_checkpoints_from_before_the_rule_load_and_resume_at_their_width(tmp_path):
    assert TrainConfig.from_dict(dict(task = 'running_sum', dim = 40)).ff_dim_inner == 160
    assert TrainConfig.from_dict(dict(task = 'running_sum')).ff_dim_inner == 4 * TrainConfig().dim
    assert TrainConfig.from_dict(dict(task = 'running_sum', ff_dim_inner = None)).ff_dim_inner is None

    run = train(TrainConfig(**SMALL, time_budget = 0.), tmp_path)
    model, *_ = load_trained(run['checkpoint'])
    assert feedforward_widths(model) == {(16, 42)}

    state = as_made_before_the_rule(tmp_path / 'checkpoint.pt')
    model, *_ = load_trained(tmp_path / 'checkpoint.pt')
    assert feedforward_widths(model) == {(16, 64)}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state['model'].items() if 'proj_' in key)

    # resuming it under today's default would build another model: refused, saying how to resume it as it was made
    with pytest.raises(ValueError, match = 'give --ff-dim-inner 64 to resume'):
        train(TrainConfig(**SMALL), tmp_path, resume = True)
    resumed = train(TrainConfig(**SMALL, ff_dim_inner = 64), tmp_path, resume = True)
    assert resumed['finished'] is True


def test_a_run_from_an_older_runs_weights_and_hf_runs_are_told_apart(tmp_path):
    # init_from a checkpoint of the earlier width: refused, saying which width to give
    train(TrainConfig(**SMALL, method = 'cot', time_budget = 0.), tmp_path / 'cot')
    as_made_before_the_rule(tmp_path / 'cot' / 'checkpoint.pt')
    with pytest.raises(ValueError, match = 'give --ff-dim-inner 64'):
        train(TrainConfig(**SMALL, init_from = str(tmp_path / 'cot' / 'checkpoint.pt'), time_budget = 0.), tmp_path / 'coconut')
    started = train(TrainConfig(**SMALL, init_from = str(tmp_path / 'cot' / 'checkpoint.pt'), ff_dim_inner = 64, time_budget = 0.), tmp_path / 'wide')
    assert started['checkpoint']

    # a pretrained model's run has no such width, before or after the rule
    assert TrainConfig.from_dict(dict(task = 'running_sum', hf_model = 'some/folder')).ff_dim_inner is None
    assert TrainConfig(hf_model = 'some/folder').feedforward_width() is None
    with pytest.raises(ValueError, match = 'ff_dim_inner sets the native Transformer'):
        TrainConfig(hf_model = 'some/folder', ff_dim_inner = 64)


def test_the_width_given_as_the_rules_number_resumes_a_run_made_by_the_rule(tmp_path):
    train(TrainConfig(**SMALL, time_budget = 0.), tmp_path)
    assert TrainConfig(**SMALL).feedforward_width() == 42
    resumed = train(TrainConfig(**SMALL, ff_dim_inner = 42), tmp_path, resume = True)
    assert resumed['finished'] is True
