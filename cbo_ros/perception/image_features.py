"""Cheap image features for the premodel (model selection per frame).

Computed on the centre square the models see, reduced to ``FEATURE_SIDE`` pixels so that they
cost well under a millisecond: brightness, contrast, sharpness (variance of the Laplacian), edge
density (Canny), FAST keypoint count, mean saturation and a saturation-weighted hue histogram.
"""

import time

import cv2
import numpy as np

from cbo_ros.perception.image_ops import center_square

FEATURE_SIDE = 96
HUE_BINS = 8
FEATURE_NAMES = (('brightness', 'contrast', 'sharpness', 'edge_density', 'keypoints',
                  'saturation') + tuple(f'hue_{i}' for i in range(HUE_BINS)))
_FAST = None


def _fast():
    global _FAST
    if _FAST is None:
        _FAST = cv2.FastFeatureDetector_create(threshold=20, nonmaxSuppression=True)
    return _FAST


def image_features(rgb):
    """Return the feature vector (float32, ``FEATURE_NAMES`` order) of one RGB uint8 frame.

    Raises ``ValueError`` for anything but an (H, W, 3) uint8 image.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 8:
        raise ValueError(f'image features need an (H, W, 3) uint8 RGB image of at least 8x8 '
                         f'pixels, got shape {rgb.shape} dtype {rgb.dtype}')
    small = center_square(rgb, FEATURE_SIDE)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    brightness = grey.mean() / 255.0
    contrast = grey.std() / 255.0
    sharpness = np.log1p(cv2.Laplacian(grey, cv2.CV_32F).var())
    edges = float(np.count_nonzero(cv2.Canny(grey, 60, 180))) / grey.size
    keypoints = len(_fast().detect(grey, None)) / 100.0
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    saturation = hsv[..., 1].astype(np.float32) / 255.0
    hue = (hsv[..., 0].astype(np.int32) * HUE_BINS) // 180
    weights = np.bincount(hue.ravel(), weights=saturation.ravel(), minlength=HUE_BINS)
    hue_hist = weights / max(float(weights.sum()), 1e-6)
    return np.concatenate([[brightness, contrast, sharpness, edges, keypoints,
                            saturation.mean()], hue_hist]).astype(np.float32)


def timed_features(rgb):
    """Return ``(features, seconds)`` of one frame (the premodel counts this time)."""
    start = time.perf_counter()
    features = image_features(rgb)
    return features, time.perf_counter() - start
