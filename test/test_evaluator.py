"""End to end on a short clip: cbo_calibrate then cbo_eval, with a temporary cache (no ROS)."""

import json

import numpy as np
import pytest

from cbo_ros.core.calibration import load_calibration
from cbo_ros.evaluation.outputs_cache import load_outputs
from cbo_ros.evaluation.simulator import SimulationConfig, run_strategies
from cbo_ros.evaluation.traces import NetworkTrace, TraceError, load_trace
from cbo_ros.perception.media import MediaError
from cbo_ros.tools import calibrate, evaluate

RESOLUTIONS = ['96', '224']


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('cbo_eval')
    calibration = root / 'cal.json'
    code = calibrate.main(['--media', 'cup', '--frames-per-video', '12', '--held-out', 'bikes',
                           '--held-out-frames', '12', '--offload-resolutions', *RESOLUTIONS,
                           '--cache-dir', str(root / 'cache'), '--output', str(calibration),
                           '--json', str(root / 'cal_metrics.json'), '--no-progress'])
    assert code == 0
    return root, calibration


def test_calibrate_writes_a_loadable_bundle_and_diagrams(workspace):
    root, calibration = workspace
    bundle = load_calibration(calibration)
    assert bundle.offload_resolutions == [96, 224]
    assert bundle.source_info['calibration_media'][0]['media'] == 'cup.mp4'
    assert bundle.source_info['labels'] == ['reference']
    assert (root / 'reliability_int8.png').stat().st_size > 1000
    metrics = json.loads((root / 'cal_metrics.json').read_text())['table']
    for tag in ('int8', 'fp32'):
        assert set(metrics[tag]['metrics']) == {'calibration', 'held_out'}
        assert 0.0 <= metrics[tag]['metrics']['held_out']['temperature']['ece'] <= 1.0


def test_eval_end_to_end_on_a_short_clip(workspace, capsys):
    root, calibration = workspace
    out = root / 'report.json'
    argv = ['bikes', '--max-frames', '24', '--bandwidth', '5e5', '--deadline-ms', '150',
            '--calibration', str(calibration), '--cache-dir', str(root / 'cache'),
            '--json', str(out), '--plots', str(root / 'plots'), '--no-progress']
    assert evaluate.main(argv) == 0
    table = capsys.readouterr().out
    assert 'cbo' in table and 'oracle' in table and 'local_only' in table
    report = json.loads(out.read_text())
    strategies = report['strategies']
    assert report['frames'] == 24 and report['labels'] == 'reference'
    assert strategies['local_only']['offloads'] == 0
    assert strategies['local_only']['bytes_sent'] == 0
    oracle = strategies['oracle']['accuracy']
    for name, s in strategies.items():
        assert 0.0 <= s['accuracy'] <= oracle + 1e-9, name
        assert s['latency_p99_ms'] >= s['latency_mean_ms'] - 1e-9
        assert sum(s['offload_share_per_resolution'].values()) == pytest.approx(
            s['offload_share'])
    for name in ('cbo', 'cbo_exact', 'oracle', 'calibrated_threshold', 'bandwidth_driven'):
        assert strategies[name]['deadline_misses'] == 0, name
    assert strategies['cbo_exact']['planned_gain'] >= strategies['cbo']['planned_gain'] - 1e-9
    assert (root / 'plots' / 'reliability.png').is_file()
    # Deterministic: the same run gives the same numbers.
    assert evaluate.main(argv) == 0
    again = json.loads(out.read_text())['strategies']
    assert {k: v['accuracy'] for k, v in again.items()} == \
        {k: v['accuracy'] for k, v in strategies.items()}


def test_loss_and_trace_replay(workspace, tmp_path):
    root, calibration = workspace
    bundle = load_calibration(calibration)
    outputs = load_outputs('bikes', robot_tags=('int8',), offload_resolutions=[96, 224],
                           max_frames=24, cache_dir=root / 'cache', progress=False)
    csv = tmp_path / 'trace.csv'
    csv.write_text('time,bandwidth_mbps,rtt_ms,loss\n0,2,20,0.5\n0.4,0.2,40,0.5\n')
    trace = load_trace(csv)
    results, frames = run_strategies(outputs, bundle, trace, SimulationConfig(seed=3),
                                     ['server_only_96', 'oracle', 'local_only'])
    lost = results['server_only_96'].lost
    assert 0 < lost.sum() < len(lost)
    assert results['oracle'].correct.mean() >= results['local_only'].correct.mean()
    assert not (results['oracle'].lost & (results['oracle'].resolution > 0)).any()
    # RTT rises 20 -> 40 ms: the exact solver's condition holds; a falling RTT is flagged.
    assert trace.rtt_never_falls()
    assert not NetworkTrace([0.0, 1.0], [1e6, 1e6], [0.05, 0.02], [0.0, 0.0]).rtt_never_falls()


def test_trace_transfer_times():
    trace = NetworkTrace([0.0, 1.0], [8000.0, 16000.0], [0.01, 0.01], [0.0, 0.0])
    assert trace.transfer_finish(0.0, 500) == pytest.approx(0.5)
    # 1000 bytes: 8000 bits in the first second, then nothing left.
    assert trace.transfer_finish(0.5, 1000) == pytest.approx(1.25)
    assert NetworkTrace([0.0], [0.0], [0.0], [0.0]).transfer_finish(0.0, 1) == np.inf
    with pytest.raises(TraceError):
        load_trace('/nonexistent/trace.csv')


def test_clear_errors_for_bad_media_and_calibration(tmp_path, capsys):
    bogus = tmp_path / 'bogus.mp4'
    bogus.write_bytes(b'not a video')
    with pytest.raises(MediaError):
        load_outputs(bogus, cache_dir=tmp_path, progress=False)
    assert evaluate.main(['bikes', '--calibration', str(tmp_path / 'missing.json')]) == 1
    assert 'cbo_calibrate' in capsys.readouterr().err


def test_replay_feeds_back_only_answers_that_have_arrived(workspace):
    from cbo_ros.evaluation.simulator import prepare_frames, replay
    from cbo_ros.core.planner import make_planner
    root, calibration = workspace
    bundle = load_calibration(calibration)
    outputs = load_outputs('bikes', robot_tags=('int8',), offload_resolutions=[96, 224],
                           max_frames=24, cache_dir=root / 'cache', progress=False)
    trace = NetworkTrace.constant(3e5, 0.02, 0.3)
    frames = prepare_frames(outputs, bundle, SimulationConfig(seed=1))
    inner = make_planner('server_only_96', bundle)
    events = []

    class Recorder:
        name = 'recorder'

        def reset(self):
            inner.reset()

        def decide(self, candidate, link, now_s):
            events.append(('decide', candidate.seq, now_s))
            return inner.decide(candidate, link, now_s)

        def observe_server_answer(self, seq, resolution, server_score, now_s=None):
            events.append(('answer', seq, now_s, resolution, server_score))

    result = replay(Recorder(), frames, trace, bundle)
    answers = [e for e in events if e[0] == 'answer']
    assert answers
    for position, event in enumerate(events):
        if event[0] != 'answer':
            continue
        _, seq, arrival, resolution, score = event
        assert not result.lost[seq] and result.resolution[seq] == resolution
        assert score == pytest.approx(float(outputs.server_score[resolution][seq]))
        decided = [e for e in events[:position] if e[0] == 'decide']
        # Delivered after its own decision, at or before the decision that follows it.
        assert any(e[1] == seq for e in decided)
        assert decided[-1][2] <= arrival + 1e-12 or decided[-1][1] == seq
        following = [e for e in events[position:] if e[0] == 'decide']
        assert not following or following[0][2] >= arrival - 1e-12
    assert {e[1] for e in answers} <= set(np.flatnonzero(~result.lost & (result.resolution > 0)))
