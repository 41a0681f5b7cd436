"""Premodel live over DDS: the classifier picks a candidate per frame, premodel_cbo plans from it.

A small premodel is trained here on the features of the clip's own frames (bright frames: the
int8 Lite0, dark ones: Lite2), so the test does not need the full build on the benchmark.
"""

import numpy as np
import pytest

from cbo_ros.assets import paths
from cbo_ros.assets.premodel_models import CANDIDATES, export_candidates
from cbo_ros.core.premodel import PremodelConfig, fit_premodel
from cbo_ros.perception.image_features import FEATURE_NAMES, image_features
from cbo_ros.perception.media import read_frames
from test_live_system import final_by_stamp, system, unanswered_report  # noqa: F401
from test_live_system import wait_all_answered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]
FRAMES = 30


def small_premodel(path):
    """A 1-NN premodel over the clip's frames: bright -> int8 Lite0, dark -> Lite2 fp32."""
    export_candidates(paths.models_dir(), log=lambda *_: None)
    frames = [f.rgb for f in read_frames('bikes.mp4', max_frames=FRAMES)[0]]
    features = np.stack([image_features(f) for f in frames])
    brightness = features[:, FEATURE_NAMES.index('brightness')]
    dark = brightness < np.median(brightness)
    correct = np.zeros((len(frames), len(CANDIDATES)))
    correct[~dark, 0] = 1.0
    correct[:, -1] = 1.0
    premodel = fit_premodel(features, correct, [0.003, 0.010, 0.015, 0.020], 0.0005,
                            PremodelConfig('knn', k=1), [c.name for c in CANDIDATES],
                            temperatures=[1.0, 1.0, 1.0, 1.5])
    premodel.save(path)
    return premodel, premodel.select_rows(features)


def test_premodel_cbo_runs_live_with_the_chosen_models(system):  # noqa: F811
    premodel_path = system.logs / 'premodel.npz'
    premodel, expected = small_premodel(premodel_path)
    assert set(expected) == {0, len(CANDIDATES) - 1}
    system.start_server()
    assert system.wait_for_server(), 'server did not come up:\n' + system.log('server')
    system.start_robot('--video', 'bikes.mp4', '--mode', 'once', '--max-frames', str(FRAMES),
                       '--rate', '5', '--start-delay', '2.0', '--strategy', 'premodel_cbo',
                       '--premodel', str(premodel_path),
                       '--params-file', system.robot_params(bandwidth_cap_bps=2e6))
    assert wait_all_answered(system, FRAMES, timeout=90), unanswered_report(system)
    recorder = system.recorder
    answers = final_by_stamp(recorder)
    assert len(answers) == FRAMES and all(len(v) == 1 for v in answers.values())
    local = sorted((m.header.stamp.sec, m.header.stamp.nanosec, m)
                   for _, _, m in recorder.snapshot('local_results'))
    local = [m for _, _, m in local if m.class_id]
    assert len(local) >= FRAMES - 2, [m.note for _, _, m in recorder.snapshot('local_results')]
    names = [c.name for c in CANDIDATES]
    chosen = [m.model for m in local]
    assert set(chosen) <= set(names), chosen
    assert all(m.note == f'local answer (premodel: {m.model})' for m in local)
    assert all(m.resolution == CANDIDATES[names.index(m.model)].input_size for m in local)
    # Same selection as offline on the same frames (frames published in order).
    if len(local) == FRAMES:
        agree = np.mean([names.index(m) == e for m, e in zip(chosen, expected)])
        assert agree >= 0.9, (chosen, expected.tolist())
    assert {names[0], names[-1]} <= set(chosen)
    # The chosen model's confidence is what premodel_cbo planned with.
    by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in local}
    decisions = [d for _, _, d in recorder.snapshot('decisions')]
    assert decisions and all(d.strategy == 'premodel_cbo' for d in decisions)
    planned = [(d, by_stamp[(d.header.stamp.sec, d.header.stamp.nanosec)]) for d in decisions
               if (d.header.stamp.sec, d.header.stamp.nanosec) in by_stamp]
    # On a loaded machine a local result (a big candidate on 2 shared cores) can reach the
    # planner after it decided; such a decision says so and planned with no confidence. Every
    # other decision planned with exactly the chosen model's confidence.
    missing = 'local result missing at deadline'
    late = [d for d, _ in planned if d.reason == missing]
    differ = [(d.local_confidence, m.calibrated_confidence, d.reason) for d, m in planned
              if d.reason != missing and abs(d.local_confidence - m.calibrated_confidence) > 1e-6]
    assert len(planned) >= FRAMES - 2 and not differ, differ
    assert len(late) <= FRAMES // 5, [d.reason for d in late]
    assert all(d.local_confidence == 0.0 for d in late), [d.local_confidence for d in late]
    assert 'premodel_cbo: server profiles' in system.log('robot')
