"""cbo_benchmark: build and inspect the true-label benchmark (labelled robot-camera videos).

Usage: ``cbo_benchmark build [--force] [--seed N] [--clips-per-object N] [--frames-per-clip N]
[--min-size F] [--max-size F]``
and ``cbo_benchmark show [--json]``.
"""

import argparse
import json
import sys
from collections import Counter

from cbo_ros.benchmark import build as benchmark_build
from cbo_ros.benchmark.sources import SourcesError


def _show(manifest, as_json):
    summary = {'root': str(benchmark_build.benchmark_dir()), 'seed': manifest['seed'],
               'code_hash': manifest['code_hash'], 'timing': manifest.get('timing'),
               'heldout_category': manifest.get('heldout_category'), 'splits': {}}
    for split, entries in manifest['splits'].items():
        objects = {e['object'] for e in entries}
        tiers = Counter(e['tier'] for e in entries)
        sizes = sorted(e['label_set_size'] for e in entries)
        summary['splits'][split] = {
            'clips': len(entries), 'objects': len(objects),
            'frames': sum(e['frames'] for e in entries),
            'labelled_frames': sum(e['labelled_frames'] for e in entries),
            'tiers_clips': dict(tiers),
            'label_set_size': {'min': sizes[0], 'median': sizes[len(sizes) // 2],
                               'max': sizes[-1]} if sizes else {},
            'categories': dict(Counter(e['category'] for e in entries)),
        }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"benchmark {summary['root']}  seed {summary['seed']}  code {summary['code_hash']}")
    held = summary['heldout_category'] or {}
    print(f"held-out category: {held.get('name')} ({held.get('synset')})")
    print(f"{'split':<18}{'objects':>8}{'clips':>7}{'frames':>8}{'labelled':>9}"
          f"{'strict':>8}{'lenient':>8}  label-set size min/median/max")
    for split, row in summary['splits'].items():
        size = row['label_set_size']
        print(f"{split:<18}{row['objects']:>8}{row['clips']:>7}{row['frames']:>8}"
              f"{row['labelled_frames']:>9}{row['tiers_clips'].get('strict', 0):>8}"
              f"{row['tiers_clips'].get('lenient', 0):>8}  "
              f"{size.get('min')}/{size.get('median')}/{size.get('max')}")
    if summary['timing']:
        timing = summary['timing']
        print(f"built in {timing['seconds']} s with {timing['workers']} workers "
              f"({timing['compose_ms_per_frame']} ms/frame composing)")


def main(argv=None):
    """Run cbo_benchmark (build or show); return the exit code."""
    parser = argparse.ArgumentParser(prog='cbo_benchmark', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    build = commands.add_parser('build', help='generate the benchmark (cached)')
    build.add_argument('--force', action='store_true', help='rebuild even when cached')
    build.add_argument('--seed', type=int, default=None)
    build.add_argument('--clips-per-object', type=int, default=None)
    build.add_argument('--frames-per-clip', type=int, default=None)
    build.add_argument('--min-size', type=float, default=None,
                       help='smallest object extent, share of the frame (default 0.15)')
    build.add_argument('--max-size', type=float, default=None,
                       help='largest object extent, share of the frame (default 0.9)')
    build.add_argument('--workers', type=int, default=None, help='processes (default: 2)')
    show = commands.add_parser('show', help='counts per split, label-set sizes, tiers')
    show.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    try:
        if args.command == 'build':
            manifest = benchmark_build.build(
                force=args.force, workers=args.workers, seed=args.seed,
                clips_per_object=args.clips_per_object, frames_per_clip=args.frames_per_clip,
                min_size=args.min_size, max_size=args.max_size,
                log=lambda text: print(f'[benchmark] {text}', flush=True))
            _show(manifest, False)
        else:
            _show(benchmark_build.read_manifest(), args.json)
    except (SourcesError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f'cbo_benchmark: error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
