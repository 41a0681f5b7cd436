"""camera_node: publish frames of a video file, V4L2 camera, image folder or rosbag2.

Publishes ``image_raw`` (sensor_msgs/Image, rgb8 or bgr8; reliable, depth 30 unless overridden;
``publish_raw: false`` turns it off), and optionally ``image_raw/compressed``
(sensor_msgs/CompressedImage, JPEG or PNG: image_transport's ``compressed`` convention). Stamps
are the node clock at publication; the ``frame_id`` comes from a parameter.

Timing: ``rate_hz`` > 0 publishes at that rate; 0 follows the source: a video's fps, and for a
rosbag2 the recorded gaps between frames (header stamps; the bag's receipt times when those are
unset or go backwards), on a steady schedule that does not drift.

Faithful replay of a rosbag2: ``keep_recorded_stamps`` publishes every frame with its recorded
header (stamp and frame_id; ``mode: once``, since a second pass would repeat the stamps that
identify frames). ``publish_clock`` publishes ``/clock`` (rosgraph_msgs/Clock, ``clock_rate_hz``)
running from the first frame's recorded stamp (a video: the start time) at real speed, so nodes
with ``use_sim_time: true`` live in the recorded time; frames not keeping their stamps are then
stamped with that clock. After the last frame the clock runs on (``exit_when_done``: for
``clock_tail_s``) so downstream deadlines still pass. With ``use_sim_time`` and no ``/clock`` the
node does not publish zero stamps: it waits, and says so loudly (log error and ``/diagnostics``)
after a few seconds. ``image_raw/source_frame`` (sensor_msgs/TimeReference, same
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
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CompressedImage, Image, TimeReference
from std_msgs.msg import UInt64

from cbo_ros.nodes.ros_common import (Diagnostics, frame_qos, LATCHED_QOS, load_settings,
                                      ns_to_stamp, Param, RateMeter, RELIABILITY,
                                      RESULT_HISTORY_QOS, SimClockWatch, spin_node, stamp_to_ns,
                                      steady_clock)
from cbo_ros.perception.image_ops import encode_jpeg, encode_png
from cbo_ros.perception.media import MediaError, open_source, RosbagSource

NS = 1_000_000_000
# /clock as rosbag2's player publishes it: reliable, a short history.
CLOCK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
COMPRESSED_FORMATS = ('jpeg', 'png')


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
    publish_raw: bool
    compressed_format: str
    keep_recorded_stamps: bool
    publish_clock: bool
    clock_rate_hz: float
    clock_tail_s: float

    def __post_init__(self) -> None:
        """Refuse values no range of the descriptors catches."""
        if self.mode not in ('loop', 'once'):
            raise ValueError(f"mode must be 'loop' or 'once', got '{self.mode}'")
        if not (self.publish_raw or self.publish_compressed):
            raise ValueError('publish_raw and publish_compressed are both false: nothing to '
                             'publish')
        if self.compressed_format not in COMPRESSED_FORMATS:
            raise ValueError(f"compressed_format must be {' or '.join(COMPRESSED_FORMATS)}, "
                             f"got '{self.compressed_format}'")
        if self.keep_recorded_stamps and self.mode != 'once':
            raise ValueError('keep_recorded_stamps needs mode: once (a second pass would '
                             'repeat the recorded stamps, and stamps identify frames)')
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
    Param('publish_raw', True,
          'Publish image_raw (sensor_msgs/Image); false: only image_raw/compressed (needs '
          'publish_compressed).'),
    Param('compressed_format', 'jpeg', "Format of image_raw/compressed: 'jpeg' or 'png'."),
    Param('keep_recorded_stamps', False,
          'rosbag2 source: publish each frame with its recorded header stamp and frame_id '
          "(faithful replay; needs mode 'once'); false: stamp with the node clock."),
    Param('publish_clock', False,
          'Publish /clock (rosgraph_msgs/Clock) from the recorded time (a rosbag2: from the '
          'first frame\'s stamp; a video: from the start time) for nodes with use_sim_time.'),
    Param('clock_rate_hz', 100.0, 'Rate of /clock messages (publish_clock).', minimum=1.0,
          maximum=1000.0),
    Param('clock_tail_s', 2.0,
          'publish_clock with exit_when_done: keep /clock running this long after the last '
          'frame, so downstream deadlines still pass before the clock stops.', minimum=0.0,
          maximum=600.0),
)


class CameraNode(Node):
    """Publishes the frames of a media source at a fixed rate or at the recorded timing.

    Executor: its own process under ``spin_node`` (single-threaded; spun until ``finished``
    completes when ``exit_when_done``), or robot_bringup's; it has one timer callback at a
    time either way (the node's default, mutually exclusive callback group). Its timers run on
    a steady clock, so they fire whatever ``use_sim_time`` says (the node may be the /clock
    source itself).
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
        self.is_bag = isinstance(self.source, RosbagSource)
        if s.keep_recorded_stamps and not self.is_bag:
            self.source.close()
            raise SourceOpenError(f"keep_recorded_stamps needs a rosbag2 source, '{s.source}' "
                                  'is not one (a video or folder has no recorded stamps)')
        self.frames = iter(self.source)
        self.recorded_timing = not s.rate_hz
        fps = s.rate_hz or float(getattr(self.source, 'fps', 30.0) or 30.0)
        self.period_s = 1.0 / fps

        qos = frame_qos(s.reliability, s.depth)
        self.image_pub = (self.create_publisher(Image, 'image_raw', qos) if s.publish_raw
                          else None)
        # image_transport's convention: <resolved image_raw>/compressed (follows a remap).
        self.compressed_pub = (self.create_publisher(
            CompressedImage, self.resolve_topic_name('image_raw') + '/compressed', qos)
            if s.publish_compressed else None)
        self.count_pub = self.create_publisher(UInt64, 'frames_published', LATCHED_QOS)
        self.source_frame_pub = self.create_publisher(TimeReference, 'image_raw/source_frame',
                                                      RESULT_HISTORY_QOS)
        self.clock_pub = (self.create_publisher(ClockMsg, '/clock', CLOCK_QOS)
                          if s.publish_clock else None)
        self.diagnostics = Diagnostics(self)
        self.clock_watch = SimClockWatch(self, self.diagnostics)
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
        # The playback schedule: frame k of a pass is due at pass_start_s + its offset.
        self.pending = self.next_frame()
        self.pass_start_s = None
        self.pass_origin_s = 0.0
        self.pass_index = 0
        self.last_due_s = None
        # The playback clock (publish_clock): recorded time = clock_origin_ns + elapsed.
        first_stamp = getattr(self.pending, 'stamp_ns', None)
        self.clock_origin_ns = (first_stamp if self.is_bag and first_stamp
                                else Clock(clock_type=ClockType.SYSTEM_TIME).now().nanoseconds)
        self.clock_sent_ns = 0
        self.count_pub.publish(UInt64(data=0))

        self.timer = self.create_timer(min(self.period_s, 0.05), self.on_timer,
                                       clock=steady_clock())
        self.diag_timer = self.create_timer(1.0, self.on_diagnostics, clock=steady_clock())
        self.clock_timer = (self.create_timer(1.0 / s.clock_rate_hz, self.on_clock_timer,
                                              clock=steady_clock()) if s.publish_clock else None)
        timing = (f'{fps:.2f} fps' if not (self.recorded_timing and self.is_bag) else
                  f'the recorded timing ({self.source.timing}, mean {fps:.2f} fps)')
        if self.is_bag:
            self.get_logger().info(self.source.describe('the rosbag_topic parameter'))
        topics = ', '.join(p.topic_name for p in (self.image_pub, self.compressed_pub) if p)
        self.get_logger().info(
            f"publishing '{s.source}' at {timing} ({s.mode}, {s.encoding}, QoS "
            f'{s.reliability}/{s.depth}) on {topics}'
            + ('; recorded stamps and frame ids kept' if s.keep_recorded_stamps else '')
            + ('; publishing /clock' if s.publish_clock else ''))

    # ------------------------------------------------------------------ schedule
    def subscriber_count(self) -> int:
        """Readers of the frame topics (raw and compressed together)."""
        return sum(p.get_subscription_count() for p in (self.image_pub, self.compressed_pub)
                   if p is not None)

    def ready_to_start(self) -> bool:
        """Tell whether the start delay and the wait for subscribers are over."""
        s = self.settings
        if not (s.keep_recorded_stamps or s.publish_clock or self.clock_watch.clock_started()):
            return False         # use_sim_time without /clock: no zero stamps (the watch says)
        waited = time.monotonic() - self.created_s
        if waited < s.start_delay_s:
            return False
        if s.wait_for_subscribers and waited < s.start_delay_s + s.subscriber_timeout_s:
            if self.subscriber_count() < s.wait_for_subscribers:
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
            self.pass_start_s = None          # a new pass: re-anchor the schedule
            return next(self.frames, None)

    def due_s(self, frame) -> float:
        """Monotonic time at which ``frame`` is due (anchoring a new pass on the way)."""
        if self.pass_start_s is None:
            now = time.monotonic()
            self.pass_start_s = (now if self.last_due_s is None
                                 else max(now, self.last_due_s + self.period_s))
            self.pass_origin_s = frame.time_s
            self.pass_index = 0
        if self.recorded_timing:
            offset = max(0.0, frame.time_s - self.pass_origin_s)
        else:
            offset = self.pass_index * self.period_s
        return self.pass_start_s + offset

    def rearm(self, due_s: float) -> None:
        """Make the frame timer fire at ``due_s`` (monotonic seconds)."""
        delay_ns = max(int((due_s - time.monotonic()) * NS), 100_000)
        self.timer.timer_period_ns = delay_ns
        self.timer.reset()

    # ------------------------------------------------------------------ clock
    def playback_ns(self) -> int:
        """Return the recorded time now: the clock origin plus the time played since the start."""
        if self.first_publish_s is None:
            return self.clock_origin_ns
        return self.clock_origin_ns + int((time.monotonic() - self.first_publish_s) * NS)

    def send_clock(self, now_ns: int) -> None:
        """Publish /clock (never backwards)."""
        if self.clock_pub is None or now_ns < self.clock_sent_ns:
            return
        self.clock_sent_ns = now_ns
        self.clock_pub.publish(ClockMsg(clock=ns_to_stamp(now_ns, Time)))

    def on_clock_timer(self) -> None:
        """Publish the playback clock."""
        self.send_clock(self.playback_ns())

    # ------------------------------------------------------------------ frames
    def on_timer(self) -> None:
        """Publish the frame that is due once started, and arm the timer for the next."""
        if self.done:
            return
        if not self.started:
            if not self.ready_to_start():
                return
            self.started = True
            subscribers = self.subscriber_count()
            if subscribers < self.settings.wait_for_subscribers:
                self.get_logger().warning(
                    f'starting with {subscribers} of {self.settings.wait_for_subscribers} '
                    f'frame subscribers: none more came within subscriber_timeout_s '
                    f'({self.settings.subscriber_timeout_s:.0f} s)')
            else:
                self.get_logger().info(f'starting ({subscribers} subscribers)')
        frame = self.pending
        if frame is None:
            self.finish()
            return
        self.last_due_s = self.due_s(frame)
        self.publish_frame(frame)
        self.pass_index += 1
        self.pending = self.next_frame()
        if self.pending is None:
            self.finish()
            return
        self.rearm(self.due_s(self.pending))

    def header_of(self, frame, header) -> None:
        """Fill a frame's header: recorded, playback clock or node clock."""
        s = self.settings
        if s.keep_recorded_stamps and frame.stamp_ns is not None:
            header.stamp = ns_to_stamp(frame.stamp_ns, Time)
            header.frame_id = frame.frame_id or s.frame_id
            return
        header.stamp = (ns_to_stamp(self.playback_ns(), Time) if s.publish_clock
                        else self.get_clock().now().to_msg())
        header.frame_id = s.frame_id

    def publish_frame(self, frame) -> None:
        """Publish one frame (raw and/or compressed) and its source reference."""
        now = time.monotonic()
        self.first_publish_s = self.first_publish_s or now
        rgb = frame.rgb
        msg = Image()
        self.header_of(frame, msg.header)
        if self.clock_pub is not None:
            self.send_clock(max(self.playback_ns(), stamp_to_ns(msg.header.stamp)))
        if self.image_pub is not None:
            if self.settings.encoding == 'bgr8':
                rgb = np.ascontiguousarray(rgb[:, :, ::-1])
            msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
            msg.encoding = self.settings.encoding
            msg.is_bigendian = 0
            msg.step = int(rgb.shape[1] * 3)
            msg.data = np.ascontiguousarray(rgb).tobytes()
            self.image_pub.publish(msg)
        if self.compressed_pub is not None:
            form = self.settings.compressed_format
            compressed = CompressedImage(header=msg.header, format=form)
            compressed.data = (encode_jpeg(frame.rgb, self.settings.jpeg_quality)
                               if form == 'jpeg' else encode_png(frame.rgb))
            self.compressed_pub.publish(compressed)
        media_time = int(round(frame.time_s * 1e9))
        self.source_frame_pub.publish(TimeReference(
            header=msg.header, source=frame.name,
            time_ref=Time(sec=media_time // 10**9, nanosec=media_time % 10**9)))
        self.published += 1
        self.rate_meter.tick(now)
        self.count_pub.publish(UInt64(data=self.published))
        self.get_logger().debug(f'frame {self.published} ({frame.name})')

    def finish(self) -> None:
        """Stop after the last frame: log a summary, publish the final count."""
        self.done = True
        self.timer.cancel()
        elapsed = time.monotonic() - (self.first_publish_s or time.monotonic())
        rate = (self.published - 1) / elapsed if elapsed > 0 and self.published > 1 else 0.0
        self.get_logger().info(
            f"source '{self.settings.source}' finished: {self.published} frames published in "
            f'{elapsed:.1f} s ({rate:.2f} fps)')
        self.count_pub.publish(UInt64(data=self.published))
        self.on_diagnostics()
        if self.finished is None:
            return
        if self.clock_pub is not None and self.settings.clock_tail_s > 0:
            self.get_logger().info(f'/clock runs {self.settings.clock_tail_s:.1f} s more')
            self.tail_timer = self.create_timer(self.settings.clock_tail_s, self.end,
                                                clock=steady_clock())
        else:
            self.end()

    def end(self) -> None:
        """Complete ``finished`` (exit_when_done): spin_node ends the process."""
        if not self.finished.done():
            self.finished.set_result(self.published)

    def on_diagnostics(self) -> None:
        """Publish the camera's state on /diagnostics."""
        now = time.monotonic()
        state = 'done' if self.done else ('running' if self.started else 'waiting')
        level, message = Diagnostics.OK, f'{state}: {self.published} frames published'
        if self.clock_watch.problem:
            level, message = Diagnostics.ERROR, f'{message}; {self.clock_watch.problem}'
        self.diagnostics.publish(
            level, message,
            {'source': self.settings.source, 'state': state, 'frames_published': self.published,
             'publish_rate_hz': f'{self.rate_meter.rate(now):.2f}',
             'target_rate_hz': f'{1.0 / self.period_s:.2f}',
             'timing': (self.source.timing if self.is_bag and self.recorded_timing
                        else 'fixed rate'),
             'recorded_stamps': self.settings.keep_recorded_stamps,
             'publishes_clock': self.settings.publish_clock,
             'subscribers': self.subscriber_count()})

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
