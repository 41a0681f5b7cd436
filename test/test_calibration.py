"""Calibration math: calibrators, metrics and the bundle the nodes load (no ROS)."""

import json
import warnings

import numpy as np
import pytest

from cbo_ros.core.calibration import (CalibrationBundle, CalibrationError, HistogramBinning,
                                      make_calibrator,
                                      IsotonicCalibration, ServerProfile, TemperatureScaling,
                                      brier_score, default_calibration_path,
                                      expected_calibration_error, load_calibration, max_softmax,
                                      maximum_calibration_error, negative_log_likelihood,
                                      pool_adjacent_violators, top1_correct)
from cbo_ros.perception.image_ops import softmax


def synthetic_logits(temperature, n=20000, classes=10, seed=0):
    """Logits z and labels drawn from softmax(z / temperature): T is the true temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, classes))
    probs = softmax(logits / temperature)
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize('true_t', [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    logits, labels = synthetic_logits(true_t)
    fitted = TemperatureScaling().fit(logits, labels).temperature
    assert fitted == pytest.approx(true_t, rel=0.06)


def test_temperature_scaling_lowers_ece_of_overconfident_logits():
    logits, labels = synthetic_logits(2.5, seed=1)
    correct = top1_correct(logits, labels)
    before = expected_calibration_error(max_softmax(logits), correct)
    calibrator = TemperatureScaling().fit(*synthetic_logits(2.5, seed=2))
    after = expected_calibration_error(calibrator.predict(logits), correct)
    assert before > 0.1 and after < 0.02


def test_ece_mce_nll_brier_on_hand_computed_values():
    conf = np.array([0.9, 0.9, 0.3, 0.3])
    correct = np.array([1, 0, 0, 0])
    # Two bins: conf 0.9 with accuracy 0.5 (gap 0.4), conf 0.3 with accuracy 0 (gap 0.3).
    assert expected_calibration_error(conf, correct) == pytest.approx(0.35)
    assert maximum_calibration_error(conf, correct) == pytest.approx(0.4)
    assert brier_score(conf, correct) == pytest.approx((0.01 + 0.81 + 0.09 + 0.09) / 4)
    nll = -(np.log(0.9) + np.log(0.1) + 2 * np.log(0.7)) / 4
    assert negative_log_likelihood(conf, correct) == pytest.approx(nll)


def test_perfectly_calibrated_confidences_have_small_ece():
    rng = np.random.default_rng(3)
    conf = rng.random(50000)
    correct = rng.random(50000) < conf
    assert expected_calibration_error(conf, correct) < 0.01
    assert expected_calibration_error(np.clip(conf + 0.2, 0, 1), correct) > 0.15


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.6], [1])
    with pytest.raises(CalibrationError, match='labels'):
        top1_correct(np.zeros((2, 5)), [0, 7])


@pytest.mark.parametrize('calibrator', [HistogramBinning(), IsotonicCalibration()])
def test_binning_and_isotonic_fix_a_distorted_confidence(calibrator):
    rng = np.random.default_rng(4)
    true_p = rng.random(20000)
    raw = true_p ** 0.4            # overconfident, monotone distortion
    correct = rng.random(20000) < true_p
    calibrator.fit_confidences(raw[:10000], correct[:10000])
    before = expected_calibration_error(raw[10000:], correct[10000:])
    after = expected_calibration_error(calibrator.predict_confidences(raw[10000:]),
                                       correct[10000:])
    assert before > 0.15 and after < 0.03


def test_pool_adjacent_violators_is_monotone_and_exact():
    assert np.allclose(pool_adjacent_violators([1, 3, 2, 4]), [1, 2.5, 2.5, 4])
    fitted = pool_adjacent_violators(np.random.default_rng(5).random(200))
    assert np.all(np.diff(fitted) >= -1e-12)


def make_bundle():
    logits, labels = synthetic_logits(2.0, n=2000)
    conf = max_softmax(logits)
    correct = {96: (np.random.default_rng(0).random(2000) < 0.3).astype(float),
               224: (np.random.default_rng(1).random(2000) < 0.8).astype(float)}
    profile = ServerProfile.fit(conf, conf, correct, bins=10)
    return CalibrationBundle({224: TemperatureScaling().fit(logits, labels),
                              160: IsotonicCalibration().fit(logits, labels)}, 224, [224, 96],
                             profile, {96: 0.02, 224: 0.03}, 'temperature',
                             {'calibration_media': ['synthetic']})


def test_bundle_round_trip_and_node_api(tmp_path):
    bundle = make_bundle()
    path = bundle.save(tmp_path / 'cal.json')
    loaded = load_calibration(path)
    assert loaded.offload_resolutions == [96, 224]
    assert loaded.robot_resolution == 224 and loaded.method == 'temperature'
    assert loaded.source_info['calibration_media'] == ['synthetic']
    logits = np.random.default_rng(6).normal(0, 3, 10)
    calibrated, raw = loaded.confidence(logits, resolution=224)
    assert raw == pytest.approx(float(softmax(logits).max()))
    assert calibrated == pytest.approx(bundle.confidence(logits, 224)[0])
    assert calibrated == pytest.approx(max_softmax(logits / loaded.calibrator().temperature)[0])
    assert loaded.confidence(logits, resolution=160)[0] != calibrated
    assert 0.0 <= loaded.server_accuracy(96, 0.4) <= 0.5 < loaded.server_accuracy(224, 0.4)
    assert loaded.server_time_s(224) == pytest.approx(0.03)
    assert loaded.server_time_s(200) == pytest.approx(0.03)   # nearest profiled resolution


def test_missing_or_invalid_calibration_file_is_a_clear_error(tmp_path):
    with pytest.raises(CalibrationError, match='cbo_calibrate') as info:
        load_calibration(tmp_path / 'none.json')
    assert 'none.json' in str(info.value)
    assert isinstance(info.value, ValueError)
    bad = tmp_path / 'bad.json'
    bad.write_text('{not json')
    with pytest.raises(CalibrationError, match='invalid'):
        load_calibration(bad)
    bad.write_text(json.dumps({'format': 'something else'}))
    with pytest.raises(CalibrationError, match='format'):
        load_calibration(bad)
    assert default_calibration_path().name == 'cbo_calibration.json'


def test_identity_bundle_is_labelled_uncalibrated():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        bundle = CalibrationBundle.identity([112, 224])
    assert caught and 'UNCALIBRATED' in str(caught[0].message)
    assert bundle.is_identity and bundle.method == 'identity'
    logits = np.array([2.0, 1.0, 0.0])
    calibrated, raw = bundle.confidence(logits)
    assert calibrated == pytest.approx(raw)
    assert bundle.offload_resolutions == [112, 224]
    assert 0 < bundle.server_accuracy(112, 0.5) < bundle.server_accuracy(224, 0.5) <= 1
    assert bundle.server_time_s(112) > 0


# --------------------------------------------------------------- multi-video fitting and selection

def _video(name, logits, labels):
    from cbo_ros.evaluation.outputs_cache import VideoOutputs
    n = len(labels)
    return VideoOutputs(name, name, 10.0, np.arange(n) / 10.0, np.asarray(labels), 'true',
                        np.asarray(labels), [str(i) for i in range(n)],
                        {('int8', 224): np.asarray(logits, dtype=np.float32)})


def _shifted_videos(temperatures, n=1500, seed=0):
    videos = []
    for i, t in enumerate(temperatures):
        logits, labels = synthetic_logits(t, n=n, seed=seed + i)
        videos.append(_video(f'v{i}', logits, labels))
    return videos


def test_lovo_selection_picks_a_calibrator_that_lowers_held_out_ece():
    from cbo_ros.core.calibration_fit import select_method, video_groups, video_weights
    # Every scene is over-confident (true temperature 1.8..2.6): a fitted map must transfer.
    videos = _shifted_videos([1.8, 2.2, 2.6, 2.0])
    chosen, scores = select_method(videos, 'int8', 224)
    assert chosen != 'identity'
    assert scores[chosen]['log_loss'] < scores['identity']['log_loss']
    logits = np.concatenate([v.robot_logits[('int8', 224)] for v in videos])
    labels = np.concatenate([v.labels for v in videos])
    calibrator = make_calibrator(chosen).fit(logits, labels, video_weights(video_groups(videos)))
    held_logits, held_labels = synthetic_logits(2.3, n=4000, seed=99)   # an unseen scene
    correct = top1_correct(held_logits, held_labels)
    before = expected_calibration_error(max_softmax(held_logits), correct)
    after = expected_calibration_error(calibrator.predict(held_logits), correct)
    assert after < 0.5 * before


def test_lovo_selection_keeps_the_raw_confidence_when_scenes_disagree():
    from cbo_ros.core.calibration_fit import select_method
    # Scenes mis-calibrated in opposite directions around T = 1: no map transfers.
    videos = _shifted_videos([0.5, 2.0, 0.5, 2.0], n=800, seed=10)
    chosen, scores = select_method(videos, 'int8', 224)
    assert chosen == 'identity'
    assert set(scores) == {'identity', 'temperature', 'histogram', 'isotonic', 'logistic'}


def test_video_weights_give_each_video_the_same_mass():
    from cbo_ros.core.calibration_fit import video_weights
    weights = video_weights(np.array(['a'] * 10 + ['b'] * 30))
    assert weights[:10].sum() == pytest.approx(weights[10:].sum())
    assert weights.mean() == pytest.approx(1.0)
    # A weighted temperature fit equals the fit on duplicated data.
    logits, labels = synthetic_logits(2.0, n=600, seed=3)
    w = np.where(np.arange(600) < 300, 2.0, 1.0)
    dup = np.r_[np.arange(600), np.arange(300)]
    assert TemperatureScaling().fit(logits, labels, w).temperature == pytest.approx(
        TemperatureScaling().fit(logits[dup], labels[dup]).temperature, rel=1e-3)


def test_logistic_calibration_fixes_overconfidence_and_round_trips():
    from cbo_ros.core.calibration import LogisticCalibration, calibrator_from_dict
    logits, labels = synthetic_logits(2.5, n=6000, seed=4)
    test_logits, test_labels = synthetic_logits(2.5, n=6000, seed=5)
    correct = top1_correct(test_logits, test_labels)
    calibrator = LogisticCalibration().fit(logits, labels)
    before = expected_calibration_error(max_softmax(test_logits), correct)
    after = expected_calibration_error(calibrator.predict(test_logits), correct)
    assert before > 0.1 and after < 0.04 and after < before / 3
    again = calibrator_from_dict(json.loads(json.dumps(calibrator.to_dict())))
    assert np.allclose(again.predict(test_logits), calibrator.predict(test_logits))
    # Infinite shrinkage gives back the raw confidence.
    rigid = LogisticCalibration(l2=1e9).fit(logits, labels)
    assert np.allclose(rigid.predict(test_logits), max_softmax(test_logits), atol=1e-3)


def test_server_profile_is_monotone_and_maps_server_scores():
    rng = np.random.default_rng(8)
    conf = rng.random(3000)
    hits = (rng.random(3000) < 0.3 + 0.6 * conf).astype(float)
    hits[(conf > 0.5) & (conf < 0.6)] = 0.0            # a dip the monotone fit must pool
    profile = ServerProfile.fit(conf, conf, {224: hits})
    assert np.all(np.diff(profile.accuracy[224]) >= -1e-12)
    assert profile.server_confidence(224, 0.5) is None
    scores = rng.random(3000)
    profile.fit_score_map({224: scores}, {224: (rng.random(3000) < scores).astype(float)})
    assert profile.server_confidence(224, 0.9) > profile.server_confidence(224, 0.1)
    restored = ServerProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored.server_confidence(224, 0.9) == pytest.approx(
        profile.server_confidence(224, 0.9))


def test_segment_bootstrap_interval_brackets_the_ece():
    from cbo_ros.core.calibration_fit import segment_bootstrap_ece
    rng = np.random.default_rng(9)
    conf = rng.random(600)
    correct = rng.random(600) < conf * 0.7
    low, high = segment_bootstrap_ece(conf, correct, np.arange(600) // 20, samples=300)
    assert low <= expected_calibration_error(conf, correct) <= high
    assert high - low > 0.01


# ------------------------------------------------------------- online (scene-adaptive) calibration

def _online_bundle():
    """Identity static map; the server's score map is q = score at r = 224 (and 96)."""
    from cbo_ros.core.calibration import IdentityCalibration
    score_map = {r: IsotonicCalibration([0.0, 1.0], [0.0, 1.0]) for r in (96, 224)}
    profile = ServerProfile([0.0, 0.5, 1.0], {96: [0.3, 0.5], 224: [0.7, 0.9]},
                            score_map=score_map)
    return CalibrationBundle({224: IdentityCalibration()}, 224, [96, 224], profile,
                             {96: 0.02, 224: 0.02}, 'identity')


def _scene_feedback(calibrator, shift, n, rng, reliability=0.95, max_conf=0.5, t0=0.0):
    """Feed ``n`` answers of a scene whose true P(correct) = sigmoid(logit(c) + shift).

    Only low-confidence frames (c < ``max_conf``) are offloaded, as the planner does.
    """
    def logit(p):
        return np.log(p / (1.0 - p))
    for i in range(n):
        c = rng.uniform(0.03, max_conf)
        local_right = rng.random() < 1.0 / (1.0 + np.exp(-(logit(c) + shift)))
        server_right = rng.random() < reliability
        reference = 0
        local = reference if local_right else 1 + rng.integers(0, 400)
        server = reference if server_right else 500 + rng.integers(0, 400)
        calibrator.observe(c, local, server, reliability, 224, now_s=t0 + 0.04 * i)


@pytest.mark.parametrize('shift', [1.5, -1.5])
def test_online_calibration_learns_a_scene_shift_from_biased_feedback(shift):
    from cbo_ros.core.online_calibration import OnlineCalibrator
    rng = np.random.default_rng(3)
    online = OnlineCalibrator(_online_bundle())
    _scene_feedback(online, shift, 150, rng)
    # Scored on the whole confidence range, not only where the feedback came from.
    conf = rng.uniform(0.03, 0.97, 20000)
    truth = 1.0 / (1.0 + np.exp(-(np.log(conf / (1 - conf)) + shift)))
    correct = (rng.random(conf.size) < truth).astype(float)
    static_ece = expected_calibration_error(conf, correct)
    online_ece = expected_calibration_error(np.array([online.adjust(c) for c in conf]), correct)
    assert static_ece > 0.15
    assert online_ece < 0.4 * static_ece
    b, _ = online.parameters()
    assert np.sign(b) == np.sign(shift)


def test_online_calibration_without_feedback_is_the_static_map():
    from cbo_ros.core.online_calibration import OnlineCalibrator
    bundle = _online_bundle()
    online = OnlineCalibrator(bundle)
    rng = np.random.default_rng(0)
    for logits in rng.normal(0, 3, (20, 30)):
        assert online.confidence(logits, 224) == bundle.confidence(logits, 224)
    # Unusable answers change nothing: low resolution, no score, no server class.
    assert online.observe(0.3, 1, 1, 0.9, 96, now_s=0.0) is None
    assert online.observe(0.3, 1, 1, None, 224, now_s=0.0) is None
    assert online.observe(0.3, 1, None, 0.9, 224, now_s=0.0) is None
    assert len(online) == 0 and online.adjust(0.3) == 0.3


def test_online_calibration_is_causal():
    from cbo_ros.core.online_calibration import OnlineCalibrator
    online = OnlineCalibrator(_online_bundle())
    _scene_feedback(online, 2.0, 100, np.random.default_rng(1), t0=10.0)
    assert online.adjust(0.3, now_s=9.99) == 0.3            # nothing had arrived yet
    partial = online.adjust(0.3, now_s=10.5)                # the first ~13 answers only
    full = online.adjust(0.3, now_s=100.0)
    assert 0.3 < partial < full
    assert online.adjust(0.3) == full
    online.reset()
    assert online.adjust(0.3) == 0.3


def test_cbo_adaptive_uses_only_answers_that_have_arrived():
    from cbo_ros.core.planner import FrameCandidate, LinkState, OffloadOption, make_planner
    bundle = _online_bundle()
    planner = make_planner('cbo_adaptive', bundle)
    assert planner.name == 'cbo_adaptive'
    link = LinkState(1e7, 0.01)

    def frame(seq, t, conf=0.2):
        options = [OffloadOption(r, 2000, bundle.server_accuracy(r, conf), 0.02)
                   for r in (96, 224)]
        return FrameCandidate(seq, t, t + 0.2, conf, options, conf, local_class=7)

    for seq in range(30):                                    # low confidence: offloaded
        decision = planner.decide(frame(seq, 0.04 * seq), link, 0.04 * seq)
        assert decision.offload and decision.resolution == 224
        assert decision.confidence == pytest.approx(0.2)     # no answer has arrived yet
    for seq in range(30):                                    # all agree, arriving at t = 5 s
        planner.observe_server_answer(seq, 224, 0.95, now_s=5.0, server_class=7)
    assert planner.decide(frame(30, 4.0), link, 4.0).confidence == pytest.approx(0.2)
    assert planner.decide(frame(31, 6.0), link, 6.0).confidence > 0.3
    # The plain CBO planner ignores the server class.
    plain = make_planner('cbo', bundle)
    plain.decide(frame(0, 0.0), link, 0.0)
    plain.observe_server_answer(0, 224, 0.95, now_s=0.1, server_class=7)
    assert plain.decide(frame(1, 0.2), link, 0.2).confidence == pytest.approx(0.2)


def test_online_map_fit_is_the_penalised_optimum_when_newton_would_overshoot():
    # Mostly agreeing answers on low-confidence frames: a full Newton step overshot to a
    # negative slope (every confidence then mapped to ~1) before the line search.
    from scipy.optimize import minimize
    from cbo_ros.core.online_calibration import fit_logit_map
    rng = np.random.default_rng(7)
    for _ in range(20):
        c = rng.uniform(0.02, 0.15, 60)
        x = np.log(c / (1 - c))
        y = np.where(rng.random(60) < 0.9, 0.8, 0.2 * c)

        def objective(t):
            s = t[0] + t[1] * x
            return (np.sum(np.logaddexp(0.0, s) - y * s) + 0.5 * 1.0 * t[0] ** 2
                    + 0.5 * 50.0 * (t[1] - 1.0) ** 2)
        expected = minimize(objective, [0.0, 1.0], method='BFGS').x
        b, a = fit_logit_map(x, y, None, prior_shift=1.0, prior_slope=50.0)
        assert a > 0
        assert (b, a) == pytest.approx(tuple(expected), abs=1e-3)
    assert fit_logit_map([np.nan, 0.0], [0.5, 0.5]) == (0.0, 1.0)


def test_isotonic_calibration_pools_tied_confidences_whatever_their_order():
    from cbo_ros.core.calibration import IsotonicCalibration
    conf = np.array([0.2, 0.2, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6])
    hits = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    predictions = []
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(conf.size)
        calibrator = IsotonicCalibration().fit_confidences(conf[order], hits[order])
        predictions.append(calibrator.predict_confidences([0.2, 0.6, 1.0]))
    for prediction in predictions:
        # Four samples at 1.0 with one hit pool with the 0.6 and 0.2 pairs: all at 3/8.
        assert prediction == pytest.approx([0.375, 0.375, 0.375])
