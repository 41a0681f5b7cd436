"""The CBO planner: which frames to offload, and at which resolution (ROS-free).

Formulation (see docs/planner.md): frame i arrives at a_i with calibrated local confidence c_i and
must be answered by d_i. Offloading at resolution r costs a payload s_r(i) bytes on the uplink
(transfers are serialised FIFO behind those already queued), then the RTT and the server time; it is
worth A_r(c_i) - c_i, where A_r(c) is the profiled probability that the server is correct at r for
frames whose local confidence is c. The offline evaluator and the live offload_planner_node call the
same ``OnlinePlanner.decide``.
"""

from dataclasses import dataclass, field


@dataclass
class OffloadOption:
    """One way to offload a frame."""

    resolution: int            # side length of the square sent to the server (pixels)
    payload_bytes: int         # real JPEG size at this resolution
    server_accuracy: float     # A_r(c_i): P(server correct | local confidence c_i)
    server_time_s: float       # expected server time (queue + decode + inference)


@dataclass
class FrameCandidate:
    """A frame ready for the planner (its local answer is already known)."""

    seq: int
    arrival_s: float           # when the frame can be sent (after local inference)
    deadline_s: float          # absolute time by which the answer must be published
    confidence: float          # calibrated P(local answer correct)
    options: list = field(default_factory=list)   # list[OffloadOption]


@dataclass
class LinkState:
    """The planner's view of the uplink."""

    bandwidth_bps: float       # estimated goodput (bits/s); <= 0 means unknown/unusable
    rtt_s: float               # round trip of a small request
    loss_rate: float = 0.0
    reachable: bool = True
    busy_until_s: float = 0.0  # absolute time at which transfers already queued are sent


@dataclass
class Decision:
    """The planner's choice for one frame."""

    seq: int
    offload: bool
    resolution: int = 0
    payload_bytes: int = 0
    expected_accuracy: float = 0.0     # of the answer that will be used
    expected_gain: float = 0.0         # expected_accuracy - confidence
    expected_finish_s: float = 0.0     # absolute planned arrival of the server answer
    link_free_after_s: float = 0.0     # absolute time the uplink is free after this transfer
    reason: str = ''
