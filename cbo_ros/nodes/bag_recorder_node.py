"""bag_recorder_node: record a live cbo_ros run into a rosbag2 (MCAP or sqlite3) with rosbags.

``ros2 bag record`` is not installable here, and a robot may not have it: this node records the
robot's topics (frames raw and/or compressed, ``local_result``, ``result``, ``offload_decision``,
``network_quality``, ``/diagnostics``, ...) into a standard rosbag2 that ``ros2 bag``, Foxglove,
``cbo_eval`` and ``camera_node`` read. Messages are taken serialized (``raw=True``) and written
as received, each stamped with its receipt time on the node's clock (``use_sim_time`` honoured),
like ``ros2 bag record``. Each topic's subscription QoS follows its publishers (best effort when
any publisher is, transient local when all are), so a best-effort camera or a latched count is
recorded too. The message definitions of every type (cbo_interfaces included) go into the bag,
so it is self-describing.

Executor: ``rclpy.spin`` (single-threaded): callbacks never run concurrently, no locks.
"""

import importlib
import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future

from cbo_ros.nodes.ros_common import declare, Diagnostics, spin_node

DEFAULT_TOPICS = ['local_result', 'result', 'offload_decision', 'offload_transfers',
                  'network_quality', 'frames_published', '/diagnostics']
IMAGE_TOPICS = {'raw': ['image_raw'], 'compressed': ['image_raw/compressed'],
                'both': ['image_raw', 'image_raw/compressed'], 'none': []}
STORAGES = ('mcap', 'sqlite3')


class RecorderError(RuntimeError):
    """A recording that cannot start (output exists, unknown storage, no message definitions)."""


def message_class(type_name):
    """Import the Python class of ``pkg/msg/Type``."""
    package, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def make_typestore():
    """Return a rosbags typestore with ROS 2 Kilted's types plus the cbo_interfaces messages."""
    from rosbags.typesys import get_typestore, get_types_from_msg, Stores
    typestore = get_typestore(Stores.ROS2_KILTED)
    register_package_messages(typestore, 'cbo_interfaces', get_types_from_msg)
    return typestore


def register_package_messages(typestore, package, parse):
    """Register the .msg definitions installed in ``package``'s share directory; return count."""
    from ament_index_python.packages import (get_package_share_directory,
                                             PackageNotFoundError)
    try:
        folder = Path(get_package_share_directory(package)) / 'msg'
    except PackageNotFoundError:
        return 0
    types = {}
    for path in sorted(folder.glob('*.msg')):
        types.update(parse(path.read_text(), f'{package}/msg/{path.stem}'))
    typestore.register(types)
    return len(types)


class BagRecorderNode(Node):
    """Subscribes the configured topics (serialized) and writes them into one rosbag2."""

    def __init__(self):
        super().__init__('bag_recorder')
        output = declare(self, 'output', '', 'bag directory to create; empty: '
                         'cbo_<date>_<time> in the working directory')
        storage = declare(self, 'storage', 'mcap', 'rosbag2 storage: mcap | sqlite3')
        images = declare(self, 'images', 'raw', 'camera frames to record: raw (image_raw), '
                         'compressed (image_raw/compressed), both, none')
        topics = declare(self, 'topics', list(DEFAULT_TOPICS), 'other topics to record '
                         '(relative names resolve in the node namespace)', array_of=str)
        self.max_duration_s = declare(self, 'max_duration_s', 0.0, 'stop recording after this '
                                      'long (0: until shut down)', minimum=0.0)
        self.depth = declare(self, 'depth', 100, 'subscription history depth', minimum=1,
                             maximum=10000)
        if storage not in STORAGES:
            raise RecorderError(f"storage must be one of {', '.join(STORAGES)}, got '{storage}'")
        if images not in IMAGE_TOPICS:
            raise RecorderError(f"images must be one of {', '.join(IMAGE_TOPICS)}, got "
                                f"'{images}'")
        wanted = IMAGE_TOPICS[images] + [t for t in topics if t]
        self.wanted = {self.resolve_topic_name(t): t for t in wanted}
        self.path = Path(output or time.strftime('cbo_%Y%m%d_%H%M%S'))
        if self.path.exists():
            raise RecorderError(f'{self.path} exists: rosbag2 writes a new directory (choose '
                                f'another output or remove it)')
        from rosbags.rosbag2 import StoragePlugin, Writer
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self.typestore = make_typestore()
        self.writer = Writer(self.path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections = {}      # topic -> (rosbags connection, subscription)
        self.counts = {}
        self.bytes = 0
        self.problems = {}         # topic -> why it is not recorded
        self.started = time.monotonic()
        self.finished = Future()   # spin_node spins until it completes (max_duration_s)
        self.diagnostics = Diagnostics(self)
        self.discovery_timer = self.create_timer(0.5, self.discover)
        self.diagnostics_timer = self.create_timer(1.0, self.publish_diagnostics)
        self.discover()
        self.get_logger().info(f'recording {", ".join(sorted(self.wanted))} into {self.path} '
                               f'({storage})')

    def discover(self):
        """Subscribe each wanted topic once its type is known from the graph."""
        if self.max_duration_s and time.monotonic() - self.started > self.max_duration_s:
            if not self.finished.done():
                self.get_logger().info(f'max_duration_s {self.max_duration_s} reached: stopping')
                self.finished.set_result(True)
            return
        types = dict(self.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.connections or topic in self.problems or topic not in types:
                continue
            type_name = types[topic][0]
            try:
                msg_type = message_class(type_name)
                connection = self.writer.add_connection(topic, type_name,
                                                        typestore=self.typestore)
            except Exception as error:  # noqa: BLE001 - one unknown type must not stop the rest
                self.problems[topic] = f'{type_name}: {error}'
                self.get_logger().error(f'cannot record {topic}: {self.problems[topic]}')
                continue
            subscription = self.create_subscription(
                msg_type, topic, lambda data, t=topic: self.on_message(t, data),
                self.qos_for(topic), raw=True)
            self.connections[topic] = (connection, subscription)
            self.counts[topic] = 0

    def qos_for(self, topic):
        """Return a QoS compatible with every current publisher of ``topic``."""
        infos = self.get_publishers_info_by_topic(topic)
        best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                          for i in infos)
        latched = bool(infos) and all(
            i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=self.depth,
            reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
            else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
            else DurabilityPolicy.VOLATILE)

    def on_message(self, topic, data):
        """Write one serialized message, stamped with its receipt time."""
        connection = self.connections[topic][0]
        self.writer.write(connection, self.get_clock().now().nanoseconds, data)
        self.counts[topic] += 1
        self.bytes += len(data)

    def publish_diagnostics(self):
        """Publish what is recorded, and topics that could not be."""
        missing = sorted(set(self.wanted) - set(self.connections) - set(self.problems))
        level = Diagnostics.ERROR if self.problems else Diagnostics.OK
        message = (f'{len(self.problems)} topic(s) cannot be recorded' if self.problems
                   else f'recording {sum(self.counts.values())} messages')
        values = {'output': str(self.path), 'bytes': self.bytes,
                  'waiting_for_publishers': ' '.join(missing)}
        values.update({f'count {t}': n for t, n in sorted(self.counts.items())})
        values.update({f'problem {t}': p for t, p in sorted(self.problems.items())})
        self.diagnostics.publish(level, message, values)

    def destroy_node(self):
        """Close the bag (its metadata is written here), then destroy the node."""
        writer, self.writer = getattr(self, 'writer', None), None
        if writer is not None:
            writer.close()
            counts = ', '.join(f'{t}: {n}' for t, n in sorted(self.counts.items())) or 'nothing'
            self.get_logger().info(f'closed {self.path} ({counts}; {self.bytes} bytes)')
        return super().destroy_node()


def main(args=None):
    """Run the recorder until SIGINT/SIGTERM (or max_duration_s); the bag is closed on exit."""
    spin_node(BagRecorderNode, 'bag_recorder', startup_errors=(RecorderError, OSError), args=args)


if __name__ == '__main__':
    main()
