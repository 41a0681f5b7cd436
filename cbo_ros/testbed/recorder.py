"""A recorder node for the demo and the integration tests: what the robot published, and when.

Subscribes ``result`` (final answers), ``local_result``, ``offload_decision``,
``offload_transfers``, ``network_quality``, the camera's latched ``frames_published`` count and
its ``image_raw/source_frame`` (which source frame each stamp is), and keeps them (thread-safe)
with their receipt time and the current ``phase`` label.
"""

import threading
import time

from cbo_interfaces.msg import FrameClassification, NetworkQuality, OffloadDecision, TransferSample
from rclpy.node import Node
from sensor_msgs.msg import TimeReference
from std_msgs.msg import UInt64

from cbo_ros.nodes.ros_common import LATCHED_QOS, RESULT_QOS, stamp_to_ns


class Recorder(Node):
    """Records the robot's outputs; ``phase`` labels what arrives from now on."""

    def __init__(self, name='cbo_recorder', namespace='', record_local=False, **kwargs):
        super().__init__(name, namespace=namespace, **kwargs)
        self.lock = threading.Lock()
        self.phase = ''
        self.results = []           # (receipt monotonic s, phase, FrameClassification)
        self.local_results = []
        self.decisions = []
        self.transfers = []
        self.qualities = []
        self.frames_published = 0
        self.source_frames = {}     # image stamp (ns) -> name of the frame in the source
        self.create_subscription(FrameClassification, 'result', self._on('results'), RESULT_QOS)
        self.create_subscription(OffloadDecision, 'offload_decision', self._on('decisions'),
                                 RESULT_QOS)
        self.create_subscription(TransferSample, 'offload_transfers', self._on('transfers'),
                                 RESULT_QOS)
        self.create_subscription(NetworkQuality, 'network_quality', self._on('qualities'), 10)
        if record_local:
            self.create_subscription(FrameClassification, 'local_result',
                                     self._on('local_results'), RESULT_QOS)
        self.create_subscription(UInt64, 'frames_published', self._on_count, LATCHED_QOS)
        self.create_subscription(TimeReference, 'image_raw/source_frame', self._on_source_frame,
                                 RESULT_QOS)

    def _on(self, attribute):
        def callback(msg):
            with self.lock:
                getattr(self, attribute).append((time.monotonic(), self.phase, msg))
        return callback

    def _on_count(self, msg):
        with self.lock:
            self.frames_published = max(self.frames_published, int(msg.data))

    def _on_source_frame(self, msg):
        with self.lock:
            self.source_frames[stamp_to_ns(msg.header.stamp)] = msg.source

    def source_frame_names(self):
        """{image stamp (ns): frame name in the source} as published by the camera."""
        with self.lock:
            return dict(self.source_frames)

    def set_phase(self, phase):
        """Tag the messages received from now on with ``phase``."""
        with self.lock:
            self.phase = phase

    def snapshot(self, attribute):
        """Return a copy of the recorded list ``attribute``."""
        with self.lock:
            return list(getattr(self, attribute))

    def answered_stamps(self):
        """Header stamps (ns) of the final results, with repetitions."""
        return [stamp_to_ns(msg.header.stamp) for _, _, msg in self.snapshot('results')]

    def count(self, attribute):
        """Return how many messages the list ``attribute`` holds."""
        with self.lock:
            return len(getattr(self, attribute))
