"""Trace-driven, deterministic replay of a video through every planner strategy.

Time model (see docs/evaluation.md): frame k is captured at t_k = k / fps, its local answer is
ready at t_k + local latency (when the planner decides), and its answer is due at t_k + deadline.
An offloaded frame's transfer starts when the uplink is free (FIFO), lasts as long as the trace's
bandwidth needs to carry its real JPEG bytes, and its answer arrives after the RTT and the server
time. A transfer is lost when a seeded uniform draw of the frame falls below the trace's loss
rate: its answer never arrives (no retransmission) and the local answer is used at the deadline,
like a late answer. The planner sees the trace's current bandwidth, RTT and loss as its estimate
and, like the live node, tracks the link's busy time from its own decisions. Server answers that
have arrived (late ones too, lost ones never) are fed back to the planner with
``observe_server_answer`` before the first decision at or after their arrival time.
"""

import heapq
import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from cbo_ros.assets.paths import ROBOT_INPUT_SIZE
from cbo_ros.core.calibration import max_softmax
from cbo_ros.core.early_exit import EARLY_EXIT_STRATEGIES
from cbo_ros.core.exact_solver import Job, JobOption, solve_exact
from cbo_ros.core.planner import (PREMODEL_STRATEGIES, FrameCandidate, LinkState, OffloadOption,
                                  make_planner, strategy_names)

EXACT_NAME = 'cbo_exact'


@dataclass
class SimulationConfig:
    """Replay settings shared by every strategy."""

    deadline_s: float = 0.2
    local_latency_s: float = 0.015
    fps: float = 0.0                 # 0: the media's frame rate
    robot_tag: str = 'int8'
    robot_resolution: int = ROBOT_INPUT_SIZE
    offload_resolutions: tuple = ()  # empty: the bundle's
    safety_margin_s: float = 0.005
    seed: int = 0
    p_tar: float = 0.7
    window: int = 50
    exact_quantum_s: float = 0.0     # 0: exact (the oracle is an upper bound); > 0: faster
    planner_options: dict = field(default_factory=dict)
    premodel: object = None          # a trained core.premodel.Premodel (premodel strategies)


@dataclass
class FrameData:
    """Per-frame inputs of the replay, shared by all strategies."""

    capture_s: np.ndarray
    ready_s: np.ndarray
    deadline_s: np.ndarray
    confidence: np.ndarray
    raw_confidence: np.ndarray
    local_correct: np.ndarray
    server_correct: dict           # resolution -> (N,) 0/1
    server_score: dict             # resolution -> (N,) server top-1 softmax (what it returns)
    candidates: list               # FrameCandidate per frame
    loss_draw: np.ndarray          # uniform draws deciding losses
    resolutions: list
    server_pred: dict = None       # resolution -> (N,) server top-1 (what it returns)
    labelled: np.ndarray = None    # (N,) bool: frames with labels (the only ones scored)


def prepare_frames(outputs, bundle, config):
    """Candidates (as the node builds them) and ground truth of every frame."""
    resolutions = [int(r) for r in (config.offload_resolutions or bundle.offload_resolutions)]
    missing = [r for r in resolutions if r not in outputs.server_pred]
    if missing:
        raise ValueError(f'outputs lack offload resolutions {missing}')
    logits = outputs.robot_logits[(config.robot_tag, int(config.robot_resolution))]
    confidence = bundle.calibrate_confidences(logits, config.robot_resolution)
    raw = max_softmax(logits)
    local_class = logits.argmax(axis=1)
    fps = float(config.fps or outputs.fps)
    n = len(outputs)
    capture = np.arange(n) / fps
    ready = capture + config.local_latency_s
    deadline = capture + config.deadline_s
    candidates = []
    for k in range(n):
        options = [OffloadOption(r, int(outputs.payload_bytes[r][k]),
                                 float(bundle.server_accuracy(r, confidence[k])),
                                 float(bundle.server_time_s(r))) for r in resolutions]
        candidates.append(FrameCandidate(k, float(ready[k]), float(deadline[k]),
                                         float(confidence[k]), options, float(raw[k]),
                                         int(local_class[k])))
    return FrameData(capture, ready, deadline, confidence, raw,
                     outputs.local_correct(config.robot_tag, config.robot_resolution),
                     {r: outputs.server_correct(r) for r in resolutions},
                     {r: outputs.server_score.get(r) for r in resolutions}, candidates,
                     np.random.default_rng(config.seed).random(n), resolutions,
                     {r: outputs.server_pred[r] for r in resolutions}, outputs.labelled)


def premodel_choices(outputs, premodel):
    """Per frame: the candidate the premodel picks, its logits, calibrated and raw confidence.

    ``outputs`` must hold every candidate's logits and the image features
    (``evaluation.premodel_data.attach_premodel_inputs``).
    """
    from cbo_ros.assets.premodel_models import candidate_by_name
    if outputs.features is None:
        raise ValueError(f'{outputs.name}: premodel strategies need the image features '
                         '(attach_premodel_inputs)')
    keys = [(c.tag, c.input_size) for c in map(candidate_by_name, premodel.candidates)]
    missing = [k for k in keys if k not in outputs.robot_logits]
    if missing:
        raise ValueError(f'{outputs.name}: outputs lack the premodel candidates {missing}')
    confidence0 = premodel.confidence(0, outputs.robot_logits[keys[0]]) \
        if premodel.config.use_confidence else None
    chosen = premodel.select_rows(premodel.inputs(outputs.features, confidence0))
    logits = np.stack([outputs.robot_logits[keys[m]][k] for k, m in enumerate(chosen)])
    confidence = np.array([premodel.confidence(m, logits[k])[0]
                           for k, m in enumerate(chosen)])
    return chosen, logits, confidence, max_softmax(logits)


def prepare_premodel_frames(outputs, bundle, config):
    """Frames answered locally by the premodel's choice (``prepare_frames`` otherwise).

    A frame is ready after ``local_latency_s`` plus the extra time of the premodel: feature
    extraction and the chosen model(s) beyond the cheapest one (their measured mean times).
    Offload options use the chosen model's server profile A_r(c).
    """
    premodel = config.premodel
    if premodel is None:
        raise ValueError('premodel strategies need a trained premodel (cbo_premodel build)')
    base = prepare_frames(outputs, bundle, config)
    chosen, logits, confidence, raw = premodel_choices(outputs, premodel)
    extra = premodel.frame_cost_s(chosen) - float(premodel.costs_s[0])
    ready = base.capture_s + config.local_latency_s + extra
    local_class = logits.argmax(axis=1)
    candidates = []
    for k, old in enumerate(base.candidates):
        options = [OffloadOption(o.resolution, o.payload_bytes,
                                 premodel.server_accuracy(int(chosen[k]), o.resolution,
                                                          float(confidence[k]),
                                                          bundle.server_accuracy),
                                 o.server_time_s) for o in old.options]
        candidates.append(FrameCandidate(k, float(ready[k]), old.deadline_s,
                                         float(confidence[k]), options, float(raw[k]),
                                         int(local_class[k])))
    return FrameData(base.capture_s, ready, base.deadline_s, confidence, raw,
                     outputs.correct(local_class), base.server_correct, base.server_score,
                     candidates, base.loss_draw, base.resolutions, base.server_pred,
                     base.labelled)


@dataclass
class Replay:
    """Per-frame outcome of one strategy."""

    name: str
    correct: np.ndarray
    resolution: np.ndarray        # 0 = answered locally
    late: np.ndarray              # offloaded but the answer missed the deadline
    lost: np.ndarray              # offloaded but the transfer was lost
    latency_s: np.ndarray
    payload_bytes: np.ndarray
    planned_gain: np.ndarray      # model gain of offloads predicted on time
    decision_s: np.ndarray
    confidence: np.ndarray = None  # local confidence the policy used for each frame (causal)


def replay(planner, frames, trace, bundle):
    """Run one planner over the frames and the trace; return its ``Replay``."""
    n = len(frames.candidates)
    correct = frames.local_correct.copy()
    resolution = np.zeros(n, dtype=int)
    late = np.zeros(n, dtype=bool)
    lost = np.zeros(n, dtype=bool)
    latency = frames.ready_s - frames.capture_s
    payload = np.zeros(n, dtype=np.int64)
    planned = np.zeros(n)
    decision_time = np.zeros(n)
    used_confidence = frames.confidence.astype(np.float64).copy()
    planner.reset()
    # Planners written before the optional ``server_class`` argument still work.
    takes_class = 'server_class' in inspect.signature(planner.observe_server_answer).parameters
    busy_planned, busy_true = 0.0, 0.0
    arrivals = []              # heap of (arrival time, seq, resolution) of answers in flight
    for k, candidate in enumerate(frames.candidates):
        now = float(frames.ready_s[k])
        while arrivals and arrivals[0][0] <= now:     # causal feedback: arrived answers only
            arrival, seq, r = heapq.heappop(arrivals)
            scores = frames.server_score.get(r)
            preds = (frames.server_pred or {}).get(r)
            extra = {'server_class': int(preds[seq])} if preds is not None and takes_class else {}
            planner.observe_server_answer(seq, r, None if scores is None else float(scores[seq]),
                                          now_s=arrival, **extra)
        bandwidth, rtt, loss = trace.at(now)
        link = LinkState(bandwidth, rtt, loss, reachable=bandwidth > 0, busy_until_s=busy_planned)
        start = time.perf_counter()
        decision = planner.decide(candidate, link, now)
        decision_time[k] = time.perf_counter() - start
        if decision.confidence is not None:
            used_confidence[k] = decision.confidence
        if not decision.offload:
            continue
        r = int(decision.resolution)
        option = next(o for o in candidate.options if o.resolution == r)
        busy_planned = max(busy_planned, float(decision.link_free_after_s))
        send = max(now, busy_true)
        busy_true = trace.transfer_finish(send, option.payload_bytes)
        _, rtt_true, loss_true = trace.at(send)
        answer = busy_true + rtt_true + bundle.server_time_s(r)
        resolution[k] = r
        payload[k] = option.payload_bytes
        lost[k] = frames.loss_draw[k] < loss_true
        late[k] = answer > frames.deadline_s[k]
        if not lost[k]:
            heapq.heappush(arrivals, (answer, k, r))
        if decision.expected_finish_s <= candidate.deadline_s:
            planned[k] = (1.0 - loss) * (option.server_accuracy - candidate.confidence)
        if late[k] or lost[k]:
            latency[k] = frames.deadline_s[k] - frames.capture_s[k]
        else:
            latency[k] = answer - frames.capture_s[k]
            correct[k] = frames.server_correct[r][k]
    return Replay(planner.name, correct, resolution, late, lost, latency, payload, planned,
                  decision_time, used_confidence)


def _jobs(frames, bundle, gain, deadlines):
    """Solver jobs: the RTT is added by the solver at each transfer's start (``rtt_at``)."""
    return [Job(k, candidate.arrival_s, float(deadlines[k]),
                [JobOption(o.resolution, o.payload_bytes, bundle.server_time_s(o.resolution),
                           gain(k, candidate, o)) for o in candidate.options])
            for k, candidate in enumerate(frames.candidates)]


def _rtt_at(trace):
    return lambda start_s: trace.at(start_s)[1]


def oracle_schedule(frames, trace, bundle, quantum_s=0.0):
    """Solve the upper bound, which knows the right answers and the lost transfers.

    It meets the true deadlines (no planning margin). A transfer's loss is drawn at its frame's
    arrival here and at its send time in the replay: they differ only when the trace's loss
    rate changes while the frame waits for the link.
    """
    def gain(k, candidate, option):
        lost = frames.loss_draw[k] < trace.at(candidate.arrival_s)[2]
        return 0.0 if lost else \
            frames.server_correct[option.resolution][k] - frames.local_correct[k]
    return solve_exact(_jobs(frames, bundle, gain, frames.deadline_s), trace.transfer_finish,
                       quantum_s=quantum_s, rtt_at=_rtt_at(trace))


def exact_model_schedule(frames, trace, bundle, quantum_s=0.0, safety_margin_s=0.0):
    """Solve the hindsight optimum of the planner's own model (the online policy's yardstick).

    Same model as the online planners: expected gains, deadlines less their ``safety_margin_s``.
    """
    def gain(k, candidate, option):
        loss = trace.at(candidate.arrival_s)[2]
        return (1.0 - loss) * (option.server_accuracy - candidate.confidence)
    deadlines = [c.deadline_s - safety_margin_s for c in frames.candidates]
    return solve_exact(_jobs(frames, bundle, gain, deadlines), trace.transfer_finish,
                       quantum_s=quantum_s, rtt_at=_rtt_at(trace))


def default_strategies(resolutions):
    """Every strategy of the planner plus the exact hindsight solver."""
    return strategy_names(resolutions) + [EXACT_NAME]


def run_strategies(outputs, bundle, trace, config, strategies=None):
    """Replay every strategy; return {name: Replay} and the prepared frames."""
    frames = prepare_frames(outputs, bundle, config)
    names = list(strategies or default_strategies(frames.resolutions))
    options = {'safety_margin_s': config.safety_margin_s, **config.planner_options}
    results = {}
    premodel_frames = None
    for name in names:
        if name in EARLY_EXIT_STRATEGIES:     # partitioned inference: its own replay
            from cbo_ros.evaluation.early_exit_eval import replay_early_exit
            results[name] = replay_early_exit(name, outputs, trace, config)
            continue
        if name in PREMODEL_STRATEGIES:
            if premodel_frames is None:
                premodel_frames = prepare_premodel_frames(outputs, bundle, config)
            planner = make_planner(name, bundle, window=config.window, **options)
            results[name] = replay(planner, premodel_frames, trace, bundle)
            continue
        if name == 'oracle':
            schedule = oracle_schedule(frames, trace, bundle, config.exact_quantum_s).schedule
            planner = make_planner('oracle', bundle, schedule=schedule, **options)
        elif name == EXACT_NAME:
            schedule = exact_model_schedule(frames, trace, bundle, config.exact_quantum_s,
                                            config.safety_margin_s).schedule
            planner = make_planner(EXACT_NAME, bundle, schedule=schedule, **options)
        elif name in ('raw_threshold', 'calibrated_threshold'):
            planner = make_planner(name, bundle, p_tar=config.p_tar, **options)
        elif name in ('cbo', 'cbo_uncalibrated', 'cbo_adaptive'):
            planner = make_planner(name, bundle, window=config.window, **options)
        else:
            planner = make_planner(name, bundle, **options)
        results[name] = replay(planner, frames, trace, bundle)
    return results, frames
