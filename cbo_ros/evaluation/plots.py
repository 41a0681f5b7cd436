"""Figures of the calibration and evaluation tools (matplotlib, Agg; nodes never import this).

One visual language for every figure: a strategy family has one hue (server-only: a blue ramp
by resolution; threshold rules: orange; CBO variants: red; local-only: grey; bandwidth-driven:
green; the hindsight oracle: black dashed), members of a family differ by shade, line style
and marker. Series with identical values are drawn once and named together in the legend.
"""

from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402
import numpy as np  # noqa: E402

from cbo_ros.core.calibration_metrics import (expected_calibration_error,  # noqa: E402
                                              reliability_bins)

ACCURACY_COLOUR = '#4c72b0'
OVERCONFIDENT_COLOUR = '#c44e52'
UNDERCONFIDENT_COLOUR = '#dd8452'

# name -> (colour, line style, marker, line width, family order)
FIXED_STYLES = {
    'oracle': ('black', '--', '', 1.6, 0),
    'cbo': ('#b2182b', '-', 'o', 2.6, 1),
    'cbo_adaptive': ('#67001f', '-', 'D', 1.8, 1),
    'cbo_exact': ('#d6604d', ':', 'P', 1.8, 1),
    'cbo_uncalibrated': ('#f4a582', '-.', 's', 1.6, 1),
    'calibrated_threshold': ('#e66101', '-', '^', 1.6, 2),
    'raw_threshold': ('#fdb863', '--', 'v', 1.6, 2),
    'bandwidth_driven': ('#1b7837', '-', '*', 1.6, 3),
    'local_only': ('#636363', '-', 'x', 1.6, 4),
}
SERVER_ONLY_ORDER = 5
OTHER_ORDER = 6


def strategy_style(name, server_resolutions=()):
    """Return (colour, line style, marker, width, family order) of a strategy name."""
    if name in FIXED_STYLES:
        return FIXED_STYLES[name]
    if name.startswith('server_only_'):
        resolutions = sorted(server_resolutions) or [name]
        position = resolutions.index(name) if name in resolutions else 0
        shade = 0.45 + 0.5 * position / max(len(resolutions) - 1, 1)
        markers = ('s', 'p', 'h', '8', 'd', '>')
        return (plt.get_cmap('Blues')(shade), (0, (4, 2)), markers[position % len(markers)],
                1.3, SERVER_ONLY_ORDER)
    if name.startswith('cbo'):
        return ('#e7298a', '-', 'o', 1.4, 1)
    return ('#7f7f7f', '-', '.', 1.0, OTHER_ORDER)


def merge_identical(series, tolerance=1e-9):
    """Group names whose values are equal: [(names, values)] in first-seen order."""
    groups = []
    for name, values in series.items():
        values = np.asarray(values, dtype=np.float64)
        for names, kept in groups:
            if kept.shape == values.shape and np.allclose(kept, values, atol=tolerance,
                                                          equal_nan=True):
                names.append(name)
                break
        else:
            groups.append(([name], values))
    return groups


def plain_number(value, _position=None):
    """Tick label as a plain number (0.25, 1, 800), never 3x10^-1."""
    return f'{value:g}'


def accuracy_curves(x_values, accuracy, path, xlabel, title='', log_x=False,
                    ylabel='accuracy (%)'):
    """Accuracy of each strategy against a swept parameter; ``accuracy`` is {name: [values]}.

    Strategies whose curves are identical are drawn once, their names joined with ' = ' in
    the legend (the legend says so). Ticks sit at the swept values, labelled as plain numbers.
    """
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    server = sorted((n for n in accuracy if n.startswith('server_only_')),
                    key=lambda n: int(n.rsplit('_', 1)[-1]) if n.rsplit('_', 1)[-1].isdigit()
                    else 0)
    merged = False
    # The legend lists the families in order (oracle, CBO, thresholds, ..., server-only).
    for names, values in sorted(merge_identical(accuracy),
                                key=lambda g: -strategy_style(g[0][0], server)[4]):
        colour, line, marker, width, _ = strategy_style(names[0], server)
        merged = merged or len(names) > 1
        # Thick lines and big markers underneath, thin ones on top: a curve that (nearly)
        # coincides with CBO's stays visible inside it.
        ax.plot(x_values, 100 * values, linestyle=line, marker=marker, color=colour,
                linewidth=width, markersize=3.0 + 2.0 * width, label=' = '.join(names),
                zorder=10 - width)
    if log_x:
        ax.set_xscale('log')
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_locator(FixedLocator(list(x_values)))
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (
        strategy_style(labels[i].split(' = ')[0], server)[4], labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7.5,
              loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False,
              title='identical curves merged (a = b)' if merged else None, title_fontsize=7.5)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def reliability_diagrams(panels, path, title='', bins=15, ylabel='accuracy'):
    """Save reliability diagrams side by side, each above the frame count of its bins.

    ``panels`` is a list of (label, confidences, correct). Each bar is a bin's accuracy; the gap
    to the bin's mean confidence is hatched red where the model is overconfident (confidence
    above accuracy) and orange where it is underconfident; the panel below counts the frames
    per bin (log scale, numbers on the bars). ``ylabel``: 'accuracy' with true labels, else
    the agreement with reference labels.
    """
    count = len(panels)
    fig, axes = plt.subplots(2, count, figsize=(3.3 * count, 4.6), squeeze=False,
                             gridspec_kw={'height_ratios': [3.2, 1.0]}, sharex='col')
    for column, (label, conf, correct) in enumerate(panels):
        ax, ax_counts = axes[0][column], axes[1][column]
        edges, mean_conf, accuracy, counts = reliability_bins(conf, correct, bins)
        centres = 0.5 * (edges[:-1] + edges[1:])
        width = edges[1] - edges[0]
        used = counts > 0
        x, acc, mean, n = centres[used], accuracy[used], mean_conf[used], counts[used]
        lower = np.minimum(acc, mean)
        ax.bar(x, lower, width=width, color=ACCURACY_COLOUR, edgecolor='black', linewidth=0.6)
        over = mean > acc
        ax.bar(x[over], (mean - acc)[over], bottom=acc[over], width=width, color='white',
               edgecolor=OVERCONFIDENT_COLOUR, hatch='////', linewidth=0.6)
        under = ~over
        ax.bar(x[under], (acc - mean)[under], bottom=mean[under], width=width,
               color=ACCURACY_COLOUR, edgecolor=UNDERCONFIDENT_COLOUR, hatch='\\\\\\\\',
               linewidth=0.6)
        ax.plot([0, 1], [0, 1], 'k--', linewidth=1)
        ece = expected_calibration_error(conf, correct, bins)
        ax.set_title(f'{label}\nECE {100 * ece:.1f}%, n = {int(counts.sum())}', fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax_counts.bar(x, n, width=width, color='#8c8c8c', edgecolor='black', linewidth=0.5)
        ax_counts.set_yscale('log')
        ax_counts.set_ylim(0.8, max(float(n.max()) if len(n) else 1.0, 1.0) * 30)
        ax_counts.yaxis.set_major_formatter(FuncFormatter(plain_number))
        for xi, ni in zip(x, n):
            ax_counts.text(xi, ni * 1.15, str(int(ni)), ha='center', va='bottom', fontsize=5.5)
        ax_counts.set_xlabel('confidence')
    axes[0][0].set_ylabel(ylabel)
    axes[1][0].set_ylabel('frames')
    axes[0][0].legend(handles=[
        Patch(facecolor=ACCURACY_COLOUR, edgecolor='black', label=ylabel),
        Patch(facecolor='white', edgecolor=OVERCONFIDENT_COLOUR, hatch='////',
              label='gap: overconfident'),
        Patch(facecolor=ACCURACY_COLOUR, edgecolor=UNDERCONFIDENT_COLOUR, hatch='\\\\\\\\',
              label='gap: underconfident'),
        plt.Line2D([], [], color='black', linestyle='--', label='perfect calibration')],
        loc='upper left', fontsize=6.5, framealpha=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches='tight')
    plt.close(fig)
    return path
