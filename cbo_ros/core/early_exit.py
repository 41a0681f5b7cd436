"""Early-exit partition offloading policy (ROS-free, numpy only).

The robot runs the first ``blocks`` blocks of an early-exit model (the *head* of a partition)
and its exit branch. When the branch's confidence reaches ``p_tar`` the robot answers; otherwise
it sends the intermediate tensor (quantised, compressed) to the server, which runs the *tail*.
Before a frame is processed the partition point is chosen from the link: the partition with the
smallest expected completion time

    E[T_p] = head_p + (1 - e_p) * (wait + transfer(bytes_p) + rtt + tail_p)

(``e_p``: the share of frames the branch answers at ``p_tar``, measured on the calibration
split) among those whose offloaded answer would still meet the deadline. When none would, the
deepest partition whose head meets the deadline answers locally. ``calibrated=False`` uses the
branches' raw max-softmax (temperature 1) and the exit shares measured with it: the
uncalibrated variant whose accuracy loss temperature scaling is meant to fix.
The offline evaluator and live nodes call the same ``EarlyExitPolicy``.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from cbo_ros.core.planner import Decision, LinkState, link_usable, transfer_seconds

EARLY_EXIT_STRATEGIES = ('early_exit_partition', 'early_exit_partition_uncalibrated')
P_TAR_GRID = tuple(round(0.05 * i, 2) for i in range(21))


@dataclass
class Partition:
    """One partition point of the early-exit model."""

    blocks: int                 # blocks run on the robot (the exit branch reads block ``blocks``)
    head_s: float               # robot time: blocks + exit branch
    tail_s: float               # server time: the remaining blocks and the classifier
    tensor_bytes: float         # expected payload of the intermediate tensor (compressed)
    exit_rate: float = 0.0      # expected share of frames answered by the branch at p_tar


@dataclass
class PartitionChoice:
    """The partition chosen for a frame and why."""

    partition: Partition
    expected_finish_s: float    # absolute expected completion (exit or offload)
    offload_finish_s: float     # absolute completion if the frame is offloaded
    meets_deadline: bool        # an offloaded answer would arrive in time
    reason: str = ''


def offload_finish_s(partition: Partition, link: LinkState, start_s: float,
                     payload_bytes: Optional[float] = None) -> float:
    """Absolute arrival of the server's answer when the head starts at ``start_s``."""
    ready = float(start_s) + partition.head_s
    size = partition.tensor_bytes if payload_bytes is None else payload_bytes
    send = max(ready, float(link.busy_until_s))
    return send + transfer_seconds(size, link.bandwidth_bps) + float(link.rtt_s) + \
        partition.tail_s


def choose_partition(partitions: Sequence[Partition], link: LinkState, now_s: float,
                     deadline_s: float, safety_margin_s: float = 0.005) -> PartitionChoice:
    """Return the partition with the smallest expected completion that meets the deadline.

    See the module doc; ``partitions`` must not be empty.
    """
    if not partitions:
        raise ValueError('no partition to choose from')
    due = float(deadline_s) - float(safety_margin_s)
    usable = link_usable(link)
    best = None
    for p in partitions:
        local = float(now_s) + p.head_s
        if not usable:
            continue
        offload = offload_finish_s(p, link, now_s)
        expected = p.exit_rate * local + (1.0 - p.exit_rate) * offload
        if offload <= due and (best is None or expected < best.expected_finish_s):
            best = PartitionChoice(p, expected, offload, True,
                                   f'b{p.blocks}: expected {1e3 * (expected - now_s):.1f} ms')
    if best is not None:
        return best
    in_time = [p for p in partitions if float(now_s) + p.head_s <= due] or \
        [min(partitions, key=lambda p: p.head_s)]
    p = max(in_time, key=lambda p: p.blocks)
    why = 'link unusable' if not usable else 'no offload meets the deadline'
    offload = offload_finish_s(p, link, now_s) if usable else math.inf
    return PartitionChoice(p, float(now_s) + p.head_s, offload, False,
                           f'{why}: b{p.blocks} answers locally')


def softmax_confidence(logits, temperature: float = 1.0) -> np.ndarray:
    """Max softmax of ``logits / temperature`` per row."""
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64)) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def exit_rate_curve(confidences, grid: Sequence[float] = P_TAR_GRID) -> List[float]:
    """Share of frames with confidence >= p for each p of ``grid``."""
    conf = np.asarray(confidences, dtype=np.float64)
    return [float(np.mean(conf >= p)) if len(conf) else 0.0 for p in grid]


def interpolate_exit_rate(curve: Sequence[float], p_tar: float,
                          grid: Sequence[float] = P_TAR_GRID) -> float:
    """Exit share at ``p_tar`` from a curve on ``grid`` (linear interpolation)."""
    return float(np.interp(float(p_tar), grid, curve))


def fit_branch_temperatures(exit_logits: Dict[int, np.ndarray], labels,
                            weights=None) -> Dict[int, float]:
    """Temperature of each branch, fitted by NLL on true labels (the project's fitter)."""
    from cbo_ros.core.calibration import TemperatureScaling
    return {int(k): TemperatureScaling().fit(v, labels, weights).temperature
            for k, v in exit_logits.items()}


@dataclass
class EarlyExitCalibration:
    """What the policy needs from the calibration split, per partition (``blocks``)."""

    temperatures: Dict[int, float]
    exit_curves: Dict[str, Dict[int, List[float]]]   # 'calibrated'/'raw' -> blocks -> curve
    tensor_bytes: Dict[int, float]
    metrics: dict = field(default_factory=dict)

    def to_dict(self):
        """JSON-serialisable form (``from_dict`` reads it back)."""
        return {'temperatures': {str(k): v for k, v in self.temperatures.items()},
                'exit_curves': {kind: {str(k): v for k, v in curves.items()}
                                for kind, curves in self.exit_curves.items()},
                'p_tar_grid': list(P_TAR_GRID),
                'tensor_bytes': {str(k): v for k, v in self.tensor_bytes.items()},
                'metrics': self.metrics}

    @classmethod
    def from_dict(cls, data):
        """Rebuild from ``to_dict``'s form."""
        def keyed(d):
            return {int(k): v for k, v in d.items()}
        return cls(keyed(data['temperatures']),
                   {kind: keyed(c) for kind, c in data['exit_curves'].items()},
                   keyed(data['tensor_bytes']), data.get('metrics', {}))


class EarlyExitPolicy:
    """Partition choice and exit-or-offload of one early-exit strategy (see the module doc)."""

    def __init__(self, partitions: Sequence[Partition], calibration: EarlyExitCalibration,
                 calibrated: bool = True, p_tar: float = 0.7,
                 safety_margin_s: float = 0.005) -> None:
        self.calibrated = bool(calibrated)
        self.p_tar = float(p_tar)
        self.safety_margin_s = float(safety_margin_s)
        self.calibration = calibration
        kind = 'calibrated' if self.calibrated else 'raw'
        self.partitions = [
            Partition(p.blocks, p.head_s, p.tail_s,
                      float(calibration.tensor_bytes.get(p.blocks, p.tensor_bytes)),
                      interpolate_exit_rate(calibration.exit_curves[kind][p.blocks], self.p_tar))
            for p in partitions]
        self.name = EARLY_EXIT_STRATEGIES[0] if self.calibrated else EARLY_EXIT_STRATEGIES[1]

    def temperature(self, blocks: int) -> float:
        """Temperature the policy applies to branch ``blocks`` (1 when uncalibrated)."""
        return float(self.calibration.temperatures[int(blocks)]) if self.calibrated else 1.0

    def confidence(self, blocks: int, exit_logits) -> np.ndarray:
        """Branch confidence of each row of ``exit_logits`` as this policy sees it."""
        return softmax_confidence(exit_logits, self.temperature(blocks))

    def choose_partition(self, link: LinkState, now_s: float,
                         deadline_s: float) -> PartitionChoice:
        """Partition for a frame whose head starts at ``now_s``."""
        return choose_partition(self.partitions, link, now_s, deadline_s, self.safety_margin_s)

    def decide(self, seq: int, partition: Partition, confidence: float, payload_bytes: float,
               link: LinkState, now_s: float, deadline_s: float) -> Decision:
        """Exit (answer locally) or offload the tensor; ``now_s``: when the head has run.

        The Decision's ``resolution`` field holds the partition's ``blocks``.
        """
        conf = float(confidence)
        if conf >= self.p_tar:
            return Decision(seq, False, expected_accuracy=conf, confidence=conf,
                            reason=f'exit b{partition.blocks}: {conf:.2f} >= p_tar '
                                   f'{self.p_tar:.2f}')
        if not link_usable(link):
            return Decision(seq, False, expected_accuracy=conf, confidence=conf,
                            reason=f'exit b{partition.blocks}: link unusable')
        ready = float(now_s) - partition.head_s
        finish = offload_finish_s(partition, link, ready, payload_bytes)
        if finish > float(deadline_s) - self.safety_margin_s:
            return Decision(seq, False, expected_accuracy=conf, confidence=conf,
                            reason=f'exit b{partition.blocks}: offload would miss the deadline')
        send = max(float(now_s), float(link.busy_until_s))
        free = send + transfer_seconds(payload_bytes, link.bandwidth_bps)
        return Decision(seq, True, resolution=int(partition.blocks),
                        payload_bytes=int(payload_bytes), expected_accuracy=conf,
                        expected_finish_s=float(finish), link_free_after_s=float(free),
                        confidence=conf,
                        reason=f'offload b{partition.blocks}: {conf:.2f} < p_tar {self.p_tar:.2f}')
