"""The training curve: the language part of the loss is the total less every weighted auxiliary loss."""

import pytest

from coconut_pytorch.plotting import language_loss, plot_history


def test_the_language_loss_is_the_total_less_each_weighted_auxiliary_loss():
    weights = dict(thought_loss = 1., align_mse = 2., align_cosine = 0., halt_loss = 0.5)
    record = dict(loss = 2., thought_loss = 0.5, align_mse = 0.2, halt_loss = 0.1)
    assert language_loss(record, weights) == pytest.approx(2. - 0.5 - 0.4 - 0.05, abs = 1e-12)
    # an epoch without thoughts logs no thought or alignment loss: nothing to take out
    assert language_loss(dict(loss = 1.25), weights) == 1.25


def test_the_figure_is_written_with_every_auxiliary_loss(tmp_path):
    history = [dict(epoch = epoch, stage = epoch // 2, loss = 2. - 0.1 * epoch, token_accuracy = 0.5 + 0.05 * epoch,
                    thought_loss = 0.3, align_mse = 0.1, halt_loss = None if epoch == 3 else 0.2) for epoch in range(4)]
    plot_history(history, tmp_path / 'training.png', title = 'run', thought_loss_weight = 1., final_accuracy = (3, 0.9),
                 loss_weights = dict(align_mse = 1., halt_loss = 1.))
    assert (tmp_path / 'training.png').stat().st_size > 0
