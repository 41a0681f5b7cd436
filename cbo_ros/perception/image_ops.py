"""Image operations shared by the robot model, the offload encoder and the server (RGB uint8)."""

import cv2
import numpy as np


def center_square(rgb, side):
    """Return the central square of ``rgb`` resized to ``side`` x ``side`` (uint8, RGB)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected an HxWx3 image, got shape {rgb.shape}')
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError('empty image')
    crop = min(height, width)
    top = (height - crop) // 2
    left = (width - crop) // 2
    square = rgb[top:top + crop, left:left + crop]
    if crop == side:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if crop > side else cv2.INTER_LINEAR
    return cv2.resize(square, (side, side), interpolation=interpolation)


def encode_jpeg(rgb, quality=90):
    """Encode an RGB image as JPEG bytes."""
    ok, buffer = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                              [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError('JPEG encoding failed')
    return buffer.tobytes()


def encode_png(rgb):
    """Encode an RGB image as PNG bytes (lossless)."""
    ok, buffer = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError('PNG encoding failed')
    return buffer.tobytes()


def decode_image(data):
    """Decode JPEG/PNG bytes to an RGB image; raise ValueError when the bytes are not an image."""
    array = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray)) else data,
                          dtype=np.uint8)
    if array.size == 0:
        raise ValueError('empty image data')
    bgr = cv2.imdecode(array, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError('data is not a decodable image')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def softmax(logits, axis=-1):
    """Numerically stable softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)
