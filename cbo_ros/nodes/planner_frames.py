"""Frames of offload_planner_node on their way to one final answer (no node of their own).

:class:`FrameBook` joins a frame's image and local answer by ``header.stamp``, numbers frames in
order of first sight, refuses frames already answered and results replayed from before the
planner started, and :func:`final_result` builds the one ``result`` message of a frame. A frame
whose deadline passed before the planner first saw it (a stamp of 0, a stamp from the past, a
clock far behind) is still answered exactly once, late, with a note saying so
(``deadline passed before planning``).
"""

import collections
import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from cbo_interfaces.msg import FrameClassification, OffloadDecision
from std_msgs.msg import Header

from cbo_ros.nodes.ros_common import ns_to_stamp, stamp_to_ns


LATE_NOTE = 'deadline passed before planning'


class FrameStage(enum.Enum):
    """Where a frame is on its way to its final answer."""

    WAITING = 'waiting'          # for its local answer and image
    DECIDED = 'decided'          # answered locally (or about to be)
    OFFLOADED = 'offloaded'      # waiting for the server's answer


@dataclass
class FrameState:
    """Bookkeeping of one frame until its final answer is published."""

    key: int                                 # header.stamp in ns (the join key)
    seq: int
    header: Header
    deadline_ns: int
    rgb: Optional[np.ndarray] = None         # RGB frame (dropped once the decision is made)
    image_error: str = ''
    image_seen: bool = False                 # an image_raw message with this stamp arrived
    local: Optional[FrameClassification] = None    # from npu_classifier_node
    stage: FrameStage = FrameStage.WAITING
    decision: Optional[OffloadDecision] = None     # published for this frame
    confidence: Optional[float] = None       # local confidence the policy used (adaptive)
    latency: Dict[str, float] = field(default_factory=dict)
    answer_by_ns: Optional[int] = None       # late on arrival: answer by then, not by deadline

    @property
    def late(self) -> bool:
        """Whether the deadline had passed when the planner first saw the frame."""
        return self.answer_by_ns is not None


class FrameBook:
    """The frames in flight, by stamp, and the stamps recently answered."""

    def __init__(self, started_ns: int) -> None:
        # Results published before this planner started were a previous instance's to answer
        # (local_result is transient-local): answering them again would duplicate them.
        self.started_ns = started_ns
        self.frames: Dict[int, FrameState] = collections.OrderedDict()
        self.answered: Dict[int, bool] = collections.OrderedDict()
        self.seq = 0

    def __len__(self) -> int:
        """Return the number of frames in flight."""
        return len(self.frames)

    def frame_for(self, header: Header, deadline_ns: int, now_ns: int, late_wait_ns: int,
                  published_ns: Optional[int] = None) -> Tuple[Optional[FrameState], str]:
        """Return ``(state, 'new', 'late' or '')``; ``(None, why)`` for a frame not to answer.

        ``published_ns``: when the message was published (its source timestamp; None:
        unknown). A message published before the planner started, of a frame already due then,
        is a replay of a previous instance's input. A frame first seen after its deadline is
        answered within ``late_wait_ns`` (time for its local answer to arrive).
        """
        key = stamp_to_ns(header.stamp)
        if key in self.answered:
            return None, 'answered'
        due_ns = key + deadline_ns
        replayed = published_ns is None or published_ns < self.started_ns
        if due_ns < self.started_ns and replayed:
            return None, 'due_before_start'
        state = self.frames.get(key)
        if state is None:
            state = FrameState(key=key, seq=self.seq, header=header, deadline_ns=due_ns)
            self.seq += 1
            self.frames[key] = state
            if due_ns <= now_ns:
                state.answer_by_ns = now_ns + late_wait_ns
                return state, 'late'
            return state, 'new'
        return state, ''

    def image_answered(self, header: Header) -> bool:
        """Tell whether a frame with this header's stamp and its image was answered already."""
        return bool(self.answered.get(stamp_to_ns(header.stamp)))

    def get(self, key: int) -> Optional[FrameState]:
        """Return the frame in flight with stamp ``key`` (None: answered or unknown)."""
        return self.frames.get(key)

    def oldest(self) -> FrameState:
        """Return the frame in flight seen first."""
        return next(iter(self.frames.values()))

    def due(self, now_ns: int, margin_ns: int) -> List[FrameState]:
        """Return the frames to answer now: ``margin_ns`` or less before their deadline."""
        return [f for f in self.frames.values() if now_ns >= self.due_ns(f, margin_ns)]

    def due_times_ns(self, margin_ns: int) -> List[int]:
        """Return when each frame in flight is due."""
        return [self.due_ns(f, margin_ns) for f in self.frames.values()]

    @staticmethod
    def due_ns(state: FrameState, margin_ns: int) -> int:
        """Return when a frame must be answered (late frames: their short wait)."""
        return state.answer_by_ns if state.late else state.deadline_ns - margin_ns

    def forget(self, state: FrameState, keep_answered: int) -> None:
        """Drop an answered frame; remember its stamp among the ``keep_answered`` latest."""
        self.frames.pop(state.key, None)
        self.answered[state.key] = state.image_seen
        while len(self.answered) > keep_answered:
            self.answered.popitem(last=False)


def final_result(state: FrameState, note: str, now_ns: int,
                 response=None) -> FrameClassification:
    """Build a frame's final result: the server's answer, else the local one, else empty."""
    local = state.local
    result = FrameClassification(header=state.header, frame_seq=state.seq, is_final=True)
    if local is not None:
        result.calibrated_confidence = (local.calibrated_confidence if state.confidence is None
                                        else state.confidence)
        result.raw_confidence = local.raw_confidence
        result.latency.capture_to_local_ms = local.latency.capture_to_local_ms
        result.latency.local_inference_ms = local.latency.local_inference_ms
    if response is not None:
        result.class_id, result.class_name = response.class_id, response.class_name
        result.score, result.top_k = response.score, response.top_k
        result.source = FrameClassification.SOURCE_SERVER
        result.model, result.resolution = response.model, response.resolution
        result.note = (f'server answer (offloaded at '
                       f'{state.decision.resolution if state.decision else 0} px)')
    elif local is not None and local.class_id:
        result.class_id, result.class_name = local.class_id, local.class_name
        result.score, result.top_k = local.score, local.top_k
        if state.confidence is not None:       # the robot answer's own calibrated score
            result.score = state.confidence
        result.source = FrameClassification.SOURCE_ROBOT
        result.model, result.resolution = local.model, local.resolution
        result.note = note
    else:
        result.source = FrameClassification.SOURCE_ROBOT
        result.note = (local.note if local is not None and local.note
                       else f'no local result: {note}')
    if state.late and not result.note.startswith(LATE_NOTE):
        result.note = f'{LATE_NOTE}: {result.note}'
    for name, value in state.latency.items():
        setattr(result.latency, name, float(value))
    result.latency.total_ms = (now_ns - state.key) / 1e6
    result.deadline = ns_to_stamp(state.deadline_ns, Time)
    result.deadline_met = now_ns <= state.deadline_ns
    return result
