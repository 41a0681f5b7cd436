"""Build the true-label benchmark: reviewed stamps -> split -> composed labelled videos.

Output (under ``$CBO_ARTIFACTS/benchmark``), one labelled video per clip:

- ``<split>/<clip_id>.avi``: MJPG in AVI, 640x480, 15 fps (OpenCV's own MJPEG writer, quality 90).
- ``<split>/<clip_id>.labels.csv``: ``frame,labels``; ``labels`` are space-separated ImageNet-1k
  class indices, any of which is correct; an empty cell is an unlabelled frame (the object is
  mostly out of view or occluded).
- ``<split>/<clip_id>.meta.json``: per-frame metadata (box, scale, visibility, degradations).
- ``manifest.json``: every clip of every split with its object, category and tier.
- ``demo/evaluation_demo.avi`` + ``.labels.csv``: the first clip of each of the first
  ``DEMO_OBJECTS`` evaluation objects back to back (the live demo's default video; held out).

The build is cached on (seed, counts, code + reviewed table, Debian package versions, media).
"""

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from cbo_ros.assets import paths
from cbo_ros.benchmark import composer, label_sets, sources, splits

MANIFEST_VERSION = 1
FPS = 15
JPEG_QUALITY = 90
VIDEO_BACKGROUNDS = ('bikes.mp4', 'vtest.avi', 'box.mp4', 'cup.mp4', 'bigbuckbunny.mp4',
                     'carphone_pristine.mp4')
# Share of clips on a video background (the rest on a still opencv-doc photo).
VIDEO_BACKGROUND_SHARE = 0.7
DEFAULTS = {'seed': 0, 'clips_per_object': 2, 'frames_per_clip': 32, 'min_size': 0.15,
            'max_size': 0.9}

DEMO_OBJECTS = 10
CONTENT_HASH_FILE = 'content_hash.txt'
DEMO_NAME = 'evaluation_demo'

_BACKGROUNDS = {}      # name -> frames, per process (workers load their own)


def benchmark_dir(artifacts=None):
    """Return the benchmark's directory under the artifacts."""
    return Path(artifacts or paths.artifacts_dir()) / 'benchmark'


def code_hash():
    """Hash of the benchmark code and the reviewed table (part of the cache key)."""
    digest = hashlib.sha256()
    folder = Path(__file__).parent
    for path in sorted(folder.glob('*.py')) + [label_sets.REVIEWED_TABLE]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _clip_seed(seed, clip_id):
    return int.from_bytes(hashlib.sha256(f'{seed}:{clip_id}'.encode()).digest()[:4], 'little')


def _background_names(media, photos):
    videos = [n for n in VIDEO_BACKGROUNDS if (Path(media) / n).is_file()]
    return videos, [p.name for p in photos]


def plan_clips(objects_by_split, wordnet, videos, photos, params):
    """Return {split: [ClipSpec + object info]} (deterministic in the seed)."""
    plans = {}
    for split, objects in objects_by_split.items():
        rows = []
        for obj in objects:
            for index in range(params['clips_per_object']):
                clip_id = f'{obj.object_id}-{index}'
                seed = _clip_seed(params['seed'], clip_id)
                rng = np.random.default_rng(seed)
                trajectory = composer.TRAJECTORIES[
                    (index + int(rng.integers(0, len(composer.TRAJECTORIES))))
                    % len(composer.TRAJECTORIES)]
                if videos and (not photos or rng.random() < VIDEO_BACKGROUND_SHARE):
                    background = videos[int(rng.integers(0, len(videos)))]
                else:
                    background = photos[int(rng.integers(0, len(photos)))]
                spec = composer.ClipSpec(clip_id, obj.object_id, obj.stamp, background,
                                         trajectory, seed, params['frames_per_clip'],
                                         params['min_size'], params['max_size'])
                rows.append((spec, obj, splits.category_of(obj, wordnet)))
        plans[split] = rows
    return plans


def load_backgrounds(videos, photo_paths, media):
    """Load every background once (video frames and still photos)."""
    backgrounds = {}
    for name in videos:
        backgrounds[name] = composer.load_video_background(Path(media) / name)
    for path in photo_paths:
        backgrounds[path.name] = composer.load_photo_background(path)
    return backgrounds


def write_clip(folder, spec, frames, metadata, degradations, obj, category):
    """Write one labelled video (avi + labels.csv + meta.json); return its manifest entry."""
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f'{spec.clip_id}.avi'
    writer = cv2.VideoWriter(str(video), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*'MJPG'),
                             FPS, (composer.FRAME_WIDTH, composer.FRAME_HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f'cannot write {video} (OpenCV MJPEG writer)')
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY)
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    label_text = ' '.join(str(c) for c in obj.labels.classes)
    lines = ['frame,labels'] + [f"{m['frame']},{label_text if m['labelled'] else ''}"
                                for m in metadata]
    (folder / f'{spec.clip_id}.labels.csv').write_text('\n'.join(lines) + '\n')
    meta = {
        'clip': spec.clip_id, 'object': obj.object_id, 'stamp': obj.stamp,
        'caption': obj.caption, 'synsets': obj.labels.synsets, 'tier': obj.labels.tier,
        'label_wnids': obj.labels.wnids, 'labels': obj.labels.classes, 'category': category,
        'trajectory': spec.trajectory, 'background': spec.background, 'seed': int(spec.seed),
        'fps': FPS, 'size': [composer.FRAME_WIDTH, composer.FRAME_HEIGHT],
        'degradations': degradations, 'frames': metadata,
    }
    (folder / f'{spec.clip_id}.meta.json').write_text(json.dumps(meta, indent=1) + '\n')
    return {
        'clip': spec.clip_id, 'video': f'{folder.name}/{video.name}',
        'labels': f'{folder.name}/{spec.clip_id}.labels.csv',
        'meta': f'{folder.name}/{spec.clip_id}.meta.json', 'object': obj.object_id,
        'category': category, 'tier': obj.labels.tier, 'frames': len(frames),
        'labelled_frames': sum(1 for m in metadata if m['labelled']),
        'label_set_size': len(obj.labels.classes),
    }


def _init_worker(videos, photo_paths, media):
    """Worker start: single-threaded OpenCV and the backgrounds in this process."""
    cv2.setNumThreads(1)
    _BACKGROUNDS.clear()
    _BACKGROUNDS.update(load_backgrounds(videos, photo_paths, media))


def _render(task):
    """Compose and write one clip (backgrounds from this process's cache)."""
    folder, spec, obj, category, stamp_path = task
    stamp_rgb, stamp_alpha = composer.load_stamp(stamp_path)
    started = time.perf_counter()
    frames, metadata, degradations = composer.compose_clip(spec, stamp_rgb, stamp_alpha,
                                                           _BACKGROUNDS[spec.background])
    compose_s = time.perf_counter() - started
    entry = write_clip(Path(folder), spec, frames, metadata, degradations, obj, category)
    return entry, compose_s


def cache_key(params, sources_info, media):
    """Return the build's cache key (parameters, code, Debian sources, background media)."""
    media_state = sorted((n, (Path(media) / n).stat().st_size) for n in VIDEO_BACKGROUNDS
                         if (Path(media) / n).is_file())
    text = json.dumps({'params': params, 'code': code_hash(), 'sources': sources_info['digest'],
                       'media': media_state, 'version': MANIFEST_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_manifest(root, key):
    """Return the manifest when the built benchmark matches ``key`` and is complete."""
    manifest_file = root / 'manifest.json'
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
    except ValueError:
        return None
    if manifest.get('cache_key') != key:
        return None
    for entries in manifest.get('splits', {}).values():
        for entry in entries:
            if not all((root / entry[k]).is_file() for k in ('video', 'labels', 'meta')):
                return None
    return manifest


def build(artifacts=None, force=False, workers=None, log=print, **overrides):
    """Build (or reuse) the benchmark; return its manifest dict."""
    params = dict(DEFAULTS)
    unknown = set(overrides) - set(params)
    if unknown:
        raise ValueError(f'unknown benchmark parameters: {", ".join(sorted(unknown))}')
    params.update({k: v for k, v in overrides.items() if v is not None})
    if params['clips_per_object'] < 1 or params['frames_per_clip'] < 1:
        raise ValueError('clips_per_object and frames_per_clip must be at least 1')
    if not 0 < params['min_size'] <= params['max_size'] <= 1.5:
        raise ValueError('need 0 < min_size <= max_size <= 1.5')
    root = benchmark_dir(artifacts)
    media = Path(artifacts or paths.artifacts_dir()) / 'media'
    sources_info = sources.fetch(artifacts, log=log)
    key = cache_key(params, sources_info, media)
    if not force:
        manifest = cached_manifest(root, key)
        if manifest is not None:
            log(f'benchmark up to date ({root}, key {key})')
            if not demo_clip(artifacts).is_file():
                write_demo_clip(root, manifest)
            if not (root / CONTENT_HASH_FILE).is_file():
                write_content_hash(root)
            return manifest
    started = time.perf_counter()
    wordnet = label_sets.WordNet(sources.wordnet_dir(artifacts))
    mapper = label_sets.LabelMapper(wordnet)
    objects = label_sets.reviewed_objects(mapper, sources.list_stamps(artifacts))
    by_split = splits.split_objects(objects, wordnet)
    photo_paths = sources.photo_paths(artifacts)
    videos, photos = _background_names(media, photo_paths)
    if not videos and not photos:
        raise RuntimeError(f'no backgrounds: neither media videos in {media} nor photos')
    plans = plan_clips(by_split, wordnet, videos, photos, params)
    log(f'composing {sum(len(p) for p in plans.values())} clips of '
        f"{params['frames_per_clip']} frames from {len(objects)} objects")
    staging = root / '.building'
    shutil.rmtree(staging, ignore_errors=True)
    stamps_root = sources.stamps_dir(artifacts)
    tasks = [(str(staging / split), spec, obj, category, str(stamps_root / obj.stamp))
             for split, rows in plans.items() for spec, obj, category in rows]
    workers = max(1, int(workers or min(2, os.cpu_count() or 1)))
    background_args = (videos, photo_paths, media)
    if workers > 1:
        # spawn, not fork: a forked OpenCV thread pool can deadlock the workers.
        with multiprocessing.get_context('spawn').Pool(workers, _init_worker,
                                                       background_args) as pool:
            results = pool.map(_render, tasks, chunksize=4)
    else:
        threads = cv2.getNumThreads()
        _init_worker(*background_args)
        try:
            results = [_render(task) for task in tasks]
        finally:
            cv2.setNumThreads(threads)
    _BACKGROUNDS.clear()
    entries = iter(results)
    manifest_splits = {split: [next(entries)[0] for _ in rows] for split, rows in plans.items()}
    frames = sum(e['frames'] for rows in manifest_splits.values() for e in rows)
    elapsed = time.perf_counter() - started
    compose_ms = 1000 * sum(r[1] for r in results) / max(1, frames)
    for split in splits.SPLITS:
        (staging / split).mkdir(parents=True, exist_ok=True)
        _replace_changed(staging / split, root / split)
    shutil.rmtree(staging, ignore_errors=True)
    manifest = {
        'version': MANIFEST_VERSION, 'seed': params['seed'], 'code_hash': code_hash(),
        'cache_key': key, 'params': params, 'sources': sources_info['packages'],
        'heldout_category': {'name': splits.HELDOUT_NAME, 'synset': splits.HELDOUT_SYNSET},
        'objects': {split: [o.object_id for o in objs] for split, objs in by_split.items()},
        'timing': {'seconds': round(elapsed, 1), 'workers': workers, 'frames': frames,
                   'compose_ms_per_frame': round(compose_ms, 2)},
        'splits': manifest_splits,
    }
    write_demo_clip(root, manifest)
    (root / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    write_content_hash(root)
    log(f'benchmark written to {root}: {frames} frames in {elapsed:.0f} s '
        f'({compose_ms:.1f} ms/frame composing, {workers} workers)')
    return manifest


def _replace_changed(new, old):
    """Move ``new``'s files into ``old``, keeping byte-identical ones (and their times).

    A rebuild that produces the same clips then leaves every file untouched, so the model
    outputs cached for them (keyed on size and modification time) stay valid.
    """
    old.mkdir(parents=True, exist_ok=True)
    fresh = {p.name: p for p in new.iterdir() if p.is_file()}
    for path in old.iterdir():
        if path.is_file() and path.name not in fresh:
            path.unlink()
    for name, path in fresh.items():
        target = old / name
        if not (target.is_file() and target.stat().st_size == path.stat().st_size
                and target.read_bytes() == path.read_bytes()):
            path.replace(target)


def write_content_hash(root):
    """Hash what the benchmark holds (videos, labels, splits) into ``content_hash.txt``.

    Set-up re-fits the calibration when this changes, not when only the code that produced
    byte-identical clips did.
    """
    digest = hashlib.sha256()
    for split in splits.SPLITS:
        for path in sorted((root / split).glob('*')):
            if path.suffix in ('.avi', '.csv'):
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    (root / CONTENT_HASH_FILE).write_text(digest.hexdigest() + '\n')


def demo_clip(artifacts=None):
    """Path of the demo's labelled video (evaluation objects back to back)."""
    return benchmark_dir(artifacts) / 'demo' / f'{DEMO_NAME}.avi'


def write_demo_clip(root, manifest, objects=DEMO_OBJECTS):
    """Concatenate one evaluation clip per object into the demo video and its labels file.

    Frames are decoded and re-encoded (MJPEG quality 90: a second JPEG generation).
    """
    seen, clips = set(), []
    for entry in manifest['splits']['evaluation']:
        if entry['object'] not in seen and len(clips) < objects:
            seen.add(entry['object'])
            clips.append(entry)
    folder = root / 'demo'
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f'{DEMO_NAME}.avi'
    writer = cv2.VideoWriter(str(video), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*'MJPG'),
                             FPS, (composer.FRAME_WIDTH, composer.FRAME_HEIGHT))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY)
    rows = ['frame,labels']
    for entry in clips:
        labels = (root / entry['labels']).read_text().splitlines()[1:]
        capture = cv2.VideoCapture(str(root / entry['video']))
        for line in labels:
            ok, bgr = capture.read()
            if not ok:
                raise RuntimeError(f"{entry['video']}: fewer frames than labels")
            writer.write(bgr)
            rows.append(f'{len(rows) - 1},{line.split(",", 1)[1]}')
        capture.release()
    writer.release()
    (folder / f'{DEMO_NAME}.labels.csv').write_text('\n'.join(rows) + '\n')
    (folder / f'{DEMO_NAME}.json').write_text(json.dumps(
        {'clips': [e['clip'] for e in clips], 'objects': sorted(seen), 'fps': FPS,
         'frames': len(rows) - 1}, indent=1) + '\n')
    return video


def read_manifest(artifacts=None):
    """Return the built benchmark's manifest (raises FileNotFoundError with the fix)."""
    manifest_file = benchmark_dir(artifacts) / 'manifest.json'
    if not manifest_file.is_file():
        raise FileNotFoundError(f'no benchmark at {manifest_file.parent} '
                                '(run: cbo_benchmark build)')
    return json.loads(manifest_file.read_text())
