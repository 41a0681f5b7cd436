"""server_node.validation: payload checks that run before any decoding."""

import cv2
import numpy as np
import pytest

from server_node.validation import check_payload, image_kind, RequestError


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
