"""camera_node: publish frames of a video file, V4L2 camera, image folder or rosbag2.

Publishes ``image_raw`` (sensor_msgs/Image, rgb8 or bgr8; reliable, depth 30 unless overridden), and
optionally ``image_raw/compressed`` (JPEG). Stamps are the node clock at publication; the
``frame_id`` comes from a parameter. ``image_raw/source_frame`` (sensor_msgs/TimeReference, same
header as the image) says which frame of the source each image is: ``source`` is the frame's name
in the source (``<video>#<index>``, ``<topic>#<index>`` or the image file name; the key of a
labels file) and ``time_ref`` its media time, so a scorer can look up the frame's true labels.
``frames_published`` (std_msgs/UInt64, latched) carries the running count, so the number of
captured frames is observable by any late joiner.

Modes: ``loop`` restarts the source at its end; ``once`` publishes every frame once, logs a
summary and then stays idle (or exits when ``exit_when_done`` is true).
"""

import sys
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy._rclpy_pybind11 import RCLError
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, TimeReference
from std_msgs.msg import UInt64

from cbo_ros.perception.image_ops import encode_jpeg
from cbo_ros.perception.media import MediaError, open_source
from cbo_ros.nodes.ros_common import (Diagnostics, LATCHED_QOS, RESULT_QOS, RateMeter, declare,
                                      frame_qos)


class SourceOpenError(RuntimeError):
    """The configured frame source cannot be opened."""


class CameraNode(Node):
    """Publishes the frames of a media source at a fixed rate."""

    def __init__(self, **kwargs):
        super().__init__('camera_node', **kwargs)
        self.source_spec = declare(
            self, 'source', 'bikes.mp4',
            'Frame source: video file, embedded media name (bikes, cup, ...), V4L2 device '
            '(0 or /dev/video0), image folder or rosbag2 directory/file.')
        self.rate_hz = declare(
            self, 'rate_hz', 0.0, 'Publication rate in frames per second (0: the source fps).',
            minimum=0.0, maximum=1000.0)
        self.mode = declare(self, 'mode', 'loop',
                            "'loop': restart at the end of the source; 'once': stop after the "
                            'last frame.')
        self.exit_when_done = declare(
            self, 'exit_when_done', False,
            "In 'once' mode: shut the process down after the last frame (else stay idle).")
        self.max_frames = declare(self, 'max_frames', 0,
                                  'Publish at most this many frames per pass (0: all).',
                                  minimum=0, maximum=10_000_000)
        self.frame_id = declare(self, 'frame_id', 'camera_optical_frame',
                                'frame_id written in the header of every image.')
        self.encoding = declare(self, 'encoding', 'rgb8', "Image encoding: 'rgb8' or 'bgr8'.")
        self.publish_compressed = declare(self, 'publish_compressed', False,
                                          'Also publish image_raw/compressed (JPEG).')
        self.jpeg_quality = declare(self, 'jpeg_quality', 90,
                                    'JPEG quality of image_raw/compressed.', minimum=1,
                                    maximum=100)
        self.start_delay_s = declare(
            self, 'start_delay_s', 0.0,
            'Wait this long before the first frame (lets subscribers discover the topic).',
            minimum=0.0, maximum=600.0)
        self.wait_for_subscribers = declare(
            self, 'wait_for_subscribers', 2,
            'Before the first frame, wait until image_raw has this many subscribers (2: the '
            'classifier and the planner, which start at their own pace; 0: publish at once; '
            'bounded by subscriber_timeout_s).', minimum=0, maximum=100)
        self.subscriber_timeout_s = declare(
            self, 'subscriber_timeout_s', 10.0,
            'Longest wait for wait_for_subscribers.', minimum=0.0, maximum=600.0)
        self.subscriber_settle_s = declare(
            self, 'subscriber_settle_s', 0.5,
            'After wait_for_subscribers is met, wait this long more (the subscribers\' own '
            'publishers, e.g. local_result, are matched with their readers in the meantime).',
            minimum=0.0, maximum=60.0)
        self.rosbag_topic = declare(self, 'rosbag_topic', '',
                                    'Image topic to read from a rosbag2 (empty: the first one).')
        reliability = declare(self, 'reliability', 'reliable',
                              "QoS reliability of image_raw: 'reliable' (default: no frame is "
                              "lost on the robot) or 'best_effort'.")
        depth = declare(self, 'depth', 30, 'QoS history depth of image_raw.', minimum=1,
                        maximum=1000)
        if self.mode not in ('loop', 'once'):
            raise ValueError(f"mode must be 'loop' or 'once', got '{self.mode}'")
        if self.encoding not in ('rgb8', 'bgr8'):
            raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got '{self.encoding}'")

        try:
            self.source = open_source(self.source_spec, max_frames=self.max_frames,
                                      topic=self.rosbag_topic or None, with_labels=False)
        except (MediaError, OSError, ImportError, ValueError) as error:
            raise SourceOpenError(f"cannot open source '{self.source_spec}': {error}") from error
        self.frames = iter(self.source)
        fps = self.rate_hz or float(getattr(self.source, 'fps', 30.0) or 30.0)
        self.period_s = 1.0 / fps

        qos = frame_qos(reliability, depth)
        self.image_pub = self.create_publisher(Image, 'image_raw', qos)
        self.compressed_pub = (self.create_publisher(CompressedImage, 'image_raw/compressed', qos)
                               if self.publish_compressed else None)
        self.count_pub = self.create_publisher(UInt64, 'frames_published', LATCHED_QOS)
        self.source_frame_pub = self.create_publisher(TimeReference, 'image_raw/source_frame',
                                                      RESULT_QOS)
        self.diagnostics = Diagnostics(self)
        self.rate_meter = RateMeter()
        self.published = 0
        self.passes = 0
        self.done = False
        self.first_publish_s = None
        self.created_s = time.monotonic()
        self.subscribers_seen_s = None
        self.started = False
        self.count_pub.publish(UInt64(data=0))

        group = MutuallyExclusiveCallbackGroup()
        self.timer = self.create_timer(self.period_s, self.on_timer, callback_group=group)
        self.diag_timer = self.create_timer(1.0, self.on_diagnostics, callback_group=group)
        self.get_logger().info(
            f"publishing '{self.source_spec}' at {fps:.1f} fps ({self.mode}, "
            f'{self.encoding}, QoS {reliability}/{depth}) on {self.image_pub.topic_name}')

    def ready_to_start(self):
        waited = time.monotonic() - self.created_s
        if waited < self.start_delay_s:
            return False
        if self.wait_for_subscribers and waited < self.start_delay_s + self.subscriber_timeout_s:
            if self.image_pub.get_subscription_count() < self.wait_for_subscribers:
                self.subscribers_seen_s = None
                return False
            now = time.monotonic()
            self.subscribers_seen_s = self.subscribers_seen_s or now
            if now - self.subscribers_seen_s < self.subscriber_settle_s:
                return False
        return True

    def next_frame(self):
        try:
            return next(self.frames)
        except StopIteration:
            self.passes += 1
            if self.mode == 'once':
                return None
            self.frames = iter(self.source)
            return next(self.frames, None)

    def on_timer(self):
        if self.done:
            return
        if not self.started:
            if not self.ready_to_start():
                return
            self.started = True
            subscribers = self.image_pub.get_subscription_count()
            if subscribers < self.wait_for_subscribers:
                self.get_logger().warning(
                    f'starting with {subscribers} of {self.wait_for_subscribers} image_raw '
                    f'subscribers: none more came within subscriber_timeout_s '
                    f'({self.subscriber_timeout_s:.0f} s)')
            else:
                self.get_logger().info(f'starting ({subscribers} subscribers)')
        frame = self.next_frame()
        if frame is None:
            self.finish()
            return
        rgb = frame.rgb
        if self.encoding == 'bgr8':
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        msg = Image()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
        msg.encoding = self.encoding
        msg.is_bigendian = 0
        msg.step = int(rgb.shape[1] * 3)
        msg.data = np.ascontiguousarray(rgb).tobytes()
        self.image_pub.publish(msg)
        if self.compressed_pub is not None:
            compressed = CompressedImage(header=msg.header, format='jpeg')
            compressed.data = encode_jpeg(frame.rgb, self.jpeg_quality)
            self.compressed_pub.publish(compressed)
        media_time = int(round(frame.time_s * 1e9))
        self.source_frame_pub.publish(TimeReference(
            header=msg.header, source=frame.name,
            time_ref=Time(sec=media_time // 10**9, nanosec=media_time % 10**9)))
        self.published += 1
        now = time.monotonic()
        self.first_publish_s = self.first_publish_s or now
        self.rate_meter.tick(now)
        self.count_pub.publish(UInt64(data=self.published))
        self.get_logger().debug(f'frame {self.published} ({frame.name})')

    def finish(self):
        self.done = True
        self.timer.cancel()
        elapsed = time.monotonic() - (self.first_publish_s or time.monotonic())
        rate = self.published / elapsed if elapsed > 0 else 0.0
        self.get_logger().info(
            f"source '{self.source_spec}' finished: {self.published} frames published in "
            f'{elapsed:.1f} s ({rate:.1f} fps)')
        self.count_pub.publish(UInt64(data=self.published))
        self.on_diagnostics()

    def on_diagnostics(self):
        now = time.monotonic()
        state = 'done' if self.done else ('running' if self.started else 'waiting')
        self.diagnostics.publish(
            Diagnostics.OK, f'{state}: {self.published} frames published',
            {'source': self.source_spec, 'state': state, 'frames_published': self.published,
             'publish_rate_hz': f'{self.rate_meter.rate(now):.2f}',
             'target_rate_hz': f'{1.0 / self.period_s:.2f}',
             'subscribers': self.image_pub.get_subscription_count()})

    def destroy_node(self):
        try:
            self.source.close()
        finally:
            return super().destroy_node()


def main(args=None):
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        try:
            node = CameraNode()
        except (SourceOpenError, ValueError, ParameterException) as error:
            rclpy.logging.get_logger('camera_node').fatal(f'cannot start: {error}')
            code = 1
        while node is not None and rclpy.ok() and not (node.done and node.exit_when_done):
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        if rclpy.ok():
            raise               # else: SIGINT shut the context down during a publish
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    sys.exit(code)


if __name__ == '__main__':
    main()
