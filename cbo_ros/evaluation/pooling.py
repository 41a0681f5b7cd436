"""Several labelled sources at once: benchmark manifests and pooled figures with object-level CIs.

A benchmark ``manifest.json`` (written by the true-label benchmark generator) lists its clips per
split: ``{version, seed, splits: {name: [{clip, video, labels, meta, object, category, tier,
frames}]}}`` with paths relative to the manifest. Pooled figures sum correct answers and scored
(labelled) frames over the sources; their 95 % intervals come from a bootstrap that resamples
whole OBJECTS (a source without an object is its own unit), never frames.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.core.calibration_fit import group_bootstrap

BENCHMARK_SPLITS = ('calibration', 'evaluation', 'heldout_category')
BASELINES = ('local_only', 'raw_threshold', 'calibrated_threshold', 'bandwidth_driven')
NOT_BASELINES = ('oracle', 'cbo_exact')


class ManifestError(ValueError):
    """A benchmark manifest is missing or invalid (the message says why)."""


@dataclass
class LabelledSource:
    """One source to score: media, its labels file (None: its own / sibling) and its object."""

    media: str
    labels_file: str = None
    group: str = None           # bootstrap unit (benchmark object); None: the source itself
    category: str = None
    tier: str = None


def default_manifest_path():
    """Return the benchmark's manifest path under the artifacts directory."""
    return paths.artifacts_dir() / 'benchmark' / 'manifest.json'


def benchmark_sources(split, manifest=None):
    """``LabelledSource`` of every clip of ``split`` in a benchmark manifest."""
    path = Path(manifest) if manifest else default_manifest_path()
    if not path.is_file():
        raise ManifestError(f'benchmark manifest {path} not found (generate the benchmark first, '
                            'or give --manifest)')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ManifestError(f'{path}: not valid JSON ({error})') from error
    splits = data.get('splits') if isinstance(data, dict) else None
    if not isinstance(splits, dict):
        raise ManifestError(f'{path}: no "splits" object')
    if split not in splits:
        raise ManifestError(f'{path}: no split {split!r} (splits: {", ".join(sorted(splits))})')
    sources = []
    for number, clip in enumerate(splits[split]):
        missing = [k for k in ('video', 'labels', 'object') if not clip.get(k)]
        if missing:
            raise ManifestError(f'{path}: split {split!r} clip #{number} lacks '
                                f'{", ".join(missing)}')
        video, labels = path.parent / clip['video'], path.parent / clip['labels']
        for item in (video, labels):
            if not item.exists():
                raise ManifestError(f'{path}: split {split!r} clip '
                                    f'{clip.get("clip", number)!r}: {item} not found')
        sources.append(LabelledSource(str(video), str(labels), str(clip['object']),
                                      clip.get('category'), clip.get('tier')))
    if not sources:
        raise ManifestError(f'{path}: split {split!r} lists no clip')
    return sources


def is_cbo(name):
    """Whether a strategy is one of the CBO planners (cbo, cbo_adaptive, cbo_uncalibrated)."""
    return name.startswith('cbo') and name not in NOT_BASELINES


def is_baseline(name):
    """Whether a strategy is a non-CBO baseline (local, server-only, thresholds, bandwidth)."""
    return name in BASELINES or name.startswith('server_only_')


def pooled_strategies(reports, groups, bootstrap=1000, seed=0):
    """Pooled accuracy of every strategy over single-source reports, with object-level CIs.

    ``groups`` gives each report's bootstrap unit (its object, else its source). Returns
    ({name: {'accuracy', 'accuracy_ci', 'correct', 'scored_frames', ...}}, comparisons) where
    comparisons hold CBO minus the best non-CBO baseline and the share of the oracle's gain,
    each with its interval (same resampled objects: paired).
    """
    names = list(reports[0]['strategies'])
    correct = np.array([[r['strategies'][n]['correct'] for n in names] for r in reports], float)
    scored = np.array([r['strategies'][names[0]].get('scored_frames',
                                                     r['strategies'][names[0]]['frames'])
                       for r in reports], float)
    offloads = np.array([[r['strategies'][n]['offloads'] for n in names] for r in reports], float)
    frames = np.array([r['frames'] for r in reports], float)
    misses = np.array([[r['strategies'][n]['deadline_misses'] for n in names] for r in reports],
                      float)
    sent = np.array([[r['strategies'][n]['bytes_sent'] for n in names] for r in reports], float)
    accuracy = correct.sum(axis=0) / max(scored.sum(), 1.0)
    baselines = [i for i, n in enumerate(names) if is_baseline(n)]
    best = max(baselines, key=lambda i: accuracy[i]) if baselines else None
    local = names.index('local_only') if 'local_only' in names else None
    oracle = names.index('oracle') if 'oracle' in names else None
    cbo = names.index('cbo') if 'cbo' in names else None

    def statistic(pick):
        acc = correct[pick].sum(axis=0) / max(scored[pick].sum(), 1.0)
        extra = []
        if cbo is not None and best is not None:
            extra.append(acc[cbo] - acc[best])
        if cbo is not None and local is not None and oracle is not None:
            span = acc[oracle] - acc[local]
            extra.append((acc[cbo] - acc[local]) / span if span > 1e-12 else np.nan)
        return np.concatenate([acc, extra])

    units = np.asarray(groups)
    low = high = None
    if bootstrap and len(np.unique(units)) > 1:
        low, high = group_bootstrap(statistic, units, bootstrap, seed)
    pooled = {}
    for i, name in enumerate(names):
        pooled[name] = {
            'accuracy': float(accuracy[i]),
            'accuracy_ci': None if low is None else [float(low[i]), float(high[i])],
            'correct': int(correct[:, i].sum()),
            'scored_frames': int(scored.sum()),
            'frames': int(frames.sum()),
            'offload_share': float(offloads[:, i].sum() / max(frames.sum(), 1.0)),
            'deadline_misses': int(misses[:, i].sum()),
            'bytes_sent': int(sent[:, i].sum()),
        }
    comparisons = {}
    k = len(names)
    if cbo is not None and best is not None:
        comparisons['cbo_minus_best_baseline'] = {
            'best_baseline': names[best], 'difference': float(accuracy[cbo] - accuracy[best]),
            'ci': None if low is None else [float(low[k]), float(high[k])]}
        k += 1
    if cbo is not None and local is not None and oracle is not None:
        span = accuracy[oracle] - accuracy[local]
        comparisons['cbo_oracle_gain_share'] = {
            'share': float((accuracy[cbo] - accuracy[local]) / span) if span > 1e-12 else None,
            'ci': None if low is None else [float(np.nan_to_num(low[k])),
                                            float(np.nan_to_num(high[k]))]}
    return pooled, comparisons


def format_pooled(pooled, comparisons, units, label_source):
    """Terminal table of pooled figures."""
    true = label_source == 'true'
    word = 'acc' if true else 'agree'
    lines = [f"{'strategy':<22}{word + '%':>7}{'95% CI':>16}{'offl%':>7}{'miss':>7}{'MB':>8}"]
    for name, p in pooled.items():
        ci = p['accuracy_ci']
        ci = f'[{100 * ci[0]:5.1f},{100 * ci[1]:5.1f}]' if ci else '-'
        lines.append(f"{name:<22}{100 * p['accuracy']:7.1f}{ci:>16}"
                     f"{100 * p['offload_share']:7.1f}{p['deadline_misses']:7d}"
                     f"{p['bytes_sent'] / 1e6:8.2f}")
    diff = comparisons.get('cbo_minus_best_baseline')
    if diff:
        ci = diff['ci']
        ci = f' [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]' if ci else ''
        lines.append(f"cbo - best non-CBO baseline ({diff['best_baseline']}): "
                     f"{100 * diff['difference']:+.1f} points{ci}")
    share = comparisons.get('cbo_oracle_gain_share')
    if share and share['share'] is not None:
        ci = share['ci']
        ci = f' [{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]' if ci else ''
        lines.append(f"cbo share of the oracle's gain over local-only: "
                     f"{100 * share['share']:.0f}%{ci}")
    lines.append(f"pooled over sources; 95 % CIs: bootstrap resampling whole {units} (not "
                 'frames); ' + ('acc%: accuracy against true label sets' if true else
                                'agree%: AGREEMENT WITH REFERENCE LABELS, not accuracy'))
    return '\n'.join(lines)
