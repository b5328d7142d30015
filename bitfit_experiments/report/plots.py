"""The figures a run writes: learning curves and the bias-change heatmap of the paper's Figure 1.

matplotlib runs on the Agg backend (no screen on clusters); every figure is saved atomically.

Layer: report.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..artifacts.io import atomic_save_figure  # noqa: E402


def plot_learning_curves(record, path):
    """Per-epoch metrics of a RunRecord: every evaluated split (and the training loss), one panel per metric.

    As in the official code's curves, the best dev value is marked, because the paper's tables are read off
    those curves.
    """
    epochs = [e.epoch for e in record.epochs]
    if not epochs:
        return None
    splits = list(record.epochs[0].metrics)
    metric_names = list(record.epochs[0].metrics[splits[0]])
    fig, axes = plt.subplots(1, len(metric_names) + 1, figsize=(4.2 * (len(metric_names) + 1), 3.4), squeeze=False)
    axes = axes[0]
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, name in zip(axes, metric_names):
        for split in splits:
            values = [e.metrics[split].get(name, np.nan) for e in record.epochs]
            ax.plot(epochs, values, marker="o", ms=3, label=split)
            if split == record.eval_splits[0] and np.isfinite(values).any():
                i = int(np.nanargmax(values))
                ax.annotate(f"{values[i]:.4f}", (epochs[i], values[i]), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8)
        ax.set_title(name + (" (paper's metric)" if name == record.headline_metric else ""), fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1].plot(epochs, [e.train_loss for e in record.epochs], marker="o", ms=3, color="gray")
    axes[-1].set_title("training loss", fontsize=9)
    axes[-1].set_xlabel("epoch")
    axes[-1].grid(alpha=0.3)
    fig.suptitle(f"{record.task} | {record.fine_tune_type} | lr {record.learning_rate} | seed {record.seed}",
                 fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_bias_heatmap(changes, path, title="Change in bias components"):
    """The paper's Figure 1: mean |b_f - b_0| per bias family (rows) and layer (columns), plus an Avg. column.

    `changes` is the bias_changes.json dict: {"families": {family: [per-layer change]}, "notation": {family: "b_q"}}.
    Rows are ordered by their average change, largest first, as in the official plot; colormap Blues.
    """
    families = changes["families"]
    notation = changes.get("notation", {})
    rows = sorted(families, key=lambda f: -float(np.mean(families[f])))
    matrix = np.array([families[f] + [float(np.mean(families[f]))] for f in rows])
    n_layers = matrix.shape[1] - 1
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * (n_layers + 1), 0.9 + 0.42 * len(rows)))
    im = ax.imshow(matrix, cmap="Blues", aspect="auto")
    ax.set_xticks(range(n_layers + 1), [str(i + 1) for i in range(n_layers)] + ["Avg."], fontsize=8)
    ax.set_yticks(range(len(rows)), [notation.get(f, f) for f in rows], fontsize=9)
    ax.set_xlabel("layer")
    ax.axvline(n_layers - 0.5, color="white", lw=2)
    fig.colorbar(im, ax=ax, fraction=0.035)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path
