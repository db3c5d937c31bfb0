"""The training curve of a run: loss and teacher-forced token accuracy by epoch, stage changes marked."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path, title: str = ''):
    """Loss and teacher-forced token accuracy by epoch, with the curriculum's stage changes marked."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [h['epoch'] + 1 for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize = (10, 3.6))

    loss_ax.plot(epochs, [h['loss'] for h in history], marker = 'o', markersize = 3)
    loss_ax.set_yscale('log')
    loss_ax.set_ylabel('training loss')
    acc_ax.plot(epochs, [h['token_accuracy'] for h in history], marker = 'o', markersize = 3, color = 'tab:green')
    acc_ax.set_ylabel('token accuracy (teacher forced)')
    acc_ax.set_ylim(0, 1.02)

    for ax in (loss_ax, acc_ax):
        ax.set_xlabel('epoch')
        ax.grid(alpha = 0.3)
        for previous, current in zip(history, history[1:]):
            if current['stage'] != previous['stage']:
                ax.axvline(current['epoch'] + 0.5, color = 'gray', linestyle = '--', linewidth = 0.8)
                ax.text(current['epoch'] + 0.6, ax.get_ylim()[1], f"stage {current['stage']}", fontsize = 7, va = 'top', color = 'gray')

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi = 120)
    plt.close(fig)
