"""The training curve of a run: loss, teacher-forced token accuracy and held-out accuracy by epoch, the curriculum's
stages marked; with the thought alignment loss, the answer loss and the thought loss apart."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def language_loss(record: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The language part (answer and steps) of an epoch's `loss`: the total less every auxiliary loss the record
    holds (`thought_loss`, `align_mse`, `align_cosine`, `halt_loss`, `thought_token_loss`), each times its weight in the run."""
    return record['loss'] - sum(weight * record.get(name, 0.) for name, weight in weights.items())


def plot_history(history: list[dict], path: Path, title: str = '', thought_loss_weight: float | None = None,
                 final_accuracy: tuple[int | None, float] | None = None, loss_weights: Mapping[str, float] | None = None):
    """Loss and accuracy by epoch (numbered from 0, as the logs number them), with the curriculum's stages marked.

    `thought_loss_weight`: the run's weight of the thought loss, to take it out of the total (default 1);
    `loss_weights`: the weights of the other auxiliary losses the records hold (`align_mse`, ..., `halt_loss`),
    taken out likewise.
    Held-out exact-match accuracy is drawn where the history has it (`eval_accuracy`, with `TrainConfig.eval_every`)
    and at `final_accuracy` = (epoch, accuracy), the run's result."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    # a None in a history is a value that was not finite (training.json_safe): a gap in the curve
    history = [{key: float('nan') if value is None else value for key, value in h.items()} for h in history]
    epochs = [h['epoch'] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize = (10, 3.8))

    loss_ax.plot(epochs, [h['loss'] for h in history], marker = 'o', markersize = 3, label = 'total')
    with_thoughts = [h for h in history if h.get('thought_loss', 0) > 0]
    if with_thoughts:
        # the thought loss counts in `loss` with the run's weight; the language loss is what is left
        weights = {'thought_loss': thought_loss_weight if thought_loss_weight is not None else 1., **(loss_weights or {})}
        loss_ax.plot(epochs, [language_loss(h, weights) for h in history], linewidth = 1, label = 'language (answer and steps)')
        loss_ax.plot([h['epoch'] for h in with_thoughts], [h['thought_loss'] for h in with_thoughts], linewidth = 1, linestyle = ':', label = 'thought alignment (KL)')
        loss_ax.legend(fontsize = 7)
    loss_ax.set_yscale('log')
    for formatter in (loss_ax.yaxis.set_major_formatter, loss_ax.yaxis.set_minor_formatter):
        formatter(FormatStrFormatter('%.3g'))     # plain numbers, not 2.6 x 10^0, when the range is narrow
    loss_ax.set_ylabel('training loss')

    acc_ax.plot(epochs, [h['token_accuracy'] for h in history], marker = 'o', markersize = 3, color = 'tab:green', label = 'token accuracy (teacher forced)')
    measured = [(h['epoch'], h['eval_accuracy']) for h in history if 'eval_accuracy' in h]
    if final_accuracy is not None and final_accuracy[0] is not None:
        measured.append(final_accuracy)
    if measured:
        acc_ax.plot(*zip(*measured), marker = 's', markersize = 5, color = 'tab:red', label = 'held-out answers (exact match)')
    acc_ax.set_ylabel('accuracy')
    acc_ax.set_ylim(0, 1.05)
    acc_ax.legend(fontsize = 7, loc = 'lower right')

    changes = [index for index in range(1, len(history)) if history[index]['stage'] != history[index - 1]['stage']]
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel('epoch' + (' (dashed lines: a new curriculum stage begins)' if changes else ''))
        ax.xaxis.set_major_locator(MaxNLocator(integer = True))
        ax.grid(alpha = 0.3)
        for index in changes:
            epoch, stage = history[index]['epoch'], history[index]['stage']
            ax.axvline(epoch - 0.5, color = 'gray', linestyle = '--', linewidth = 0.8)
            ax.annotate(f'stage {stage}', (epoch - 0.4, 1), xycoords = ('data', 'axes fraction'), fontsize = 7, va = 'top',
                        color = 'dimgray', rotation = 90)

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi = 120)
    plt.close(fig)
