"""Build and score the premodel (model selection per frame) on the true-label benchmark.

    python -m cbo_ros.tools.premodel build       # calibration split: train (cached)
    python -m cbo_ros.tools.premodel evaluate    # evaluation split: accuracy and time

``build`` exports the candidates it needs (Lite1 fp32), computes (and caches) every
candidate's outputs and the image features on the calibration split, measures each
candidate's mean single-frame CPU time, fits each candidate's temperature and server profile,
chooses the premodel's hyper-parameters by cross-validation grouped by object and writes
``calibration/premodel.npz``. It does nothing when that file matches the benchmark, the
models and this code (``--force`` rebuilds). ``evaluate`` scores the premodel next to every
single candidate on another split, with 95 % intervals from resampling whole objects.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.assets.premodel_models import (CANDIDATES, CANDIDATES_MANIFEST, PREMODEL_FILE,
                                            default_premodel_path, export_candidates)
from cbo_ros.core.calibration import (CalibrationError, ServerProfile, TemperatureScaling,
                                      load_calibration)
from cbo_ros.core.calibration_fit import group_bootstrap
from cbo_ros.core.premodel import (Premodel, PremodelError, cross_validate, fit_premodel)
from cbo_ros.evaluation.pooling import ManifestError, benchmark_sources
from cbo_ros.evaluation.premodel_data import FEATURES_VERSION, build_table
from cbo_ros.perception.classifier import OnnxClassifier
from cbo_ros.perception.media import read_frames


def measure_costs(frames, threads=1, repeats=3, candidates=CANDIDATES):
    """Mean single-frame time (preprocessing + inference) of each candidate, in seconds.

    The candidates take turns on each frame, so that load from other processes on the
    machine weighs on all of them alike.
    """
    models = [OnnxClassifier(str(paths.resolve_model(c.model_file)), c.input_size,
                             intra_op_threads=threads) for c in candidates]
    for model in models:
        model.logits(frames[:1])
    times = [[] for _ in models]
    for _ in range(repeats):
        for frame in frames:
            for model, spent in zip(models, times):
                start = time.perf_counter()
                model.logits([frame])
                spent.append(time.perf_counter() - start)
    return [float(np.mean(spent)) for spent in times]


def _build_key(manifest, budget_s, costs_ms=None):
    benchmark = Path(manifest).parent if manifest else paths.artifacts_dir() / 'benchmark'
    content = (benchmark / 'content_hash.txt')
    code = [Path(__file__), Path(__file__).parents[1] / 'core' / 'premodel.py',
            Path(__file__).parents[1] / 'perception' / 'image_features.py']
    parts = [content.read_text() if content.is_file() else '', FEATURES_VERSION,
             [c.__dict__ for c in CANDIDATES], budget_s, costs_ms,
             [hashlib.sha256(p.read_bytes()).hexdigest() for p in code]]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _ensure_models():
    missing = [c.model_file for c in CANDIDATES
               if not paths.resolve_model(c.model_file).is_file()]
    if missing or paths.find_artifact('models', CANDIDATES_MANIFEST) is None:
        export_candidates(paths.models_dir())


def build(args):
    """Train the premodel on the calibration split; print the cross-validation table."""
    out = Path(args.output) if args.output else default_premodel_path()
    budget_s = args.budget_ms / 1e3 if args.budget_ms else None
    key = _build_key(args.manifest, budget_s, args.costs_ms)
    if out.is_file() and not args.force:
        try:
            if Premodel.load(out).info.get('key') == key:
                print(f'premodel up to date: {out}')
                return 0
        except PremodelError:
            pass
    started = time.perf_counter()
    _ensure_models()
    bundle = load_calibration(args.calibration)
    sources = benchmark_sources(args.split, args.manifest)
    print(f'premodel: outputs of {len(CANDIDATES)} candidates on {len(sources)} clips of '
          f'{args.split} (cached after the first run)', flush=True)
    table = build_table(sources, bundle.offload_resolutions, progress=not args.no_progress)
    if args.costs_ms:
        if len(args.costs_ms) != len(CANDIDATES):
            raise ValueError(f'--costs-ms needs {len(CANDIDATES)} times (one per candidate)')
        costs = [c / 1e3 for c in args.costs_ms]
    else:
        frames = [f.rgb for f in
                  read_frames(sources[0].media, max_frames=args.timing_frames)[0]]
        costs = measure_costs(frames, threads=args.threads)
    feature_time = float(np.mean(table.feature_seconds))
    temperatures, profiles, confidences = [], [], []
    for m, logits in enumerate(table.logits):
        scaling = TemperatureScaling().fit(logits, table.labels)
        conf = scaling.predict(logits)
        temperatures.append(scaling.temperature)
        confidences.append(conf)
        raw = TemperatureScaling(1.0).predict(logits)
        profiles.append(ServerProfile.fit(conf, raw, table.server_correct))
    best, rows = cross_validate(table.features, table.correct, costs, feature_time,
                                table.groups, confidences[0], budget_s=budget_s,
                                folds=args.folds, tolerance=args.tolerance)
    print(f"{'setting':<36}{'cv acc%':>8}{'ms':>7}  share per candidate")
    for row in rows:
        share = ' '.join(f'{100 * s:4.0f}' for s in row['share'])
        mark = ' <- chosen' if row['config'] == best else ''
        print(f"{row['config'].label():<36}{100 * row['accuracy']:8.1f}"
              f"{1e3 * row['time_s']:7.2f}  {share}{mark}")
    for m, candidate in enumerate(CANDIDATES):
        print(f'{candidate.name:<36}{100 * table.correct[:, m].mean():8.1f}'
              f'{1e3 * costs[m]:7.2f}  (single model; T={temperatures[m]:.2f})')
    info = {'key': key, 'split': args.split, 'frames': int(len(table.groups)),
            'objects': int(len(np.unique(table.groups))), 'threads': args.threads,
            'candidate_files': [c.model_file for c in CANDIDATES],
            'input_sizes': [c.input_size for c in CANDIDATES],
            'tags': [c.tag for c in CANDIDATES],
            'cross_validation': [{'setting': r['config'].label(), 'accuracy': r['accuracy'],
                                  'time_s': r['time_s']} for r in rows],
            'built_seconds': None}
    premodel = fit_premodel(table.features, table.correct, costs, feature_time, best,
                            [c.name for c in CANDIDATES], confidences[0], budget_s,
                            temperatures, profiles, info)
    premodel.info['built_seconds'] = round(time.perf_counter() - started, 1)
    premodel.save(out)
    print(f'premodel ({best.label()}) written to {out} in '
          f'{premodel.info["built_seconds"]:.0f} s')
    return 0


def score_premodel(premodel, table):
    """Per frame of a table: the premodel's choice, its correctness and time (seconds)."""
    conf0 = premodel.confidence(0, table.logits[0])
    chosen = premodel.select_rows(premodel.inputs(table.features, conf0
                                                  if premodel.config.use_confidence else None))
    correct = table.correct[np.arange(len(chosen)), chosen]
    return chosen, correct, premodel.frame_cost_s(chosen)


def evaluate(args):
    """Score the premodel and every single candidate on a split; print and write JSON."""
    premodel = Premodel.load(args.premodel or default_premodel_path())
    sources = benchmark_sources(args.split, args.manifest)
    table = build_table(sources, progress=not args.no_progress)
    chosen, correct, seconds = score_premodel(premodel, table)
    costs = np.asarray(premodel.costs_s)
    names = ['premodel'] + list(premodel.candidates)
    hits = np.column_stack([correct, table.correct])
    times = np.column_stack([seconds] + [np.full(len(chosen), c) for c in costs])
    largest, cheapest = len(costs), 1            # columns of the single models

    def statistic(idx):
        acc = hits[idx].mean(axis=0)
        tim = times[idx].mean(axis=0)
        return np.concatenate([acc, tim, [acc[0] - acc[largest], tim[largest] / tim[0],
                                          acc[0] - acc[cheapest]]])

    value = statistic(np.arange(len(chosen)))
    low, high = group_bootstrap(statistic, table.groups, args.bootstrap, args.seed)
    n = len(names)
    rows = {}
    print(f"{len(chosen)} labelled frames, {len(np.unique(table.groups))} objects of "
          f"{args.split}; 95 % CIs resample whole objects")
    print(f"{'model':<18}{'acc%':>7}{'95% CI':>16}{'ms':>8}  chosen%")
    share = np.bincount(chosen, minlength=len(costs)) / len(chosen)
    for i, name in enumerate(names):
        rows[name] = {'accuracy': float(value[i]), 'accuracy_ci': [float(low[i]), float(high[i])],
                      'mean_time_ms': 1e3 * float(value[n + i])}
        pick = '' if i == 0 else f'{100 * share[i - 1]:6.1f}'
        print(f"{name:<18}{100 * value[i]:7.1f}  [{100 * low[i]:5.1f},{100 * high[i]:5.1f}]"
              f"{1e3 * value[n + i]:8.2f}  {pick}")
    k = 2 * n
    comparisons = {
        'accuracy_minus_largest': [float(value[k]), float(low[k]), float(high[k])],
        'speedup_vs_largest': [float(value[k + 1]), float(low[k + 1]), float(high[k + 1])],
        'accuracy_minus_cheapest': [float(value[k + 2]), float(low[k + 2]), float(high[k + 2])]}
    print(f"premodel vs {names[largest]}: {100 * value[k]:+.1f} points "
          f"[{100 * low[k]:+.1f}, {100 * high[k]:+.1f}], {value[k + 1]:.2f}x less time "
          f"[{low[k + 1]:.2f}, {high[k + 1]:.2f}] (Taylor et al.: +7.52 %, 1.8x)")
    print(f"premodel vs {names[cheapest]}: {100 * value[k + 2]:+.1f} points "
          f"[{100 * low[k + 2]:+.1f}, {100 * high[k + 2]:+.1f}]")
    oracle = table.correct.any(axis=1).mean()
    print(f'oracle selection (some candidate correct): {100 * oracle:.1f} %')
    report = {'split': args.split, 'frames': int(len(chosen)),
              'objects': int(len(np.unique(table.groups))), 'setting': premodel.config.label(),
              'costs_ms': [1e3 * c for c in costs], 'feature_time_ms': 1e3 *
              premodel.feature_time_s, 'rows': rows, 'comparisons': comparisons,
              'chosen_share': dict(zip(premodel.candidates, map(float, share))),
              'oracle_selection_accuracy': float(oracle), 'bootstrap_samples': args.bootstrap}
    out = Path(args.json) if args.json else paths.results_dir() / f'premodel_{args.split}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f'JSON: {out}')
    return 0


def parse_args(argv):
    """Command-line interface."""
    parser = argparse.ArgumentParser(prog='cbo_premodel', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', help='train the premodel on the calibration split (cached)')
    b.add_argument('--split', default='calibration')
    b.add_argument('--output', default=None, help=f'default: calibration/{PREMODEL_FILE}')
    b.add_argument('--calibration', default=None, help='CBO calibration bundle (offload '
                   'resolutions); default: the installed one')
    b.add_argument('--budget-ms', type=float, default=0.0,
                   help='time budget: candidates slower than this are never chosen (0: none)')
    b.add_argument('--threads', type=int, default=1,
                   help='onnxruntime threads when timing the candidates (0: default)')
    b.add_argument('--timing-frames', type=int, default=20)
    b.add_argument('--costs-ms', type=float, nargs='+', default=None,
                   help='mean time of each candidate (cost order) instead of timing them here '
                        '(e.g. measured on the robot)')
    b.add_argument('--folds', type=int, default=5)
    b.add_argument('--tolerance', type=float, default=0.01,
                   help='fastest setting within this accuracy of the best (default 0.01)')
    b.add_argument('--force', action='store_true')
    e = sub.add_parser('evaluate', help='score the premodel on the evaluation split')
    e.add_argument('--split', default='evaluation')
    e.add_argument('--premodel', default=None)
    e.add_argument('--bootstrap', type=int, default=1000)
    e.add_argument('--seed', type=int, default=0)
    e.add_argument('--json', default=None)
    for p in (b, e):
        p.add_argument('--manifest', default=None, help='benchmark manifest (default: built)')
        p.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point of ``cbo_premodel``."""
    args = parse_args(argv)
    try:
        return build(args) if args.command == 'build' else evaluate(args)
    except (PremodelError, CalibrationError, ManifestError, FileNotFoundError,
            ValueError) as error:
        print(f'cbo_premodel: {error}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
