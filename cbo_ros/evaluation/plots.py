"""Figures of the calibration and evaluation tools (matplotlib, Agg; nodes never import this)."""

from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402

from cbo_ros.core.calibration_metrics import (expected_calibration_error,  # noqa: E402
                                              reliability_bins)


def reliability_diagrams(panels, path, title='', bins=15, ylabel='accuracy'):
    """Save reliability diagrams side by side.

    ``panels`` is a list of (label, confidences, correct). Each panel shows the accuracy per
    equal-width confidence bin against the diagonal, the gap, the number of frames in each bin
    (printed above its bar) and the ECE. ``ylabel``: 'accuracy' with true labels, else the
    agreement with reference labels.
    """
    count = len(panels)
    fig, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    for ax, (label, conf, correct) in zip(axes[0], panels):
        edges, mean_conf, accuracy, counts = reliability_bins(conf, correct, bins)
        centres = 0.5 * (edges[:-1] + edges[1:])
        width = edges[1] - edges[0]
        used = counts > 0
        ax.bar(centres[used], accuracy[used], width=width, edgecolor='black', color='#4c72b0',
               label='accuracy')
        ax.bar(centres[used], (mean_conf - accuracy)[used], bottom=accuracy[used], width=width,
               edgecolor='#c44e52', color='#c44e52', alpha=0.3, label='gap')
        ax.plot([0, 1], [0, 1], 'k--', linewidth=1)
        for x, n in zip(centres[used], counts[used]):
            ax.text(x, 0.02, str(int(n)), ha='center', va='bottom', fontsize=5.5, rotation=90,
                    bbox={'boxstyle': 'round,pad=0.1', 'facecolor': 'white', 'alpha': 0.8,
                          'linewidth': 0})
        ece = expected_calibration_error(conf, correct, bins)
        ax.set_title(f'{label}\nECE {100 * ece:.1f}%, n = {int(counts.sum())}', fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel('confidence')
    axes[0][0].set_ylabel(f'{ylabel} (numbers: frames per bin)')
    axes[0][0].legend(loc='upper left', fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_curves(x_values, accuracy, path, xlabel, title='', log_x=False,
                    ylabel='accuracy (%)'):
    """Accuracy of each strategy against a swept parameter; ``accuracy`` is {name: [values]}."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {'cbo': ('-', 'o', 2.5), 'oracle': (':', 'x', 1.5), 'cbo_exact': (':', '+', 1.5),
              'local_only': ('--', '', 1.5)}
    for name, values in accuracy.items():
        line, marker, width = styles.get(name, ('-', '.', 1.0))
        ax.plot(x_values, 100 * np.asarray(values), linestyle=line, marker=marker,
                linewidth=width, label=name)
    if log_x:
        ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
