"""JPEG payload sizes: measured on the first frame, then again in the background (ROS-free)."""

import numpy as np

from cbo_ros.core.payload_sizing import PayloadSizer
from cbo_ros.perception.image_ops import center_square, encode_jpeg

RESOLUTIONS = (96, 128, 224)
TEXTURED = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
FLAT = np.full((240, 320, 3), 128, dtype=np.uint8)


def jpeg_sizes(rgb, quality):
    return {r: len(encode_jpeg(center_square(rgb, r), quality)) for r in RESOLUTIONS}


def test_sizes_are_measured_again_in_the_background():
    sizer = PayloadSizer(RESOLUTIONS, quality=90, refresh_frames=3)
    try:
        first = sizer.encode_payloads(TEXTURED)     # sizes unknown: every resolution, now
        assert sorted(first) == sorted(RESOLUTIONS)
        assert sizer.sizes == jpeg_sizes(TEXTURED, 90)
        assert all(sizer.size(r, first) == len(first[r]) for r in RESOLUTIONS)
        for _ in range(3):
            assert sizer.encode_payloads(FLAT) == {}   # nothing encoded in the caller
        assert sizer.job is not None
        sizer.job.result(timeout=30.0)
        assert sizer.sizes == jpeg_sizes(FLAT, 90)
        assert all(sizer.size(r, {}) < len(first[r]) for r in RESOLUTIONS)
        # A measurement at a quality replaced meanwhile is not used.
        sizer.measure_sizes(TEXTURED, 80)
        assert sizer.sizes == jpeg_sizes(FLAT, 90)
    finally:
        sizer.close()


def test_a_new_quality_forgets_the_sizes_and_the_chosen_payload_is_recorded():
    sizer = PayloadSizer(RESOLUTIONS, quality=90, refresh_frames=5)
    try:
        sizer.encode_payloads(TEXTURED)
        sizer.set_quality(50)
        assert sizer.sizes == {}
        payload = sizer.encode(TEXTURED, 128)
        assert payload == encode_jpeg(center_square(TEXTURED, 128), 50)
        assert sizer.sizes == {128: len(payload)}
        assert sorted(sizer.encode_payloads(TEXTURED)) == sorted(RESOLUTIONS)  # 96, 224 unknown
    finally:
        sizer.close()


def test_a_failed_measurement_is_reported_and_retried():
    errors = []
    sizer = PayloadSizer(RESOLUTIONS, quality=90, refresh_frames=1, on_error=errors.append)
    try:
        sizer.encode_payloads(TEXTURED)
        assert sizer.encode_payloads(np.zeros((0, 0, 3), np.uint8)) == {}   # cannot encode
        assert sizer.job.exception(timeout=30.0) is not None
        sizer.encode_payloads(FLAT)
        assert len(errors) == 1 and 'JPEG size measurement failed' in errors[0]
        sizer.job.result(timeout=30.0)
        assert sizer.sizes == jpeg_sizes(FLAT, 90)
    finally:
        sizer.close()
