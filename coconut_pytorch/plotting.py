"""The training curve of a run: loss and teacher-forced token accuracy by epoch, stage changes marked; with the
thought alignment loss, the answer loss and the thought loss apart."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path, title: str = '', thought_loss_weight: float | None = None):
    """Loss and teacher-forced token accuracy by epoch, with the curriculum's stage changes marked
    (`thought_loss_weight`: the run's weight of the thought loss, to take it out of the total; default 1)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    # a None in a history is a value that was not finite (training.json_safe): a gap in the curve
    history = [{key: float('nan') if value is None else value for key, value in h.items()} for h in history]
    epochs = [h['epoch'] + 1 for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize = (10, 3.6))

    loss_ax.plot(epochs, [h['loss'] for h in history], marker = 'o', markersize = 3, label = 'total')
    with_thoughts = [h for h in history if h.get('thought_loss', 0) > 0]
    if with_thoughts:
        # the thought loss counts in `loss` with the run's weight; the language loss is what is left
        weight = thought_loss_weight if thought_loss_weight is not None else 1.
        loss_ax.plot(epochs, [h['loss'] - weight * h.get('thought_loss', 0.) for h in history], linewidth = 1, label = 'language (answer and steps)')
        loss_ax.plot([h['epoch'] + 1 for h in with_thoughts], [h['thought_loss'] for h in with_thoughts], linewidth = 1, linestyle = ':', label = 'thought alignment (KL)')
        loss_ax.legend(fontsize = 7)
    loss_ax.set_yscale('log')
    loss_ax.set_ylabel('training loss')
    acc_ax.plot(epochs, [h['token_accuracy'] for h in history], marker = 'o', markersize = 3, color = 'tab:green')
    acc_ax.set_ylabel('token accuracy (teacher forced)')
    acc_ax.set_ylim(0, 1.02)

    for ax in (loss_ax, acc_ax):
        ax.set_xlabel('epoch (dashed: a new curriculum stage begins)')
        ax.grid(alpha = 0.3)
        changes = [index for index in range(1, len(history)) if history[index]['stage'] != history[index - 1]['stage']]
        for index in changes:
            epoch, stage = history[index]['epoch'], history[index]['stage']
            ax.axvline(epoch + 0.5, color = 'gray', linestyle = '--', linewidth = 0.8)
            ax.text(epoch + 0.6, ax.get_ylim()[1], str(stage), fontsize = 7, va = 'top', color = 'gray')

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi = 120)
    plt.close(fig)
