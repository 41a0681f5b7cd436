"""A recorder node for the demo and the integration tests: what the robot published, and when.

Subscribes ``result`` (final answers), ``local_result``, ``offload_decision``,
``offload_transfers``, ``network_quality``, the camera's latched ``frames_published`` count and
its ``image_raw/source_frame`` (which source frame each stamp is), and keeps them (thread-safe)
with their receipt time and the current ``phase`` label; of ``/diagnostics`` it keeps the latest
values of each of its namespace's nodes (``statuses``).
"""

import threading
import time

from cbo_interfaces.msg import FrameClassification, NetworkQuality, OffloadDecision, TransferSample
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import TimeReference
from std_msgs.msg import UInt64

from cbo_ros.nodes.ros_common import LATCHED_QOS, RESULT_HISTORY_QOS, stamp_to_ns


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
        self.statuses = {}          # node name -> {key: value} of its latest diagnostic status
        # Transient-local, as the writers offer: answers published before this reader matched
        # the robot's writers (they start at their own pace) are delivered too.
        self.create_subscription(FrameClassification, 'result', self._on('results'),
                                 RESULT_HISTORY_QOS)
        self.create_subscription(OffloadDecision, 'offload_decision', self._on('decisions'),
                                 RESULT_HISTORY_QOS)
        self.create_subscription(TransferSample, 'offload_transfers', self._on('transfers'),
                                 RESULT_HISTORY_QOS)
        self.create_subscription(NetworkQuality, 'network_quality', self._on('qualities'), 10)
        if record_local:
            self.create_subscription(FrameClassification, 'local_result',
                                     self._on('local_results'), RESULT_HISTORY_QOS)
        self.create_subscription(UInt64, 'frames_published', self._on_count, LATCHED_QOS)
        self.create_subscription(TimeReference, 'image_raw/source_frame', self._on_source_frame,
                                 RESULT_HISTORY_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on(self, attribute):
        def callback(msg):
            with self.lock:
                getattr(self, attribute).append((time.monotonic(), self.phase, msg))
        return callback

    def _on_count(self, msg):
        with self.lock:
            self.frames_published = max(self.frames_published, int(msg.data))

    def _on_diagnostics(self, msg):
        prefix = self.get_namespace().rstrip('/') + '/'
        with self.lock:
            for status in msg.status:
                name = status.name.split(': ')[-1]
                if name.startswith(prefix) or prefix == '/':
                    values = {kv.key: kv.value for kv in status.values}
                    level = status.level
                    values['level'] = level[0] if isinstance(level, bytes) else int(level)
                    values['message'] = status.message
                    self.statuses[name.rsplit('/', 1)[-1]] = values

    def status(self, node_name):
        """Return the latest diagnostic values of a node of this namespace ({} before any)."""
        with self.lock:
            return dict(self.statuses.get(node_name, {}))

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
