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

import time
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image, TimeReference
from std_msgs.msg import UInt64

from cbo_ros.nodes.ros_common import (Diagnostics, frame_qos, LATCHED_QOS, load_settings, Param,
                                      RateMeter, RELIABILITY, RESULT_QOS, spin_node)
from cbo_ros.perception.image_ops import encode_jpeg
from cbo_ros.perception.media import MediaError, open_source


class SourceOpenError(RuntimeError):
    """The configured frame source cannot be opened."""


@dataclass(frozen=True)
class CameraSettings:
    """The camera's parameters (all read-only: loaded once)."""

    source: str
    rate_hz: float
    mode: str
    exit_when_done: bool
    max_frames: int
    frame_id: str
    encoding: str
    publish_compressed: bool
    jpeg_quality: int
    start_delay_s: float
    wait_for_subscribers: int
    subscriber_timeout_s: float
    subscriber_settle_s: float
    rosbag_topic: str
    reliability: str
    depth: int

    def __post_init__(self) -> None:
        """Refuse values no range of the descriptors catches."""
        if self.mode not in ('loop', 'once'):
            raise ValueError(f"mode must be 'loop' or 'once', got '{self.mode}'")
        if self.encoding not in ('rgb8', 'bgr8'):
            raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got '{self.encoding}'")
        if self.reliability not in RELIABILITY:
            raise ValueError(f"reliability must be one of {', '.join(RELIABILITY)}, got "
                             f"'{self.reliability}'")


PARAMS = (
    Param('source', 'bikes.mp4',
          'Frame source: video file, embedded media name (bikes, cup, ...), V4L2 device '
          '(0 or /dev/video0), image folder or rosbag2 directory/file.'),
    Param('rate_hz', 0.0, 'Publication rate in frames per second (0: the source fps).',
          minimum=0.0, maximum=1000.0),
    Param('mode', 'loop',
          "'loop': restart at the end of the source; 'once': stop after the last frame."),
    Param('exit_when_done', False,
          "In 'once' mode: shut the process down after the last frame (else stay idle)."),
    Param('max_frames', 0, 'Publish at most this many frames per pass (0: all).', minimum=0,
          maximum=10_000_000),
    Param('frame_id', 'camera_optical_frame', 'frame_id written in the header of every image.'),
    Param('encoding', 'rgb8', "Image encoding: 'rgb8' or 'bgr8'."),
    Param('publish_compressed', False, 'Also publish image_raw/compressed (JPEG).'),
    Param('jpeg_quality', 90, 'JPEG quality of image_raw/compressed.', minimum=1, maximum=100),
    Param('start_delay_s', 0.0,
          'Wait this long before the first frame (lets subscribers discover the topic).',
          minimum=0.0, maximum=600.0),
    Param('wait_for_subscribers', 2,
          'Before the first frame, wait until image_raw has this many subscribers (2: the '
          'classifier and the planner, which start at their own pace; 0: publish at once; '
          'bounded by subscriber_timeout_s).', minimum=0, maximum=100),
    Param('subscriber_timeout_s', 10.0, 'Longest wait for wait_for_subscribers.', minimum=0.0,
          maximum=600.0),
    Param('subscriber_settle_s', 0.5,
          "After wait_for_subscribers is met, wait this long more (the subscribers' own "
          'publishers, e.g. local_result, are matched with their readers in the meantime).',
          minimum=0.0, maximum=60.0),
    Param('rosbag_topic', '', 'Image topic to read from a rosbag2 (empty: the first one).'),
    Param('reliability', 'reliable',
          "QoS reliability of image_raw: 'reliable' (default: no frame is lost on the robot) or "
          "'best_effort'."),
    Param('depth', 30, 'QoS history depth of image_raw.', minimum=1, maximum=1000),
)


class CameraNode(Node):
    """Publishes the frames of a media source at a fixed rate.

    Executor: its own process under ``spin_node`` (single-threaded; spun until ``finished``
    completes when ``exit_when_done``), or robot_bringup's; it has one timer callback at a
    time either way (the node's default, mutually exclusive callback group).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__('camera_node', **kwargs)
        self.settings: CameraSettings = load_settings(self, CameraSettings, PARAMS)
        s = self.settings
        try:
            self.source = open_source(s.source, max_frames=s.max_frames,
                                      topic=s.rosbag_topic or None, with_labels=False)
        except (MediaError, OSError, ImportError, ValueError) as error:
            raise SourceOpenError(f"cannot open source '{s.source}': {error}") from error
        self.frames = iter(self.source)
        fps = s.rate_hz or float(getattr(self.source, 'fps', 30.0) or 30.0)
        self.period_s = 1.0 / fps

        qos = frame_qos(s.reliability, s.depth)
        self.image_pub = self.create_publisher(Image, 'image_raw', qos)
        self.compressed_pub = (self.create_publisher(CompressedImage, 'image_raw/compressed', qos)
                               if s.publish_compressed else None)
        self.count_pub = self.create_publisher(UInt64, 'frames_published', LATCHED_QOS)
        self.source_frame_pub = self.create_publisher(TimeReference, 'image_raw/source_frame',
                                                      RESULT_QOS)
        self.diagnostics = Diagnostics(self)
        self.rate_meter = RateMeter()
        self.published = 0
        self.passes = 0
        self.done = False
        # Completed after the last frame with exit_when_done: spin_node then ends the process.
        self.finished = Future() if s.exit_when_done else None
        self.first_publish_s = None
        self.created_s = time.monotonic()
        self.subscribers_seen_s = None
        self.started = False
        self.count_pub.publish(UInt64(data=0))

        self.timer = self.create_timer(self.period_s, self.on_timer)
        self.diag_timer = self.create_timer(1.0, self.on_diagnostics)
        self.get_logger().info(
            f"publishing '{s.source}' at {fps:.1f} fps ({s.mode}, {s.encoding}, QoS "
            f'{s.reliability}/{s.depth}) on {self.image_pub.topic_name}')

    def ready_to_start(self) -> bool:
        """Tell whether the start delay and the wait for subscribers are over."""
        s = self.settings
        waited = time.monotonic() - self.created_s
        if waited < s.start_delay_s:
            return False
        if s.wait_for_subscribers and waited < s.start_delay_s + s.subscriber_timeout_s:
            if self.image_pub.get_subscription_count() < s.wait_for_subscribers:
                self.subscribers_seen_s = None
                return False
            now = time.monotonic()
            self.subscribers_seen_s = self.subscribers_seen_s or now
            if now - self.subscribers_seen_s < s.subscriber_settle_s:
                return False
        return True

    def next_frame(self):
        """Return the next frame of the source (None: the end, in 'once' mode)."""
        try:
            return next(self.frames)
        except StopIteration:
            self.passes += 1
            if self.settings.mode == 'once':
                return None
            self.frames = iter(self.source)
            return next(self.frames, None)

    def on_timer(self) -> None:
        """Publish the next frame once started."""
        if self.done:
            return
        if not self.started:
            if not self.ready_to_start():
                return
            self.started = True
            subscribers = self.image_pub.get_subscription_count()
            if subscribers < self.settings.wait_for_subscribers:
                self.get_logger().warning(
                    f'starting with {subscribers} of {self.settings.wait_for_subscribers} '
                    f'image_raw '
                    f'subscribers: none more came within subscriber_timeout_s '
                    f'({self.settings.subscriber_timeout_s:.0f} s)')
            else:
                self.get_logger().info(f'starting ({subscribers} subscribers)')
        frame = self.next_frame()
        if frame is None:
            self.finish()
            return
        rgb = frame.rgb
        if self.settings.encoding == 'bgr8':
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        msg = Image()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.settings.frame_id
        msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
        msg.encoding = self.settings.encoding
        msg.is_bigendian = 0
        msg.step = int(rgb.shape[1] * 3)
        msg.data = np.ascontiguousarray(rgb).tobytes()
        self.image_pub.publish(msg)
        if self.compressed_pub is not None:
            compressed = CompressedImage(header=msg.header, format='jpeg')
            compressed.data = encode_jpeg(frame.rgb, self.settings.jpeg_quality)
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

    def finish(self) -> None:
        """Stop after the last frame: log a summary, publish the final count."""
        self.done = True
        self.timer.cancel()
        elapsed = time.monotonic() - (self.first_publish_s or time.monotonic())
        rate = self.published / elapsed if elapsed > 0 else 0.0
        self.get_logger().info(
            f"source '{self.settings.source}' finished: {self.published} frames published in "
            f'{elapsed:.1f} s ({rate:.1f} fps)')
        self.count_pub.publish(UInt64(data=self.published))
        self.on_diagnostics()
        if self.finished is not None:
            self.finished.set_result(self.published)

    def on_diagnostics(self) -> None:
        """Publish the camera's state on /diagnostics."""
        now = time.monotonic()
        state = 'done' if self.done else ('running' if self.started else 'waiting')
        self.diagnostics.publish(
            Diagnostics.OK, f'{state}: {self.published} frames published',
            {'source': self.settings.source, 'state': state, 'frames_published': self.published,
             'publish_rate_hz': f'{self.rate_meter.rate(now):.2f}',
             'target_rate_hz': f'{1.0 / self.period_s:.2f}',
             'subscribers': self.image_pub.get_subscription_count()})

    def destroy_node(self) -> None:
        """Close the source, then destroy the node."""
        try:
            self.source.close()
        finally:
            return super().destroy_node()


def main(args=None) -> None:
    """Publish frames until the source ends (exit_when_done) or SIGINT/SIGTERM."""
    spin_node(CameraNode, 'camera_node', startup_errors=(SourceOpenError, ValueError),
              args=args)


if __name__ == '__main__':
    main()
