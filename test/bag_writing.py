"""Write small rosbag2 files of real video frames with the rosbags Writer (test fixtures)."""

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from cbo_ros.perception.image_ops import encode_jpeg
from cbo_ros.perception.media import read_frames

NS = 1_000_000_000


def write_camera_bag(path, frames=30, fps=15.0, start_ns=1_700_000_000 * NS, frame_id='rec_cam',
                     topics=('/cam/image_raw',), receipt_delay_ns=(3_000_000, 9_000_000),
                     zero_stamps=False):
    """A bag of the first ``frames`` frames of bikes, stamped at ``fps`` from ``start_ns``.

    Each topic of ``topics`` gets every frame (``.../compressed`` topics as JPEG). Receipt times
    are the stamps plus a delay alternating between the two ``receipt_delay_ns`` (the jitter of a
    real recording). Returns the header stamps written (ns).
    """
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    types = typestore.types
    Image = types['sensor_msgs/msg/Image']
    CompressedImage = types['sensor_msgs/msg/CompressedImage']
    Header, Time = types['std_msgs/msg/Header'], types['builtin_interfaces/msg/Time']
    video, _ = read_frames('bikes', max_frames=frames)
    stamps = [start_ns + round(i * NS / fps) for i in range(frames)]
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for topic in topics:
            msgtype = (CompressedImage if topic.endswith('/compressed') else Image).__msgtype__
            connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
        for i, (frame, stamp) in enumerate(zip(video, stamps)):
            header_ns = 0 if zero_stamps else stamp
            header = Header(stamp=Time(sec=header_ns // NS, nanosec=header_ns % NS),
                            frame_id=frame_id)
            receipt = stamp + receipt_delay_ns[i % len(receipt_delay_ns)]
            h, w, _ = frame.rgb.shape
            for topic, connection in connections.items():
                if topic.endswith('/compressed'):
                    msg = CompressedImage(header=header, format='jpeg', data=np.frombuffer(
                        encode_jpeg(frame.rgb), dtype=np.uint8))
                else:
                    msg = Image(header=header, height=h, width=w, encoding='rgb8',
                                is_bigendian=0, step=w * 3, data=frame.rgb.reshape(-1))
                writer.write(connection, receipt,
                             typestore.serialize_cdr(msg, connection.msgtype))
    return stamps
