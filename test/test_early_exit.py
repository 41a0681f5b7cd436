"""Early-exit partition offloading: partition choice, exit rule, branch temperatures, tensors."""

import zlib

import numpy as np
import pytest

from cbo_common.tensor_codec import (decode_tensor, encode_tensor, TensorPayload,
                                     TensorPayloadError)
from cbo_ros.core.early_exit import (choose_partition, EarlyExitCalibration, EarlyExitPolicy,
                                     exit_rate_curve, fit_branch_temperatures,
                                     interpolate_exit_rate, P_TAR_GRID, Partition,
                                     softmax_confidence)
from cbo_ros.core.planner import LinkState

EARLY = Partition(5, head_s=0.002, tail_s=0.004, tensor_bytes=8000, exit_rate=0.05)
MIDDLE = Partition(8, head_s=0.003, tail_s=0.003, tensor_bytes=4000, exit_rate=0.10)
LATE = Partition(15, head_s=0.006, tail_s=0.001, tensor_bytes=2500, exit_rate=0.30)


def test_partition_choice_minimises_expected_completion():
    link = LinkState(1e6, 0.02)
    choice = choose_partition([EARLY, MIDDLE, LATE], link, 0.0, 0.2)
    # b15: 0.006 + 0.7 * (0.02 + 0.02 + 0.001) beats b8 and b5 (more bytes, fewer exits)
    assert choice.partition.blocks == 15 and choice.meets_deadline
    expected = 0.3 * 0.006 + 0.7 * (0.006 + 8 * 2500 / 1e6 + 0.02 + 0.001)
    assert choice.expected_finish_s == pytest.approx(expected)


def test_partition_choice_prefers_early_cheap_head_on_a_fast_link():
    # On a fast link the head time dominates: the shallowest partition finishes first.
    link = LinkState(1e9, 0.0005)
    slow_heads = [Partition(5, 0.001, 0.004, 8000, 0.0), Partition(15, 0.02, 0.001, 2500, 0.3)]
    assert choose_partition(slow_heads, link, 0.0, 0.2).partition.blocks == 5


def test_partition_choice_respects_the_deadline_and_busy_link():
    link = LinkState(1e6, 0.02, busy_until_s=0.15)
    # b5/b8 offloads would arrive after 0.2 - 0.005; only b15 meets it
    choice = choose_partition([EARLY, MIDDLE, LATE], link, 0.0, 0.2)
    assert choice.partition.blocks == 15 and choice.meets_deadline
    assert choice.offload_finish_s <= 0.195
    # nothing meets it: the deepest head that fits answers locally
    busy = LinkState(1e6, 0.02, busy_until_s=1.0)
    choice = choose_partition([EARLY, MIDDLE, LATE], busy, 0.0, 0.2)
    assert not choice.meets_deadline and choice.partition.blocks == 15
    tight = choose_partition([EARLY, MIDDLE, LATE], busy, 0.0, 0.0075)
    assert tight.partition.blocks == 5 and 'locally' in tight.reason
    down = choose_partition([EARLY, MIDDLE, LATE], LinkState(0.0, 0.02), 0.0, 0.2)
    assert not down.meets_deadline and 'link unusable' in down.reason
    with pytest.raises(ValueError):
        choose_partition([], link, 0.0, 0.2)


def _calibration(temps=None):
    grid = np.array(P_TAR_GRID)
    curve = list(1.0 - grid)
    return EarlyExitCalibration(temps or {5: 2.0, 8: 1.5, 15: 1.0},
                                {'calibrated': {5: curve, 8: curve, 15: curve},
                                 'raw': {5: curve, 8: curve, 15: curve}},
                                {5: 8000.0, 8: 4000.0, 15: 2500.0})


def test_policy_exits_when_confident_and_offloads_in_time():
    policy = EarlyExitPolicy([EARLY, MIDDLE, LATE], _calibration(), p_tar=0.6)
    assert all(p.exit_rate == pytest.approx(0.4) for p in policy.partitions)
    link = LinkState(1e6, 0.02)
    choice = policy.choose_partition(link, 0.0, 0.2)
    part = choice.partition
    confident = policy.decide(1, part, 0.9, 2500, link, part.head_s, 0.2)
    assert not confident.offload and 'exit' in confident.reason
    unsure = policy.decide(2, part, 0.3, 2500, link, part.head_s, 0.2)
    assert unsure.offload and unsure.resolution == part.blocks
    assert unsure.expected_finish_s <= 0.2
    late = policy.decide(3, part, 0.3, 2500, LinkState(1e6, 0.02, busy_until_s=0.5),
                         part.head_s, 0.2)
    assert not late.offload and 'deadline' in late.reason
    # a payload much larger than expected would miss the deadline: answer locally
    assert not policy.decide(4, part, 0.3, 60000, link, part.head_s, 0.2).offload


def test_uncalibrated_policy_uses_the_raw_softmax():
    logits = np.array([[4.0, 1.0, 0.0]])
    calibrated = EarlyExitPolicy([EARLY], _calibration({5: 3.0}), calibrated=True)
    raw = EarlyExitPolicy([EARLY], _calibration({5: 3.0}), calibrated=False)
    assert raw.name == 'early_exit_partition_uncalibrated'
    assert raw.confidence(5, logits)[0] == pytest.approx(softmax_confidence(logits)[0])
    assert calibrated.confidence(5, logits)[0] < raw.confidence(5, logits)[0]


def test_exit_rate_curve_and_interpolation():
    curve = exit_rate_curve([0.1, 0.5, 0.9, 0.95])
    assert curve[0] == 1.0 and curve[-1] == 0.0
    assert interpolate_exit_rate(curve, 0.5) == pytest.approx(0.75)
    assert interpolate_exit_rate(curve, 0.925) == pytest.approx(0.375)


def test_per_branch_temperature_recovered_on_synthetic_logits():
    rng = np.random.default_rng(0)
    n, classes = 4000, 20
    logits, labels = {}, None
    true_temps = {5: 0.5, 8: 2.5}
    base = rng.normal(0, 1.5, (n, classes))
    labels = np.array([rng.choice(classes, p=np.exp(r) / np.exp(r).sum()) for r in base])
    for blocks, temp in true_temps.items():
        # branch logits whose calibrated form is softmax(logits / temp) = the true distribution
        logits[blocks] = base * temp
    fitted = fit_branch_temperatures(logits, labels)
    for blocks, temp in true_temps.items():
        assert fitted[blocks] == pytest.approx(temp, rel=0.1)
    restored = EarlyExitCalibration.from_dict(_calibration(fitted).to_dict())
    assert restored.temperatures == fitted


def test_tensor_round_trip_and_size():
    rng = np.random.default_rng(0)
    tensor = rng.normal(0, 2, (1, 40, 16, 16)).astype(np.float32)
    payload = encode_tensor(tensor)
    assert payload.shape == (1, 40, 16, 16) and payload.dtype == 'uint8'
    assert len(payload.data) <= tensor.size + 64
    decoded = decode_tensor(payload, expected_shape=(1, 40, 16, 16))
    assert np.abs(decoded - tensor).max() <= payload.scale * 0.51


@pytest.mark.parametrize('change, reason', [
    ({'shape': (1, 40, 16, 8)}, 'does not match the partition'),
    ({'shape': (1, 0, 16, 16)}, 'every dimension'),
    ({'dtype': 'float32'}, 'not supported'),
    ({'scale': float('nan')}, 'scale'),
    ({'scale': 0.0}, 'scale'),
    ({'zero_point': 300}, 'zero_point'),
    ({'data': b''}, 'empty'),
    ({'data': b'not zlib at all'}, 'not zlib'),
    ({'data': zlib.compress(bytes(100))}, 'needs 10240'),
    ({'data': zlib.compress(bytes(10_000_000))}, 'more than'),
])
def test_malformed_tensors_refused_with_a_reason(change, reason):
    good = encode_tensor(np.ones((1, 40, 16, 16), np.float32))
    fields = dict(shape=good.shape, dtype=good.dtype, scale=good.scale,
                  zero_point=good.zero_point, data=good.data)
    fields.update(change)
    with pytest.raises(TensorPayloadError, match=reason):
        decode_tensor(TensorPayload(**fields), expected_shape=(1, 40, 16, 16))


def test_tensor_size_limit_checked_before_decompression():
    payload = encode_tensor(np.random.default_rng(1).normal(size=(1, 40, 16, 16)))
    with pytest.raises(TensorPayloadError, match='exceeds the limit'):
        decode_tensor(payload, max_bytes=100)


def _replay_inputs(n=40, classes=10):
    from types import SimpleNamespace

    from cbo_ros.evaluation.early_exit_outputs import EarlyExitOutputs
    from cbo_ros.evaluation.outputs_cache import VideoOutputs
    rng = np.random.default_rng(3)
    truth = rng.integers(0, classes, n)
    labels = np.zeros((n, classes), bool)
    labels[np.arange(n), truth] = True
    outputs = VideoOutputs('clip', 'clip.avi', 10.0, np.arange(n) / 10.0, labels, 'true',
                           truth, [str(i) for i in range(n)],
                           robot_logits={('int8', 128): rng.normal(size=(n, classes))})
    wrong = (truth + 1) % classes
    exit_logits = np.full((n, classes), 0.0)
    exit_logits[np.arange(n), wrong] = 4.0           # confident and always wrong
    ee = EarlyExitOutputs({15: exit_logits}, {15: truth.copy()}, {15: np.full(n, 0.9)},
                          {15: np.full(n, 2500)})
    model = SimpleNamespace(manifest={'full_ms': 4.0},
                            partitions={15: {'head_ms': 3.0, 'tail_ms': 0.5}})
    grid = np.array(P_TAR_GRID)
    calibration = EarlyExitCalibration({15: 20.0}, {'calibrated': {15: list(0 * grid)},
                                                    'raw': {15: list(1.0 - grid)}},
                                       {15: 2500.0})
    return outputs, ee, model, calibration


def test_offline_replay_calibrated_offloads_overconfident_branch_and_uncalibrated_exits():
    from cbo_ros.evaluation.early_exit_eval import replay_early_exit
    from cbo_ros.evaluation.simulator import SimulationConfig
    from cbo_ros.evaluation.traces import NetworkTrace
    outputs, ee, model, calibration = _replay_inputs()
    config = SimulationConfig(deadline_s=0.2, p_tar=0.5)
    trace = NetworkTrace.constant(1e6, 0.02)
    cal = replay_early_exit('early_exit_partition', outputs, trace, config, calibration,
                            model, ee)
    raw = replay_early_exit('early_exit_partition_uncalibrated', outputs, trace, config,
                            calibration, model, ee)
    # raw softmax of the branch is ~0.82 >= p_tar: every frame exits, always wrong
    assert (raw.resolution == 0).all() and raw.correct.sum() == 0
    # temperature 20 makes it unsure: every frame offloaded, the tail answers (right) in time
    assert (cal.resolution == 15).all() and cal.correct.mean() == 1.0
    assert not cal.late.any() and (cal.payload_bytes == 2500).all()
    assert (cal.latency_s < 0.2).all()
    # a link too slow for the deadline: the branch answers every frame
    slow = replay_early_exit('early_exit_partition', outputs, NetworkTrace.constant(1e4, 0.02),
                             config, calibration, model, ee)
    assert (slow.resolution == 0).all()
