"""True-label benchmark: reviewed label sets, WordNet closure, generator determinism, splits."""

import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from cbo_ros.benchmark import build, composer, label_sets, sources, splits

SOURCES_READY = sources.available()
needs_sources = pytest.mark.skipif(
    not SOURCES_READY, reason='benchmark sources (Debian tuxpaint-stamps-default, wordnet-base, '
    'opencv-doc) not fetched: run `cbo_benchmark build` or scripts/setup.sh')

DOG = 'n02084071'
SPACE_BAR, CHAIN_SAW, GRANNY_SMITH = 810, 491, 948


@pytest.fixture(scope='module')
def mapper():
    return label_sets.LabelMapper(label_sets.WordNet(sources.wordnet_dir()))


@pytest.fixture(scope='module')
def reviewed(mapper):
    return {o.stamp: o for o in label_sets.reviewed_objects(mapper, sources.list_stamps())}


def test_reviewed_table_has_a_decision_and_reason_per_row():
    rows = label_sets.read_reviewed_table()
    assert len(rows) == len({r['stamp'] for r in rows}) >= 400
    for row in rows:
        assert row['reason'].strip(), row['stamp']
        parsed = label_sets.parse_decision(row['decision'])
        assert (parsed is None) == (row['name'] == '')
    usable = [r for r in rows if r['decision'] != 'exclude']
    assert 140 <= len(usable) <= 220


def test_decision_syntax_errors_are_explained():
    assert label_sets.parse_decision('exclude') is None
    assert label_sets.parse_decision('~n01816887') == (['n01816887'], True)
    assert label_sets.parse_decision('n01514668 n01514859') == (['n01514668', 'n01514859'], False)
    with pytest.raises(ValueError, match='exclude'):
        label_sets.parse_decision('dog')


@needs_sources
def test_dog_closure_is_the_118_breeds(mapper):
    assert mapper.classes_below(DOG) == list(range(151, 269))
    labels = mapper.label_set(DOG)
    assert labels.tier == 'strict' and len(labels.classes) == 118


@needs_sources
def test_lenient_fallback_climbs_to_the_nearest_imagenet_hypernym(mapper):
    guinea_fowl = mapper.label_set('n01809106')
    assert guinea_fowl.tier == 'lenient'
    assert 84 in guinea_fowl.classes           # peacock, a fellow gallinaceous bird
    assert mapper.label_set('n02012849').classes == [134]   # crane (bird), not 517 (machine)


@needs_sources
def test_automatic_rule_falls_into_the_sense_traps(mapper):
    """Why the reviewed table exists: the caption rule alone picks wrong senses."""
    assert SPACE_BAR in mapper.automatic('A key.', 'key')[1].classes
    assert CHAIN_SAW in mapper.automatic('A saw.', 'saw')[1].classes
    assert GRANNY_SMITH in mapper.automatic('', 'granny_smith')[1].classes
    assert mapper.automatic('A badger.', 'badger')[1].classes == [362]


@needs_sources
def test_reviewed_table_fixes_the_sense_traps(reviewed):
    assert 'household/key.png' not in reviewed                 # a door key: no class
    assert 'household/tools/saw.png' not in reviewed           # a hand saw: no class
    assert 'people/toys/grannysmith.png' not in reviewed       # a rag doll: no class
    for obj in reviewed.values():
        if obj.stamp.endswith('/key.png'):
            assert SPACE_BAR not in obj.labels.classes
        if obj.stamp.endswith('saw.png'):
            assert CHAIN_SAW not in obj.labels.classes
        if 'granny' in obj.stamp and 'apple' not in obj.stamp:
            assert GRANNY_SMITH not in obj.labels.classes
    assert reviewed['food/fruit/apple_granny_smith.png'].labels.classes == [GRANNY_SMITH]
    assert reviewed['animals/birds/hen.png'].labels.classes == [8]
    assert reviewed['animals/birds/crowned_crane.png'].labels.classes == [134]
    assert reviewed['animals/mammals/bears/toys/edward_bear.png'].labels.classes == [850]
    assert reviewed['military/vehicles/f22_raptor.png'].labels.classes == [895]
    beetle = reviewed['vehicles/auto/beetle.png'].labels
    assert beetle.tier == 'lenient' and 300 not in beetle.classes and 436 in beetle.classes
    assert reviewed['animals/mammals/dogs/dog.png'].labels.classes == list(range(151, 269))


@needs_sources
def test_every_fetched_stamp_is_in_the_reviewed_table(reviewed):
    listed = {row['stamp'] for row in label_sets.read_reviewed_table()}
    assert {stamp for stamp, _ in sources.list_stamps()} == listed


@needs_sources
def test_splits_are_object_disjoint_with_a_heldout_category(mapper, reviewed):
    result = splits.split_objects(list(reviewed.values()), mapper.wordnet)
    ids = {name: {o.object_id for o in objs} for name, objs in result.items()}
    assert not ids['calibration'] & ids['evaluation']
    assert not ids['heldout_category'] & (ids['calibration'] | ids['evaluation'])
    assert sum(len(v) for v in ids.values()) == len(reviewed)
    assert len(ids['calibration']) >= 60 and len(ids['evaluation']) >= 60
    for obj in result['heldout_category']:
        assert splits.category_of(obj, mapper.wordnet) == splits.HELDOUT_NAME
    held_classes = {c for o in result['heldout_category'] for c in o.labels.classes}
    assert 889 in held_classes      # violin
    # Mirrored copies of one photo stay in one split.
    where = {o.stamp: name for name, objs in result.items() for o in objs}
    for stamp, name in where.items():
        twin = stamp.replace('_mirror', '')
        if twin != stamp and twin in where:
            assert where[twin] == name


def _demo_clip(seed, frames=6, trajectory='approach'):
    stamp = sources.stamps_dir() / 'animals/birds/hen.png'
    rgb, alpha = composer.load_stamp(stamp)
    background = composer.load_photo_background(sources.photo_paths()[0])
    spec = composer.ClipSpec('hen-test', 'birds-hen', 'animals/birds/hen.png',
                             sources.photo_paths()[0].name, trajectory, seed, frames)
    return spec, composer.compose_clip(spec, rgb, alpha, background)


@needs_sources
@pytest.mark.parametrize('trajectory', composer.TRAJECTORIES)
def test_generator_is_deterministic(trajectory):
    _, (first, meta_first, degr_first) = _demo_clip(7, trajectory=trajectory)
    _, (again, meta_again, degr_again) = _demo_clip(7, trajectory=trajectory)
    _, (other, _, _) = _demo_clip(8, trajectory=trajectory)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
    assert meta_first == meta_again and degr_first == degr_again
    assert any(a.tobytes() != b.tobytes() for a, b in zip(first, other))
    assert all(f.shape == (480, 640, 3) and f.dtype == np.uint8 for f in first)


@needs_sources
def test_object_sizes_span_the_requested_range():
    extents = []
    for seed in range(12):
        _, (_, meta, _) = _demo_clip(seed, frames=8)
        extents += [m['extent'] for m in meta]
    assert min(extents) >= 0.15 - 1e-6 and max(extents) <= 0.9 + 1e-6
    assert min(extents) < 0.3 and max(extents) > 0.6


@needs_sources
def test_written_clip_matches_the_labelled_video_contract(tmp_path, reviewed):
    spec, (frames, meta, degradations) = _demo_clip(3, frames=10, trajectory='pan')
    obj = reviewed['animals/birds/hen.png']
    entry = build.write_clip(tmp_path / 'evaluation', spec, frames, meta, degradations, obj,
                             'animals')
    with open(tmp_path / entry['labels'], newline='') as handle:
        lines = handle.read().splitlines()
    assert lines[0] == 'frame,labels'
    rows = list(csv.reader(lines[1:]))
    assert [int(r[0]) for r in rows] == list(range(len(frames)))
    for row, frame_meta in zip(rows, meta):
        assert row[1] == ('8' if frame_meta['labelled'] else '')
    assert any(r[1] == '' for r in rows)        # the pan starts out of view: unlabelled
    capture = cv2.VideoCapture(str(tmp_path / entry['video']))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(15.0)
    decoded = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        decoded.append(bgr)
    assert len(decoded) == len(frames)
    assert decoded[0].shape == (480, 640, 3)
    error = np.abs(cv2.cvtColor(decoded[4], cv2.COLOR_BGR2RGB).astype(int) - frames[4]).mean()
    assert error < 6.0                               # MJPG quality 90
    info = json.loads((tmp_path / entry['meta']).read_text())
    assert info['labels'] == [8] and info['tier'] == obj.labels.tier
    assert len(info['frames']) == len(frames) and 'box' in info['frames'][0]
    # The same clip written again is byte-identical.
    again = build.write_clip(tmp_path / 'again', spec, frames, meta, degradations, obj,
                             'animals')
    assert (tmp_path / again['video']).read_bytes() == (tmp_path / entry['video']).read_bytes()


@needs_sources
def test_small_build_is_complete_and_cached(tmp_path):
    artifacts = tmp_path / 'artifacts'
    (artifacts / 'benchmark').mkdir(parents=True)
    os.symlink(sources.sources_dir(), artifacts / 'benchmark' / 'sources')
    media = sources.sources_dir().parents[1] / 'media'
    if media.is_dir():
        os.symlink(media, artifacts / 'media')
    messages = []
    manifest = build.build(artifacts, workers=1, log=messages.append, clips_per_object=1,
                           frames_per_clip=2)
    root = artifacts / 'benchmark'
    assert set(manifest['splits']) == set(splits.SPLITS)
    objects = {s: {e['object'] for e in entries} for s, entries in manifest['splits'].items()}
    assert not objects['calibration'] & objects['evaluation']
    for entries in manifest['splits'].values():
        for entry in entries:
            assert (root / entry['video']).is_file() and (root / entry['meta']).is_file()
            assert (root / entry['labels']).read_text().startswith('frame,labels\n')
    first_video = root / manifest['splits']['evaluation'][0]['video']
    stamp = first_video.stat().st_mtime_ns
    again = build.build(artifacts, workers=1, log=messages.append, clips_per_object=1,
                        frames_per_clip=2)
    assert again['cache_key'] == manifest['cache_key']
    assert first_video.stat().st_mtime_ns == stamp
    assert any('up to date' in m for m in messages)
    shutil.rmtree(root / 'evaluation')
    assert build.cached_manifest(root, manifest['cache_key']) is None


def test_rebuild_keeps_identical_clips_and_their_times(tmp_path):
    from cbo_ros.benchmark.build import _replace_changed
    old, new = tmp_path / 'old', tmp_path / 'new'
    old.mkdir()
    new.mkdir()
    (old / 'same.avi').write_bytes(b'frames')
    (old / 'changed.avi').write_bytes(b'before')
    (old / 'stale.avi').write_bytes(b'gone')
    os.utime(old / 'same.avi', ns=(1, 1))
    (new / 'same.avi').write_bytes(b'frames')
    (new / 'changed.avi').write_bytes(b'after!')
    (new / 'added.csv').write_text('frame,labels\n')
    _replace_changed(new, old)
    assert sorted(p.name for p in old.iterdir()) == ['added.csv', 'changed.avi', 'same.avi']
    assert (old / 'same.avi').stat().st_mtime_ns == 1      # untouched: cached outputs stay valid
    assert (old / 'changed.avi').read_bytes() == b'after!'


def test_calibrate_defaults_to_the_benchmark_when_built(tmp_path):
    from cbo_ros.tools.calibrate import parse_args
    manifest = tmp_path / 'manifest.json'
    args = parse_args(['--manifest', str(manifest)])
    assert args.benchmark is None and args.views == ['zoom']      # no benchmark: the videos
    manifest.write_text('{"splits": {}}')
    args = parse_args(['--manifest', str(manifest)])
    assert args.benchmark == 'calibration' and args.views == []   # labels hold for whole frames
    assert parse_args(['--manifest', str(manifest), '--media', 'bikes']).benchmark is None
