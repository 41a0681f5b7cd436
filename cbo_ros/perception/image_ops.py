"""Image operations shared by the robot model, the offload encoder and the server (RGB uint8)."""

import cv2
import numpy as np
from cbo_common.image_header import read_image_header

# Largest image decode_image decodes (an 8K frame is 33 MP): beyond it, refused unread.
MAX_DECODE_PIXELS = 64_000_000


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


def decimate_for(rgb, side):
    """Subsample a frame far larger than ``side`` by an integer stride; others unchanged.

    A frame whose shorter side is at least 8 x ``side`` keeps every k-th row and column
    (k = shorter side // (4 x ``side``)): it still has 4-8 x ``side`` pixels across for the
    area resize that follows (a plain stride does not low-pass filter, so fine texture can
    alias; the 4-8 x margin keeps that small), and every later step (resizes, JPEG
    encodes, kept frames) costs at most what a frame of 8 x ``side`` costs, whatever the input
    size (a 4K frame took ~17 ms per resize to 128 px). Smaller frames (720p for a 128 px
    model, 4K for 384 px offloads) are returned as they are, so their results are
    bit-identical to the offline evaluation's.
    """
    stride = min(rgb.shape[0], rgb.shape[1]) // (4 * int(side))
    if stride < 2:
        return rgb
    return np.ascontiguousarray(rgb[::stride, ::stride])


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


def decode_image(data, max_pixels=MAX_DECODE_PIXELS):
    """Decode JPEG/PNG bytes to an RGB image; raise ValueError when the bytes are not an image.

    The size the file header declares is checked against ``max_pixels`` before decoding, so a
    small file claiming a huge image (a decompression bomb) costs no memory.
    """
    data = bytes(data) if not isinstance(data, (bytes, bytearray)) else data
    if not data:
        raise ValueError('empty image data')
    header = read_image_header(data)         # ImageHeaderError is a ValueError
    if max_pixels and header.pixels > max_pixels:
        raise ValueError(f'image too large: the {header.kind.upper()} header declares '
                         f'{header.width}x{header.height} pixels, more than {max_pixels}; '
                         'not decoded')
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:               # a size or format OpenCV's own limits refuse
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise ValueError('the decoder refused the image'
                         f" ({lines[-1].strip() if lines else 'no reason given'})") from None
    if bgr is None:
        raise ValueError('data is not a decodable image')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def softmax(logits, axis=-1):
    """Numerically stable softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)
