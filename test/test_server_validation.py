"""server_node.validation: payload and header checks before decoding, a strict decode."""

import struct

import cv2
import numpy as np
import pytest

from cbo_ros.assets import paths
from server_node.validation import (check_dimensions, check_payload, decode_checked,
                                    image_kind, ImageHeader, MAX_JPEG_SCANS, PNG_MAGIC,
                                    read_image_header, RequestError)

SAMPLE = paths.media_dir() / 'imagenet_samples' / 'imagenet_00_243.jpg'


@pytest.fixture(scope='module')
def images():
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return {'jpeg': cv2.imencode('.jpg', rgb)[1].tobytes(),
            'png': cv2.imencode('.png', rgb)[1].tobytes()}


@pytest.mark.parametrize('text,kind', [('jpeg', 'jpeg'), ('JPG', 'jpeg'), ('png', 'png'),
                                       ('rgb8; jpeg compressed bgr8', 'jpeg'),
                                       ('bgr8; png compressed bgr8', 'png')])
def test_formats_accepted(text, kind):
    assert image_kind(text) == kind


@pytest.mark.parametrize('text', ['', 'bmp', 'raw', 'rgb8', 'jpeg2000'])
def test_formats_refused(text):
    with pytest.raises(RequestError):
        image_kind(text)


def test_valid_payloads_pass(images):
    assert check_payload(images['jpeg'], 'jpeg', 10_000_000) == 'jpeg'
    assert check_payload(images['png'], 'png', 10_000_000) == 'png'
    assert check_payload(memoryview(images['jpeg']), 'jpeg', 10_000_000) == 'jpeg'


@pytest.mark.parametrize('case,reason', [
    ('empty', 'empty'), ('oversize', 'exceeds'), ('jpeg as png', 'not a PNG'),
    ('png as jpeg', 'not a JPEG'), ('truncated jpeg', 'truncated JPEG'),
    ('truncated png', 'truncated PNG')])
def test_bad_payloads_refused_with_reason(images, case, reason):
    data, fmt, limit = {
        'empty': (b'', 'jpeg', 1000),
        'oversize': (images['jpeg'], 'jpeg', len(images['jpeg']) - 1),
        'jpeg as png': (images['jpeg'], 'png', 10**7),
        'png as jpeg': (images['png'], 'jpeg', 10**7),
        'truncated jpeg': (images['jpeg'][:len(images['jpeg']) // 2], 'jpeg', 10**7),
        'truncated png': (images['png'][:-20], 'png', 10**7),
    }[case]
    with pytest.raises(RequestError, match=reason):
        check_payload(data, fmt, limit)


def jpeg_with_size(width, height):
    data = bytearray(cv2.imencode('.jpg', np.full((16, 16, 3), 99, np.uint8))[1].tobytes())
    struct.pack_into('>HH', data, data.index(b'\xff\xc0') + 5, height, width)
    return bytes(data)


def test_header_gives_the_size_without_decoding(images):
    assert read_image_header(images['jpeg'], 'jpeg') == ImageHeader('jpeg', 64, 48, 3)
    assert read_image_header(images['png'], 'png') == ImageHeader('png', 64, 48, 3)
    bomb = jpeg_with_size(16000, 16000)
    header = read_image_header(bomb, 'jpeg')
    assert (header.width, header.height, header.pixels) == (16000, 16000, 256_000_000)
    with pytest.raises(RequestError, match='16000x16000 = 256000000 pixels'):
        check_dimensions(header, 10_000_000)
    check_dimensions(read_image_header(images['jpeg'], 'jpeg'), 64 * 48)


@pytest.mark.parametrize('data,kind,reason', [
    (b'\xff\xd8\xff\xfe\x00\x04ab\xff\xda\x00\x02\xff\xd9', 'jpeg', 'scan before the frame'),
    (b'\xff\xd8\xff\xe0\x40\x00' + bytes(10) + b'\xff\xd9', 'jpeg', 'runs past the end'),
    (b'\xff\xd8\x00\x00\xff\xd9', 'jpeg', 'no marker at byte 2'),
    (PNG_MAGIC + bytes(8) + b'XXXX' + bytes(13), 'png', 'first chunk is not IHDR'),
])
def test_corrupt_headers_are_reported(data, kind, reason):
    with pytest.raises(RequestError, match=reason):
        read_image_header(data, kind)


def test_absurd_jpeg_header():
    with pytest.raises(RequestError, match='absurd JPEG header: 0x480'):
        read_image_header(jpeg_with_size(0, 480), 'jpeg')


def test_complete_images_decode_and_cut_short_jpegs_are_refused():
    rgb = cv2.imread(str(SAMPLE))
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_QUALITY, 50]):
        data = cv2.imencode('.jpg', rgb, params)[1].tobytes()
        header = read_image_header(data, 'jpeg')
        assert decode_checked(data, header).shape == rgb.shape
        for fraction in (0.2, 0.5, 0.9):
            cut = data[:int(len(data) * fraction)] + b'\xff\xd9'
            with pytest.raises(RequestError, match='truncated JPEG'):
                decode_checked(cut, read_image_header(cut, 'jpeg'))
    png = cv2.imencode('.png', rgb[:100, :120])[1].tobytes()
    assert decode_checked(png, read_image_header(png, 'png')).shape == (100, 120, 3)
    cut = png[:len(png) // 2] + png[-12:]                     # IEND chunk appended
    with pytest.raises(RequestError, match='cannot decode'):
        decode_checked(cut, read_image_header(cut, 'png'))


def test_jpeg_with_too_many_scans_is_not_decoded(images):
    data = images['jpeg']
    many = data[:-2] + (b'\xff\xda\x00\x02' * (MAX_JPEG_SCANS + 1)) + data[-2:]
    with pytest.raises(RequestError, match='scans'):
        decode_checked(many, read_image_header(many, 'jpeg'))


# ---------------------------------------------------------------- early-exit tensors

def _features(**change):
    from cbo_common.tensor_codec import encode_tensor
    good = encode_tensor(np.random.default_rng(0).normal(size=(1, 80, 8, 8)))
    fields = dict(partition=8, shape=list(good.shape), dtype=good.dtype, scale=good.scale,
                  zero_point=good.zero_point, data=good.data)
    fields.update(change)
    return fields


SHAPES = {5: (1, 40, 16, 16), 8: (1, 80, 8, 8)}


def test_features_accepted_and_decoded():
    from server_node.validation import check_features
    tensor = check_features(**_features(), partition_shapes=SHAPES, max_bytes=100_000)
    assert tensor.shape == (1, 80, 8, 8) and tensor.dtype == np.float32


@pytest.mark.parametrize('change, reason', [
    ({'partition': 11}, 'unknown partition 11'),
    ({'shape': [1, 40, 16, 16]}, 'does not match the partition'),
    ({'shape': [1, 80, 8]}, 'does not match the partition'),
    ({'dtype': 'float16'}, 'not supported'),
    ({'scale': -1.0}, 'scale'),
    ({'zero_point': -3}, 'zero_point'),
    ({'data': b''}, 'empty tensor payload'),
    ({'data': b'\x00' * 100}, 'not zlib'),
    ({'data': __import__('zlib').compress(bytes(64))}, 'needs 5120'),
    ({'data': __import__('zlib').compress(bytes(50_000_000))}, 'more than'),
])
def test_malformed_features_refused_with_a_reason(change, reason):
    from server_node.validation import check_features, RequestError
    with pytest.raises(RequestError, match=reason):
        check_features(**_features(**change), partition_shapes=SHAPES, max_bytes=100_000)


def test_features_size_limit_before_decompression_and_no_parts():
    from server_node.validation import check_features, RequestError
    with pytest.raises(RequestError, match='exceeds the limit'):
        check_features(**_features(), partition_shapes=SHAPES, max_bytes=200)
    with pytest.raises(RequestError, match='no early-exit partitions'):
        check_features(**_features(), partition_shapes={}, max_bytes=100_000)
