"""Frame sources: real videos, labelled image folders, rosbag2 files, and clear errors."""

import numpy as np
import pytest

from cbo_ros.assets import paths
from cbo_ros.perception.labels import LabelsError
from cbo_ros.perception.media import MediaError, image_msg_to_rgb, open_source, read_frames


def test_embedded_video_frames_are_real():
    frames, source = read_frames('bikes', max_frames=10)
    assert len(frames) == 10 and source.fps == pytest.approx(25, abs=1)
    assert frames[0].rgb.shape == (272, 640, 3) and frames[0].rgb.dtype == np.uint8
    assert frames[0].label is None
    assert not np.array_equal(frames[0].rgb, frames[9].rgb)


def test_image_folder_labels_from_labels_file():
    frames, source = read_frames(paths.media_dir() / 'imagenet_samples')
    assert source.has_labels
    assert frames[0].name == 'imagenet_00_243.jpg' and frames[0].label == 243


def test_mismatched_labels_file_is_a_clear_error(tmp_path):
    import shutil
    shutil.copy(paths.media_dir() / 'imagenet_samples' / 'imagenet_00_243.jpg', tmp_path / 'a.jpg')
    shutil.copy(paths.media_dir() / 'imagenet_samples' / 'imagenet_01_559.jpg', tmp_path / 'b.jpg')
    (tmp_path / 'labels.csv').write_text('a.jpg,243\n')
    with pytest.raises(LabelsError, match='no label'):
        open_source(tmp_path)


def test_unopenable_media_is_a_clear_error(tmp_path):
    with pytest.raises(MediaError, match='not found'):
        open_source(tmp_path / 'missing.mp4')
    bogus = tmp_path / 'bogus.mp4'
    bogus.write_bytes(b'not a video')
    with pytest.raises(MediaError, match='cannot open'):
        open_source(bogus)


@pytest.mark.parametrize('encoding,channels', [('rgb8', 3), ('bgr8', 3), ('mono8', 1)])
def test_image_message_conversion(encoding, channels):
    image = np.arange(4 * 6 * channels, dtype=np.uint8).reshape(4, 6, channels)
    rgb = image_msg_to_rgb(encoding, 4, 6, 6 * channels, image.tobytes())
    assert rgb.shape == (4, 6, 3)
    if encoding == 'rgb8':
        assert np.array_equal(rgb, image)
    if encoding == 'bgr8':
        assert np.array_equal(rgb, image[:, :, ::-1])


@pytest.mark.parametrize('encoding,pair', [('yuv422', (128, 81)), ('uyvy', (128, 81)),
                                           ('yuv422_yuy2', (81, 128)), ('yuyv', (81, 128))])
def test_yuv422_camera_frames_are_converted(encoding, pair):
    # BT.601 red: Y 81, U 90, V 240. UYVY order: U Y V Y; YUYV: Y U Y V.
    u, y, v = 90, 81, 240
    quad = [u, y, v, y] if pair[0] == 128 else [y, u, y, v]
    data = bytes(quad * (4 * 3))            # 4 rows of 6 pixels = 3 pairs per row
    rgb = image_msg_to_rgb(encoding, 4, 6, 12, data)
    assert rgb.shape == (4, 6, 3)
    r, g, b = rgb[0, 0].astype(int)
    assert r > 200 and g < 60 and b < 60, rgb[0, 0]


def test_mono16_frames_are_scaled_to_8_bits():
    words = np.full((2, 3), 0x8040, dtype='<u2')
    rgb = image_msg_to_rgb('mono16', 2, 3, 6, words.tobytes())
    assert rgb.shape == (2, 3, 3) and (rgb == 0x80).all()
    big = image_msg_to_rgb('mono16', 2, 3, 6, words.astype('>u2').tobytes(), is_bigendian=True)
    assert (big == 0x80).all()


@pytest.mark.parametrize('fields,message', [
    (('nv12', 4, 6, 12, bytes(48)), 'unsupported encoding'),
    (('yuv422_yuy2', 4, 5, 10, bytes(40)), 'even width'),
    (('rgb8', 4, 6, 18, bytes(10)), 'truncated'),
    (('rgb8', 0, 0, 0, b''), 'zero-size'),
])
def test_malformed_image_messages_raise_value_error(fields, message):
    with pytest.raises(ValueError, match=message):
        image_msg_to_rgb(*fields)


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_rosbag2_image_topic_is_read(tmp_path, storage):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    Image = typestore.types['sensor_msgs/msg/Image']
    Header = typestore.types['std_msgs/msg/Header']
    Time = typestore.types['builtin_interfaces/msg/Time']
    frames, _ = read_frames('bikes', max_frames=3)
    bag = tmp_path / 'bag'
    plugin = StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP
    with Writer(bag, version=8, storage_plugin=plugin) as writer:
        connection = writer.add_connection('/camera/image_raw', Image.__msgtype__,
                                           typestore=typestore)
        for i, frame in enumerate(frames):
            h, w, _ = frame.rgb.shape
            msg = Image(header=Header(stamp=Time(sec=i, nanosec=0), frame_id='cam'), height=h,
                        width=w, encoding='rgb8', is_bigendian=0, step=w * 3,
                        data=frame.rgb.reshape(-1))
            writer.write(connection, i * 10**9, typestore.serialize_cdr(msg, Image.__msgtype__))
    read, source = read_frames(bag)
    assert source.topic == '/camera/image_raw' and len(read) == 3
    assert np.array_equal(read[2].rgb, frames[2].rgb)
    assert read[1].time_s == pytest.approx(1.0)
