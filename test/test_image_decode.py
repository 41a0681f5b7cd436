"""Robot-side decoding of compressed frames: bombs and decoder failures are clear ValueErrors."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from cbo_ros.perception.image_ops import decode_image
from cbo_ros.perception.media import compressed_msg_to_rgb


def jpeg_claiming(width, height):
    data = bytearray(cv2.imencode('.jpg', np.full((16, 16, 3), 99, np.uint8))[1].tobytes())
    struct.pack_into('>HH', data, data.index(b'\xff\xc0') + 5, height, width)
    return bytes(data)


def png_claiming(width, height):
    """A tiny PNG whose IHDR declares ``width`` x ``height`` (its data is one byte)."""
    def chunk(kind, body):
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0'))
            + chunk(b'IEND', b''))


def test_a_normal_frame_decodes():
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 200
    data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    np.testing.assert_array_equal(decode_image(data), rgb)


@pytest.mark.parametrize('data', [jpeg_claiming(16000, 16000), png_claiming(60000, 60000)])
def test_decompression_bombs_are_refused_before_decoding(data):
    with pytest.raises(ValueError, match='image too large'):
        decode_image(data)
    with pytest.raises(ValueError, match="too large.*format 'jpeg'"):
        compressed_msg_to_rgb('jpeg', data)


def test_garbage_and_decoder_refusals_are_value_errors():
    with pytest.raises(ValueError, match='neither a JPEG nor a PNG'):
        decode_image(b'not an image at all')
    # Within the limit but still refused by OpenCV's own size limits or corrupt: ValueError.
    with pytest.raises(ValueError):
        decode_image(png_claiming(9000, 7000), max_pixels=0)
