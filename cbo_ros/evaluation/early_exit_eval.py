"""Early-exit partition offloading offline: per-branch calibration and trace-driven replay.

``fit_early_exit_calibration`` fits one temperature per exit branch on the benchmark's
calibration split with true label sets (the project's ``TemperatureScaling``; every object
weighs the same), and records the exit shares vs ``p_tar`` (calibrated and raw) and the mean
tensor payload that the policy's partition choice needs; it writes
``artifacts/calibration/early_exit.json``.

``replay_early_exit`` replays a source through ``EarlyExitPolicy`` with the simulator's time
model (FIFO uplink over the trace, RTT, seeded losses): the robot's head time is the
simulator's local latency scaled by the measured head/full-model time ratio, the server time
the measured tail time. A frame offloaded in time is scored with the tail's answer on the
decoded tensor, otherwise (exit, late, lost) with its branch's answer.
"""

import json
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.core.calibration_metrics import expected_calibration_error
from cbo_ros.core.early_exit import (EARLY_EXIT_STRATEGIES, EarlyExitCalibration,
                                     EarlyExitPolicy, exit_rate_curve, fit_branch_temperatures,
                                     Partition, softmax_confidence)
from cbo_ros.core.planner import LinkState
from cbo_ros.evaluation.early_exit_outputs import load_early_exit_outputs, shared_model

CALIBRATION_FILE = 'early_exit.json'


def calibration_path():
    """Where the early-exit calibration is read from (first found) or written to."""
    return paths.find_artifact('calibration', CALIBRATION_FILE) or \
        paths.calibration_dir() / CALIBRATION_FILE


def load_early_exit_calibration(path=None):
    """Read the early-exit calibration; a clear error when it has not been fitted."""
    path = Path(path or calibration_path())
    if not path.is_file():
        raise FileNotFoundError(f'early-exit calibration {path} not found: fit it with '
                                '`python -m cbo_ros.evaluation.early_exit_eval calibrate`')
    return EarlyExitCalibration.from_dict(json.loads(path.read_text()))


def split_data(split, model=None):
    """Stacked early-exit outputs, label matrices and groups of a benchmark split."""
    from cbo_ros.evaluation.outputs_cache import load_outputs
    from cbo_ros.evaluation.pooling import benchmark_sources
    model = model or shared_model()
    exit_logits = {b: [] for b in model.blocks}
    tail_pred = {b: [] for b in model.blocks}
    sizes = {b: [] for b in model.blocks}
    labels, groups, jpeg = [], [], {r: [] for r in paths.OFFLOAD_RESOLUTIONS}
    for source in benchmark_sources(split):
        outputs = load_outputs(source.media, robot_tags=('int8',), progress=False)
        ee = load_early_exit_outputs(source.media, model)
        keep = outputs.labelled
        for b in model.blocks:
            exit_logits[b].append(ee.exit_logits[b][keep])
            tail_pred[b].append(ee.tail_pred[b][keep])
            sizes[b].append(ee.tensor_bytes[b])
        for r in jpeg:
            jpeg[r].append(outputs.payload_bytes[r])
        labels.append(outputs.labels[keep])
        groups += [source.group] * int(keep.sum())
    cat = {b: np.concatenate(v) for b, v in exit_logits.items()}
    return {'exit_logits': cat, 'tail_pred': {b: np.concatenate(v) for b, v in tail_pred.items()},
            'tensor_bytes': {b: np.concatenate(v) for b, v in sizes.items()},
            'jpeg_bytes': {r: np.concatenate(v) for r, v in jpeg.items()},
            'labels': np.concatenate(labels), 'groups': np.asarray(groups)}


def _correct(logits_or_pred, labels):
    pred = logits_or_pred if logits_or_pred.ndim == 1 else logits_or_pred.argmax(axis=1)
    return labels[np.arange(len(pred)), pred].astype(np.float64)


def fit_early_exit_calibration(split='calibration', evaluation_split='evaluation',
                               model=None):
    """Fit per-branch temperatures on ``split``; ECE before/after on ``evaluation_split``."""
    from cbo_ros.core.calibration_fit import video_weights
    model = model or shared_model()
    data = split_data(split, model)
    weights = video_weights(data['groups'])
    temperatures = fit_branch_temperatures(data['exit_logits'], data['labels'], weights)
    curves = {'calibrated': {}, 'raw': {}}
    for b, logits in data['exit_logits'].items():
        curves['calibrated'][b] = exit_rate_curve(softmax_confidence(logits, temperatures[b]))
        curves['raw'][b] = exit_rate_curve(softmax_confidence(logits))
    metrics = {'fit_split': split, 'frames': int(len(data['labels']))}
    if evaluation_split:
        held = split_data(evaluation_split, model)
        metrics['held_out'] = {'split': evaluation_split, 'frames': int(len(held['labels'])),
                               'branches': branch_metrics(held, temperatures)}
    calibration = EarlyExitCalibration(
        temperatures, curves,
        {b: float(np.mean(v)) for b, v in data['tensor_bytes'].items()}, metrics)
    return calibration, data


def branch_metrics(data, temperatures):
    """Per branch: accuracy, ECE raw vs calibrated, mean confidences, tail accuracy, bytes."""
    rows = {}
    for b, logits in data['exit_logits'].items():
        correct = _correct(logits, data['labels'])
        raw = softmax_confidence(logits)
        cal = softmax_confidence(logits, temperatures[b])
        rows[str(b)] = {
            'temperature': float(temperatures[b]), 'branch_accuracy': float(correct.mean()),
            'tail_accuracy': float(_correct(data['tail_pred'][b], data['labels']).mean()),
            'mean_raw_confidence': float(raw.mean()), 'mean_calibrated_confidence':
                float(cal.mean()),
            'ece_raw': float(expected_calibration_error(raw, correct)),
            'ece_calibrated': float(expected_calibration_error(cal, correct)),
            'tensor_bytes_mean': float(np.mean(data['tensor_bytes'][b])),
            'tensor_bytes_p95': float(np.percentile(data['tensor_bytes'][b], 95))}
    rows['jpeg_bytes_mean'] = {str(r): float(np.mean(v)) for r, v in data['jpeg_bytes'].items()}
    return rows


def make_policy(name, calibration=None, model=None, p_tar=0.7, local_latency_s=0.015,
                safety_margin_s=0.005):
    """Build the ``EarlyExitPolicy`` of strategy ``name`` with the parts' measured times.

    The head time is ``local_latency_s`` (the robot's full-model time) scaled by the measured
    head/full time ratio; the tail time is measured.
    """
    if name not in EARLY_EXIT_STRATEGIES:
        raise ValueError(f'not an early-exit strategy: {name!r}')
    model = model or shared_model()
    calibration = calibration or load_early_exit_calibration()
    full_ms = float(model.manifest['full_ms'])
    partitions = [Partition(b, local_latency_s * float(p['head_ms']) / full_ms,
                            float(p['tail_ms']) / 1e3, calibration.tensor_bytes[b])
                  for b, p in sorted(model.partitions.items())]
    return EarlyExitPolicy(partitions, calibration, calibrated=name == EARLY_EXIT_STRATEGIES[0],
                           p_tar=p_tar, safety_margin_s=safety_margin_s)


def replay_early_exit(name, outputs, trace, config, calibration=None, model=None, ee=None):
    """Replay one early-exit strategy over ``outputs``' frames; return a simulator ``Replay``.

    ``Replay.resolution`` holds the partition's blocks of offloaded frames (0: exit).
    """
    from cbo_ros.evaluation.simulator import Replay
    model = model or shared_model()
    policy = make_policy(name, calibration, model, config.p_tar, config.local_latency_s,
                         config.safety_margin_s)
    n = len(outputs)
    ee = ee or load_early_exit_outputs(outputs.source, model, max_frames=n)
    if len(ee) != n or getattr(outputs, 'stride', 1) != 1:
        raise ValueError(f'early-exit outputs of {outputs.source} have {len(ee)} frames, the '
                         f'replay {n} (stride {outputs.stride}): only stride 1 is supported')
    by_blocks = {p.blocks: p for p in policy.partitions}
    confidence = {b: policy.confidence(b, ee.exit_logits[b]) for b in by_blocks}
    exit_correct = {b: outputs.correct(ee.exit_logits[b].argmax(axis=1)) for b in by_blocks}
    tail_correct = {b: outputs.correct(ee.tail_pred[b]) for b in by_blocks}
    capture = np.arange(n) / float(config.fps or outputs.fps)
    deadline = capture + config.deadline_s
    loss_draw = np.random.default_rng(config.seed).random(n)
    correct = np.zeros(n)
    resolution = np.zeros(n, dtype=int)
    late, lost = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    latency, payload = np.zeros(n), np.zeros(n, dtype=np.int64)
    decision_time, used = np.zeros(n), np.zeros(n)
    busy_planned = busy_true = 0.0
    for k in range(n):
        now = float(capture[k])
        bandwidth, rtt, loss = trace.at(now)
        link = LinkState(bandwidth, rtt, loss, reachable=bandwidth > 0,
                         busy_until_s=busy_planned)
        tick = time.perf_counter()
        part = policy.choose_partition(link, now, deadline[k]).partition
        b = part.blocks
        ready = now + part.head_s
        size = int(ee.tensor_bytes[b][k])
        decision = policy.decide(k, part, confidence[b][k], size, link, ready, deadline[k])
        decision_time[k] = time.perf_counter() - tick
        used[k] = confidence[b][k]
        correct[k] = exit_correct[b][k]
        latency[k] = part.head_s
        if not decision.offload:
            continue
        busy_planned = max(busy_planned, decision.link_free_after_s)
        send = max(ready, busy_true)
        busy_true = trace.transfer_finish(send, size)
        _, rtt_true, loss_true = trace.at(send)
        answer = busy_true + rtt_true + part.tail_s
        resolution[k], payload[k] = b, size
        lost[k] = loss_draw[k] < loss_true
        late[k] = answer > deadline[k]
        if late[k] or lost[k]:
            latency[k] = config.deadline_s
        else:
            latency[k] = answer - now
            correct[k] = tail_correct[b][k]
    return Replay(policy.name, correct, resolution, late, lost, latency, payload,
                  np.zeros(n), decision_time, used)


def main(argv=None):
    """``calibrate``: fit and write the early-exit calibration; print the branch metrics."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('command', choices=['calibrate'])
    parser.add_argument('--split', default='calibration')
    parser.add_argument('--evaluation-split', default='evaluation')
    parser.add_argument('--output', default=None)
    args = parser.parse_args(argv)
    calibration, _ = fit_early_exit_calibration(args.split, args.evaluation_split)
    out = Path(args.output or paths.calibration_dir() / CALIBRATION_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(calibration.to_dict(), indent=2))
    print(json.dumps(calibration.metrics, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
