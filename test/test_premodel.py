"""Premodel model selection: labels, training, selection, persistence, features, real models."""

import numpy as np
import pytest

from cbo_ros.assets import paths
from cbo_ros.assets.premodel_models import CANDIDATES, export_candidates
from cbo_ros.core.calibration import ServerProfile
from cbo_ros.core.premodel import (Premodel, PremodelConfig, PremodelError, cross_validate,
                                   fit_premodel, selection_labels)
from cbo_ros.perception.classifier import OnnxClassifier
from cbo_ros.perception.image_features import FEATURE_NAMES, image_features
from cbo_ros.perception.media import read_frames

COSTS = [0.003, 0.010, 0.020]


def test_selection_labels_take_the_first_correct_in_cost_order():
    correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert selection_labels(correct, COSTS).tolist() == [0, 1, 2, 0, 1]
    assert selection_labels(correct, COSTS, fallback='largest').tolist() == [0, 1, 2, 2, 1]
    # A 15 ms budget rules the 20 ms model out: its frames fall back.
    assert selection_labels(correct, COSTS, budget_s=0.015).tolist() == [0, 1, 0, 0, 1]
    with pytest.raises(ValueError):
        selection_labels(correct, [0.02, 0.01, 0.03])      # not in cost order


def synthetic(n=600, seed=0):
    """Feature 0 tells which model is needed: < 0 the cheapest is right, > 1 only the largest."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    need = np.where(x[:, 0] < 0, 0, np.where(x[:, 0] < 1, 1, 2))
    correct = (np.arange(3)[None, :] >= need[:, None]).astype(float)
    groups = np.repeat(np.arange(n // 10), 10)
    return x, correct, groups, need


@pytest.mark.parametrize('config', [PremodelConfig('knn', k=5), PremodelConfig('tree', depth=4)])
def test_premodel_learns_which_model_a_frame_needs(config):
    x, correct, _, need = synthetic()
    premodel = fit_premodel(x, correct, COSTS, 0.0005, config, ['a', 'b', 'c'])
    x_test, correct_test, _, need_test = synthetic(seed=1)
    chosen = premodel.select_rows(x_test)
    assert np.mean(chosen == need_test) > 0.9
    accuracy = correct_test[np.arange(len(chosen)), chosen].mean()
    assert accuracy > 0.9
    # Cheaper than always running the most capable model, which is always right here.
    assert premodel.frame_cost_s(chosen).mean() < COSTS[2] * 0.8
    assert premodel.select(x_test[0]) == chosen[0]


def test_cross_validation_prefers_a_working_setting_and_counts_feature_time():
    x, correct, groups, _ = synthetic()
    confidence = np.random.default_rng(2).random(len(x))        # uninformative
    best, rows = cross_validate(x, correct, COSTS, 0.001, groups, confidence)
    best_row = next(r for r in rows if r['config'] == best)
    assert best_row['accuracy'] > 0.9
    assert best_row['accuracy'] >= max(r['accuracy'] for r in rows) - 0.01
    assert all(r['time_s'] >= 0.001 + COSTS[0] for r in rows)
    with_conf = [r for r in rows if r['config'].use_confidence]
    assert with_conf and all(r['time_s'] >= 0.001 + COSTS[0] for r in with_conf)


def test_premodel_file_round_trip_and_errors(tmp_path):
    x, correct, _, _ = synthetic(200)
    profile = ServerProfile.fit(np.linspace(0, 1, 200), np.linspace(0, 1, 200),
                                {128: (np.arange(200) % 2).astype(float)})
    premodel = fit_premodel(x, correct, COSTS, 0.0005, PremodelConfig('knn', k=3,
                                                                      use_confidence=True),
                            ['a', 'b', 'c'], confidences0=np.linspace(0, 1, 200),
                            temperatures=[1.5, 1.0, 2.0], profiles=[profile, None, None])
    path = premodel.save(tmp_path / 'p.npz')
    loaded = Premodel.load(path)
    rows = premodel.inputs(x[:50], np.linspace(0, 1, 50))
    assert loaded.select_rows(rows).tolist() == premodel.select_rows(rows).tolist()
    assert loaded.temperatures == [1.5, 1.0, 2.0]
    assert loaded.server_accuracy(0, 128, 0.5) == pytest.approx(premodel.server_accuracy(
        0, 128, 0.5))
    assert loaded.server_accuracy(1, 128, 0.5, fallback=lambda r, c: 0.25) == 0.25
    with pytest.raises(PremodelError, match='confidence'):
        loaded.inputs(x[:1])
    (tmp_path / 'bad.npz').write_bytes(b'not a premodel')
    with pytest.raises(PremodelError, match='unreadable'):
        Premodel.load(tmp_path / 'bad.npz')
    with pytest.raises(PremodelError, match='not found'):
        Premodel.load(tmp_path / 'missing.npz')


def test_image_features_react_to_content():
    rng = np.random.default_rng(0)
    flat = np.full((120, 160, 3), 128, np.uint8)
    busy = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    f_flat, f_busy = image_features(flat), image_features(busy)
    assert f_flat.shape == (len(FEATURE_NAMES),) and np.isfinite(f_busy).all()
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    assert f_flat[index['edge_density']] == 0 and f_flat[index['keypoints']] == 0
    assert f_busy[index['edge_density']] > 0.05 and f_busy[index['keypoints']] > 0
    assert f_busy[index['contrast']] > f_flat[index['contrast']]
    with pytest.raises(ValueError, match='RGB'):
        image_features(np.zeros((10, 10), np.uint8))


def test_premodel_on_the_labelled_imagenet_samples():
    """The four real candidates on the 20 labelled photos: labels, training and selection."""
    export_candidates(paths.models_dir(), log=lambda *_: None)     # cached: Lite1 fp32
    frames, _ = read_frames(paths.media_dir() / 'imagenet_samples')
    images, labels = [f.rgb for f in frames], np.array([f.label for f in frames])
    correct = np.column_stack([
        OnnxClassifier(str(paths.resolve_model(c.model_file)), c.input_size)
        .logits(images).argmax(1) == labels for c in CANDIDATES]).astype(float)
    # Sanity of the candidates: the fp32 models at native size know most of these photos.
    assert correct[:, 1:].mean(axis=0).min() >= 0.7
    features = np.stack([image_features(im) for im in images])
    costs = [0.003, 0.010, 0.015, 0.020]
    premodel = fit_premodel(features, correct, costs, 0.0005, PremodelConfig('knn', k=1),
                            [c.name for c in CANDIDATES])
    chosen = premodel.select_rows(features)
    # A 1-NN premodel reproduces its training labels: the first correct model of each photo.
    assert chosen.tolist() == selection_labels(correct, costs).tolist()
    answered = correct[np.arange(20), chosen]
    assert answered.mean() == pytest.approx(correct.any(axis=1).mean())
    assert premodel.frame_cost_s(chosen).mean() < costs[-1]


def _premodel_video(n, seed):
    """Frames where feature 0 < 0 means the int8 model is right, else only Lite2 is."""
    from cbo_ros.evaluation.outputs_cache import VideoOutputs
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 3)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    easy = features[:, 0] < 0
    int8 = rng.normal(size=(n, 10)).astype(np.float32)
    int8[np.arange(n), np.where(easy, labels, (labels + 1) % 10)] += 6.0
    lite2 = rng.normal(size=(n, 10)).astype(np.float32)
    lite2[np.arange(n), labels] += 6.0
    correct = np.column_stack([easy, np.ones(n, bool)]).astype(float)
    outputs = VideoOutputs(
        'synthetic', 'synthetic', 10.0, np.arange(n) / 10.0, labels, 'true', labels,
        [str(i) for i in range(n)], {('int8', 128): int8, ('lite2', 260): lite2},
        server_pred={224: labels}, server_score={224: np.full(n, 0.9, np.float32)},
        payload_bytes={224: np.full(n, 10000)}, features=features)
    return outputs, features, correct


def test_replay_runs_premodel_strategies_from_the_chosen_models():
    from cbo_ros.core.calibration import CalibrationBundle, TemperatureScaling
    from cbo_ros.evaluation.simulator import SimulationConfig, run_strategies
    from cbo_ros.evaluation.traces import NetworkTrace
    _, x, correct = _premodel_video(400, 0)
    premodel = fit_premodel(x, correct, [0.003, 0.020], 0.001, PremodelConfig('knn', k=5),
                            ['lite0_int8_128', 'lite2_fp32_260'], temperatures=[1.0, 1.0])
    outputs, _, _ = _premodel_video(300, 1)
    profile = ServerProfile.fit(np.linspace(0, 1, 50), np.linspace(0, 1, 50),
                                {224: np.ones(50)})
    bundle = CalibrationBundle({128: TemperatureScaling(1.0)}, 128, [224], profile,
                               {224: 0.01}, 'temperature')
    config = SimulationConfig(deadline_s=0.2, local_latency_s=0.015, premodel=premodel)
    strategies = ['local_only', 'premodel', 'premodel_cbo', 'cbo']
    results, frames = run_strategies(outputs, bundle, NetworkTrace.constant(1e3), config,
                                     strategies)
    local, chosen = results['local_only'], results['premodel']
    assert local.correct.mean() < 0.7 and chosen.correct.mean() > 0.9
    assert not chosen.resolution.any()
    # Every frame pays the features (1 ms); Lite2's frames also Lite2 minus the int8 model.
    slower = chosen.latency_s > 0.016 + 1e-9
    assert 0.2 < slower.mean() < 0.8
    assert chosen.latency_s[~slower] == pytest.approx(np.full((~slower).sum(), 0.016))
    assert chosen.latency_s[slower] == pytest.approx(np.full(slower.sum(), 0.016 + 0.017))
    # 1 kbit/s: no offload fits the deadline, so premodel_cbo answers like premodel.
    assert not results['premodel_cbo'].resolution.any()
    assert np.array_equal(results['premodel_cbo'].correct, chosen.correct)
    # A fast link: premodel_cbo offloads frames its chosen model is unsure about.
    results, _ = run_strategies(outputs, bundle, NetworkTrace.constant(50e6), config,
                                ['premodel_cbo'])
    assert results['premodel_cbo'].resolution.any()
    config.premodel = None
    with pytest.raises(ValueError, match='premodel'):
        run_strategies(outputs, bundle, NetworkTrace.constant(1e3), config, ['premodel'])


def test_cbo_eval_replays_the_premodel_strategies(tmp_path, capsys):
    """cbo_eval --premodel on a short clip: candidates' outputs and features cached, reported."""
    import json

    from cbo_ros.tools import evaluate
    export_candidates(paths.models_dir(), log=lambda *_: None)
    frames = [f.rgb for f in read_frames('bikes.mp4', max_frames=12)[0]]
    features = np.stack([image_features(f) for f in frames])
    correct = np.zeros((12, len(CANDIDATES)))
    correct[::2, 0] = 1.0
    correct[:, -1] = 1.0
    fit_premodel(features, correct, [0.004, 0.011, 0.015, 0.022], 0.001,
                 PremodelConfig('knn', k=1), [c.name for c in CANDIDATES],
                 temperatures=[3.0, 1.2, 1.0, 1.0]).save(tmp_path / 'p.npz')
    out = tmp_path / 'report.json'
    argv = ['bikes', '--max-frames', '12', '--premodel', str(tmp_path / 'p.npz'),
            '--strategies', 'local_only', 'premodel', 'premodel_cbo', '--cache-dir',
            str(tmp_path / 'cache'), '--json', str(out), '--no-plots', '--no-progress']
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    strategies = json.loads(out.read_text())['strategies']
    assert set(strategies) == {'local_only', 'premodel', 'premodel_cbo'}
    assert strategies['premodel']['offloads'] == 0
    # Half the frames wait for Lite2 on top of the features: a longer mean local latency.
    assert strategies['premodel']['latency_mean_ms'] > strategies['local_only'][
        'latency_mean_ms'] + 5.0
    assert list((tmp_path / 'cache').glob('*/premodel_features_v1.npz'))
    assert list((tmp_path / 'cache').glob('*/robot_lite1_240.npy'))
    missing = ['bikes', '--max-frames', '4', '--strategies', 'premodel', '--premodel',
               str(tmp_path / 'none.npz'), '--cache-dir', str(tmp_path / 'cache')]
    assert evaluate.main(missing) == 1
    assert 'not found' in capsys.readouterr().err
