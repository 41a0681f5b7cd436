"""True labels: label-set CSV parsing and its errors, hierarchical correctness, unlabelled frames,
and cbo_eval / cbo_calibrate end to end on small labelled clips of foolbox's ImageNet samples."""

import json
import shutil

import numpy as np
import pytest
from labelled_clips import foolbox_samples, make_labelled_clip, make_tiny_benchmark

from cbo_ros.assets import paths
from cbo_ros.core.calibration import (CalibrationBundle, TemperatureScaling, labelled_rows,
                                      top1_correct)
from cbo_ros.evaluation.outputs_cache import VideoOutputs, load_outputs
from cbo_ros.evaluation.pooling import pooled_strategies
from cbo_ros.evaluation.report import summarise
from cbo_ros.evaluation.simulator import Replay
from cbo_ros.perception.labels import (FrameLabels, LabelsError, read_frame_labels,
                                       read_image_labels, sibling_labels_file)
from cbo_ros.perception.media import open_source, read_frames
from cbo_ros.tools import calibrate, evaluate

RESOLUTIONS = [96, 224]


def _csv(tmp_path, text, name='labels.csv'):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- parsing -------------------------------------------------------------------------------

def test_frame_labels_parse_sets_and_unlabelled_frames(tmp_path):
    labels = read_frame_labels(_csv(tmp_path, 'frame,labels\n0,243\n1,151 152 153\n2,\n'))
    assert labels.sets == {0: {243}, 1: {151, 152, 153}, 2: frozenset()}
    assert labels.labelled_count == 2
    matrix = labels.matrix([1, 2, 0])
    assert matrix.shape == (3, 1000) and matrix[0, [151, 152, 153]].all()
    assert not matrix[1].any() and matrix[2].sum() == 1
    labels.check_frames(3)


@pytest.mark.parametrize('text, reason', [
    ('frame,label\n0,1\n', r'labels.csv:1: wrong header'),
    ('0,1\n1,2\n', r'labels.csv:1: wrong header'),
    ('', 'wrong header'),
    ('frame,labels\n0,1000\n', r'labels.csv:2: label 1000 is outside'),
    ('frame,labels\n0,-3\n', r'labels.csv:2: label -3 is outside'),
    ('frame,labels\n0,1\n1,dog\n', r'labels.csv:3: label .dog. is not an integer'),
    ('frame,labels\n0,1.5\n', r'labels.csv:2: label .1.5. is not an integer'),
    ('frame,labels\n0,1\n0,2\n', r'labels.csv:3: duplicate frame 0 \(first on line 2\)'),
    ('frame,labels\nx,1\n', r'labels.csv:2: frame .x. is not a frame index'),
    ('frame,labels\n0,1,2\n', r'labels.csv:2: 3 columns'),
    ('frame,labels\n', 'no rows'),
])
def test_bad_labels_files_are_clear_errors(tmp_path, text, reason):
    with pytest.raises(LabelsError, match=reason):
        read_frame_labels(_csv(tmp_path, text))


def test_missing_frames_and_frames_beyond_the_video_are_errors(tmp_path):
    labels = read_frame_labels(_csv(tmp_path, 'frame,labels\n0,1\n1,\n3,4\n'))
    with pytest.raises(LabelsError, match=r'missing frames: 1 of the video.s 4 frames .*frame 2'):
        labels.check_frames(4)
    with pytest.raises(LabelsError, match=r'labels.csv:4: frame 3 is beyond the video, which '
                                          r'has 3 frames'):
        labels.check_frames(3)


def test_image_folder_formats_old_and_new(tmp_path):
    old = read_image_labels(_csv(tmp_path, 'file,class_id\na.jpg,243\nb.jpg,559\n'))
    assert old.sets == {'a.jpg': {243}, 'b.jpg': {559}}
    new = read_image_labels(_csv(tmp_path, 'frame,labels\na.jpg,243 244\nb.jpg,\n', 'n.csv'))
    assert new.sets == {'a.jpg': {243, 244}, 'b.jpg': frozenset()}
    with pytest.raises(LabelsError, match='one class id per image'):
        read_image_labels(_csv(tmp_path, 'a.jpg,243 244\n', 'o.csv'))
    with pytest.raises(LabelsError, match="'c.jpg' is not an image of the folder"):
        FrameLabels('x', {'c.jpg': frozenset({1})}, {'c.jpg': 2}).check_names(['a.jpg'])


def test_foolbox_sanity_set_keeps_its_labels():
    frames, source = read_frames(paths.media_dir() / 'imagenet_samples')
    assert source.has_labels and len(frames) == 20
    assert [f.label for f in frames] == [c for _, c in foolbox_samples()]
    assert all(f.label_set == {f.label} for f in frames)


# --- correctness with label sets -----------------------------------------------------------

def test_hierarchical_correctness_counts_any_class_of_the_set():
    logits = np.full((4, 1000), -5.0)
    logits[np.arange(4), [151, 243, 7, 9]] = 5.0
    sets = np.zeros((4, 1000), bool)
    sets[0, [151, 152, 153]] = True       # a dog-breed style set containing the prediction
    sets[1, [242, 244]] = True            # the prediction is not in the set
    sets[2, 7] = True
    assert top1_correct(logits, sets).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert labelled_rows(sets).tolist() == [True, True, True, False]
    assert labelled_rows(np.array([3, -1])).tolist() == [True, False]


def test_temperature_fit_with_label_sets_equals_single_labels_when_sets_have_one_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 1000)) * 3
    labels = rng.integers(0, 1000, 300)
    sets = np.zeros((300, 1000), bool)
    sets[np.arange(300), labels] = True
    single = TemperatureScaling().fit(logits, labels).temperature
    assert TemperatureScaling().fit(logits, sets).temperature == pytest.approx(single, rel=1e-4)


def test_unlabelled_frames_are_left_out_and_counted():
    n = 6
    correct = np.array([1, 0, 1, 1, 0, 0], float)
    result = Replay('x', correct, np.zeros(n, int), np.zeros(n, bool), np.zeros(n, bool),
                    np.full(n, 0.02), np.zeros(n, int), np.zeros(n), np.zeros(n))
    labelled = np.array([True, True, True, True, False, False])
    summary = summarise(result, [224], labelled)
    assert summary['accuracy'] == pytest.approx(0.75)
    assert summary['scored_frames'] == 4 and summary['unlabelled_frames'] == 2
    outputs = VideoOutputs('v', 'v', 10.0, np.arange(3) / 10, np.array([5, -1, 7]), 'true',
                           np.array([5, 5, 7]), ['0', '1', '2'],
                           {('int8', paths.ROBOT_INPUT_SIZE): np.eye(1000)[[5, 5, 8]]})
    assert outputs.unlabelled_count == 1
    assert outputs.local_correct().tolist() == [1.0, 0.0, 0.0]
    assert len(outputs.labelled_only()) == 2


def test_pooled_intervals_resample_objects():
    def report(correct, scored):
        return {'frames': scored, 'strategies': {
            name: {'correct': c, 'scored_frames': scored, 'frames': scored, 'offloads': 0,
                   'deadline_misses': 0, 'bytes_sent': 0}
            for name, c in zip(('local_only', 'cbo', 'oracle'), correct)}}
    reports = [report((2, 5, 8), 10), report((4, 6, 9), 10), report((1, 3, 6), 10),
               report((5, 7, 10), 10)]
    pooled, comparisons = pooled_strategies(reports, ['a', 'a', 'b', 'c'], bootstrap=300)
    assert pooled['cbo']['accuracy'] == pytest.approx(21 / 40)
    low, high = pooled['cbo']['accuracy_ci']
    assert low < 21 / 40 < high
    # With every source in one object there is no spread to resample.
    single, _ = pooled_strategies(reports, ['a'] * 4, bootstrap=300)
    assert single['cbo']['accuracy_ci'] is None
    diff = comparisons['cbo_minus_best_baseline']
    assert diff['best_baseline'] == 'local_only'
    assert diff['difference'] == pytest.approx((21 - 12) / 40)


# --- sources with labels -------------------------------------------------------------------

@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp('labelled_clip')
    # Sample 1's set adds two classes (hierarchical); 4 frames are unlabelled.
    video, labels, sets = make_labelled_clip(folder, extra={1: (560, 561), 5: (854,)})
    truth = folder / 'truth.csv'
    shutil.copy(labels, truth)
    with pytest.warns(UserWarning, match="UNCALIBRATED"):
        bundle = CalibrationBundle.identity(RESOLUTIONS)
    calibration = folder / 'identity.json'
    bundle.save(calibration)
    return folder, video, labels, truth, sets, calibration


def test_video_with_sibling_labels(clip):
    folder, video, labels, _, sets, _ = clip
    assert sibling_labels_file(video) == labels
    source = open_source(video)
    assert source.has_labels and source.labels_file == str(labels)
    frames = list(source)
    assert len(frames) == len(sets) == 60
    assert [f.label_set for f in frames] == sets


def test_bad_sibling_is_an_error_not_reference_labels(tmp_path):
    video, labels, _ = make_labelled_clip(tmp_path, samples=foolbox_samples()[:2],
                                          unlabelled=())
    labels.write_text('frame,labels\n0,1\n1,2\n')          # the clip has 6 frames
    with pytest.raises(LabelsError, match='missing frames: 4 of the video.s 6 frames'):
        open_source(video)


def _eval_args(root, calibration, *extra):
    return ['--calibration', str(calibration), '--cache-dir', str(root / 'cache'),
            '--no-progress', '--no-plots', '--bandwidth', '1e6', *extra]


def test_cbo_eval_scores_true_labels(clip, capsys):
    folder, video, _, truth, sets, calibration = clip
    out = folder / 'report.json'
    code = evaluate.main([str(video), '--labels', str(truth), '--json', str(out),
                          *_eval_args(folder, calibration)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f'labels: true, from {truth}' in printed.out and '4 unlabelled left out' in printed.out
    assert 'acc%' in printed.out and 'agree%' not in printed.out
    report = json.loads(out.read_text())
    assert report['labels'] == 'true' and report['score'] == 'accuracy'
    assert report['frames'] == 60 and report['unlabelled_frames'] == 4
    # The same accuracy computed directly from the cached model outputs and the label sets.
    outputs = load_outputs(str(video), robot_tags=('int8',), offload_resolutions=RESOLUTIONS,
                           labels_file=str(truth), cache_dir=folder / 'cache', progress=False)
    keep = np.array([bool(s) for s in sets])
    local = outputs.robot_logits[('int8', paths.ROBOT_INPUT_SIZE)].argmax(axis=1)
    expected = np.mean([local[k] in sets[k] for k in np.flatnonzero(keep)])
    local_only = report['strategies']['local_only']
    assert local_only['accuracy'] == pytest.approx(expected)
    assert local_only['scored_frames'] == 56
    assert outputs.label_source == 'true' and outputs.unlabelled_count == 4
    oracle = report['strategies']['oracle']['accuracy']
    assert all(v['accuracy'] <= oracle + 1e-9 for v in report['strategies'].values())


def test_cbo_eval_picks_up_the_sibling_and_says_so(clip, capsys):
    folder, video, labels, _, _, calibration = clip
    out = folder / 'sibling.json'
    assert evaluate.main([str(video), '--json', str(out),
                          *_eval_args(folder, calibration)]) == 0
    assert f'labels: true, from {labels}' in capsys.readouterr().out
    assert json.loads(out.read_text())['labels_file'] == str(labels)


def test_cbo_eval_refuses_an_unusable_labels_file(clip, tmp_path, capsys):
    folder, video, _, _, _, calibration = clip
    bad = _csv(tmp_path, 'frame,label\n0,1\n', 'bad.csv')
    assert evaluate.main([str(video), '--labels', str(bad),
                          *_eval_args(folder, calibration)]) == 1
    assert 'wrong header' in capsys.readouterr().err
    ids = _csv(tmp_path, 'frame,labels\n' + ''.join(f'{k},{k + 990}\n' for k in range(60)),
               'ids.csv')
    assert evaluate.main([str(video), '--labels', str(ids),
                          *_eval_args(folder, calibration)]) == 1
    assert 'label 1000 is outside' in capsys.readouterr().err
    assert evaluate.main([str(video), '--labels', str(tmp_path / 'none.csv'),
                          *_eval_args(folder, calibration)]) == 1
    assert 'none.csv not found' in capsys.readouterr().err


def test_cbo_eval_on_an_image_folder_with_label_sets(clip, tmp_path, capsys):
    folder, _, _, _, _, calibration = clip
    samples = foolbox_samples()[:5]
    for path, _ in samples:
        shutil.copy(path, tmp_path / path.name.replace('imagenet', 'img'))
    names = sorted(p.name for p in tmp_path.glob('img_*.jpg'))
    rows = [f'{names[0]},{samples[0][1]} 1 2', f'{names[1]},']
    rows += [f'{n},{c}' for n, (_, c) in zip(names[2:], samples[2:])]
    (tmp_path / 'labels.csv').write_text('frame,labels\n' + '\n'.join(rows) + '\n')
    out = tmp_path / 'folder.json'
    assert evaluate.main([str(tmp_path), '--json', str(out),
                          *_eval_args(folder, calibration)]) == 0
    report = json.loads(out.read_text())
    assert report['labels'] == 'true' and report['unlabelled_frames'] == 1
    assert report['strategies']['local_only']['scored_frames'] == 4


def test_reference_mode_is_named_agreement(clip, capsys):
    folder, _, _, _, _, calibration = clip
    out = folder / 'reference.json'
    plots = folder / 'plots'
    assert evaluate.main(['bikes', '--max-frames', '12', '--json', str(out), '--plots',
                          str(plots), '--calibration', str(calibration), '--cache-dir',
                          str(folder / 'cache'), '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert 'labels: reference' in printed and 'agree%' in printed and 'acc%' not in printed
    report = json.loads(out.read_text())
    assert report['labels'] == 'reference'
    assert report['score'] == 'agreement with reference labels'
    assert 'agreement_with_reference' in report['strategies']['cbo']
    assert (plots / 'reliability.png').stat().st_size > 1000


@pytest.fixture(scope='module')
def benchmark(tmp_path_factory):
    folder = tmp_path_factory.mktemp('benchmark')
    return folder, make_tiny_benchmark(folder)


def test_cbo_eval_benchmark_split_pools_with_object_intervals(clip, benchmark, capsys):
    folder, manifest = benchmark
    calibration = clip[5]
    out = folder / 'pooled.json'
    assert evaluate.main(['--benchmark', 'evaluation', '--manifest', str(manifest),
                          '--json', str(out), *_eval_args(folder, calibration)]) == 0
    printed = capsys.readouterr().out
    assert 'resampling whole objects' in printed
    report = json.loads(out.read_text())
    assert report['labels'] == 'true' and report['ci_unit'] == 'objects'
    assert len(report['sources']) == 2 and report['unlabelled_frames'] == 2
    local = report['pooled']['local_only']
    assert local['scored_frames'] == 14 and local['accuracy_ci'] is not None
    assert local['accuracy_ci'][0] <= local['accuracy'] <= local['accuracy_ci'][1]
    direct = sum(r['strategies']['local_only']['correct'] for r in report['sources']) / 14
    assert local['accuracy'] == pytest.approx(direct)
    assert 'cbo_minus_best_baseline' in report['comparisons']


def test_cbo_calibrate_benchmark_leave_objects_out(clip, benchmark, capsys):
    folder, manifest = benchmark
    out = folder / 'cal.json'
    metrics = folder / 'cal_metrics.json'
    code = calibrate.main(['--benchmark', '--manifest', str(manifest), '--views',
                           '--frames-per-video', '0', '--held-out-frames', '0',
                           '--offload-resolutions', *map(str, RESOLUTIONS), '--bootstrap', '200',
                           '--cache-dir', str(folder / 'cache'), '--output', str(out),
                           '--json', str(metrics), '--no-progress'])
    assert code == 0, capsys.readouterr().err
    table = json.loads(metrics.read_text())
    int8 = table['table']['int8']
    assert int8['ci_unit'] == 'objects' and int8['groups'] == {'calibration': 3, 'held_out': 2}
    row = int8['metrics']['held_out']['temperature']
    assert row['samples'] == 14               # unlabelled frames left out
    for key in ('ece_ci', 'mce_ci', 'nll_ci', 'brier_ci', 'ece_minus_raw_ci'):
        assert len(row[key]) == 2 and row[key][0] <= row[key][1]
    info = table['source_info']
    assert info['labels'] == ['true'] and info['calibration_media'][0]['object'] == 'object_0'


def _write_bag(folder, frames):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    image_type = typestore.types['sensor_msgs/msg/Image']
    header = typestore.types['std_msgs/msg/Header']
    stamp = typestore.types['builtin_interfaces/msg/Time']
    bag = folder / 'bag'
    with Writer(bag, version=8) as writer:
        other = writer.add_connection('/other/image', image_type.__msgtype__,
                                      typestore=typestore)
        connection = writer.add_connection('/camera/image_raw', image_type.__msgtype__,
                                           typestore=typestore)
        for i, rgb in enumerate(frames):
            h, w, _ = rgb.shape
            msg = image_type(header=header(stamp=stamp(sec=i, nanosec=0), frame_id='cam'),
                             height=h, width=w, encoding='rgb8', is_bigendian=0, step=w * 3,
                             data=rgb.reshape(-1))
            data = typestore.serialize_cdr(msg, image_type.__msgtype__)
            writer.write(connection, i * 10**9 + 1, data)
            if i == 0:
                writer.write(other, i * 10**9, data)
    return bag


def test_rosbag_labels_index_the_messages_of_the_topic(clip, tmp_path, capsys):
    folder, _, _, _, _, calibration = clip
    samples = foolbox_samples()[:3]
    frames = [read_frames(path.parent)[0][i].rgb for i, (path, _) in enumerate(samples)]
    bag = _write_bag(tmp_path, frames)
    text = f'frame,labels\n0,{samples[0][1]}\n1,\n2,{samples[2][1]} 7\n'
    labels = _csv(tmp_path, text)
    source = open_source(bag, labels_file=labels, topic='/camera/image_raw')
    assert [f.label_set for f in source] == [{samples[0][1]}, frozenset(), {samples[2][1], 7}]
    beyond = _csv(tmp_path, 'frame,labels\n0,1\n1,2\n2,3\n3,4\n', 'beyond.csv')
    with pytest.raises(LabelsError, match='frame 3 is beyond the video, which has 3 frames'):
        open_source(bag, labels_file=beyond, topic='/camera/image_raw')
    out = tmp_path / 'bag.json'
    assert evaluate.main([str(bag), '--topic', '/camera/image_raw', '--labels', str(labels),
                          '--json', str(out), *_eval_args(folder, calibration)]) == 0
    report = json.loads(out.read_text())
    assert report['labels'] == 'true' and report['unlabelled_frames'] == 1
    assert report['strategies']['local_only']['scored_frames'] == 2


def test_leave_objects_out_keeps_each_object_in_one_fold():
    from cbo_ros.core.calibration_fit import group_folds
    groups = np.repeat([f'object_{i}' for i in range(25)], 7)
    folds = group_folds(groups)
    assert len(np.unique(folds)) == 10
    for name in np.unique(groups):
        assert len(np.unique(folds[groups == name])) == 1
    assert group_folds(np.array(['a', 'a', 'b'])).tolist() == [0, 0, 1]
