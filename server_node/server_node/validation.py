"""ROS-free checks of offload request payloads, and a decoder that refuses what they cannot see.

Order of the checks (cheapest first, nothing is decoded before the header is known):

1. ``check_payload``: non-empty, byte limit, declared format, file signature, end marker.
2. ``read_image_header``: the width and height from the JPEG frame header (SOFn) or the PNG
   IHDR chunk, read without decoding any pixel; ``check_dimensions`` refuses images beyond a
   pixel budget (decompression bombs: a 631-byte JPEG can claim 16000x16000 and cost 768 MB).
3. ``decode_checked``: decode (JPEG with Pillow, PNG with OpenCV) and, for JPEG, verify that
   the entropy-coded data was complete (see :func:`jpeg_scan_complete`).

JPEG goes through Pillow because it keeps libjpeg's warnings to itself: OpenCV lets libjpeg
print one ("Corrupt JPEG data: ...") on stderr for every damaged or filler-checked file, which
floods the server log under attack. Both use libjpeg-turbo with the same settings: the decoded
pixels of the sample images are identical.
"""

import io

import cv2
import numpy as np
from cbo_common.image_header import ImageHeader, ImageHeaderError  # noqa: F401 (re-exported)
from cbo_common.image_header import read_image_header as _read_header
from PIL import Image

# Pillow's own decompression-bomb limit would refuse with a different reason: the header check
# (check_dimensions, max_image_pixels) runs before any decode here.
Image.MAX_IMAGE_PIXELS = None

JPEG_MAGIC = b'\xff\xd8\xff'
JPEG_EOI = b'\xff\xd9'
JPEG_SOS = b'\xff\xda'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
PNG_IEND = b'IEND'
# Frame header markers SOF0-SOF15 (C4 DHT, C8 JPG and CC DAC are not frame headers).
# A progressive JPEG has ~10 scans; thousands of tiny scans make a CPU bomb (each scan walks
# every coefficient). libjpeg-turbo's own tools stop at 500.
MAX_JPEG_SCANS = 100
# Bytes that replace a JPEG's end marker in the completeness check: no 0xFF (no marker), a bit
# pattern far from the zero bits a decoder substitutes for missing data.
_SCAN_FILLER = bytes([0x55, 0xAA, 0x33, 0xCC, 0x0F, 0xF0, 0x69, 0x96]) * 8


class RequestError(ValueError):
    """A request the server refuses; the message is returned to the client as the error."""


def image_kind(format_string):
    """Map a sensor_msgs/CompressedImage ``format`` to 'jpeg' or 'png'; raise RequestError.

    Accepts the plain forms ('jpeg', 'jpg', 'png') and the image_transport form
    ('rgb8; jpeg compressed bgr8').
    """
    text = (format_string or '').strip().lower()
    if not text:
        raise RequestError("image format is empty (expected 'jpeg' or 'png')")
    words = text.replace(';', ' ').replace(',', ' ').split()
    if 'jpeg' in words or 'jpg' in words:
        return 'jpeg'
    if 'png' in words:
        return 'png'
    raise RequestError(f"unsupported image format '{format_string}' (expected 'jpeg' or 'png')")


def check_payload(data, format_string, max_bytes):
    """Validate the compressed bytes of a request; return the image kind or raise RequestError.

    Checks: non-empty, size limit, the declared format, the file signature matching it, and that
    the file ends (JPEG end-of-image marker, PNG IEND chunk), because decoders accept a
    truncated file and return a partly grey image.
    """
    size = len(data)
    if size == 0:
        raise RequestError('empty image payload')
    if size > max_bytes:
        raise RequestError(f'payload of {size} bytes exceeds the limit of {max_bytes} bytes')
    kind = image_kind(format_string)
    head = bytes(data[:8])
    tail = bytes(data[-32:])
    if kind == 'jpeg':
        if not head.startswith(JPEG_MAGIC):
            raise RequestError('format says jpeg but the payload is not a JPEG file')
        if JPEG_EOI not in tail.rstrip(b'\x00'):
            raise RequestError('truncated JPEG (no end-of-image marker)')
    else:
        if head != PNG_MAGIC:
            raise RequestError('format says png but the payload is not a PNG file')
        if PNG_IEND not in tail:
            raise RequestError('truncated PNG (no IEND chunk)')
    return kind


def read_image_header(data, kind):
    """Return the :class:`ImageHeader` of JPEG/PNG bytes without decoding; raise RequestError."""
    try:
        return _read_header(data, kind)
    except ImageHeaderError as error:
        raise RequestError(str(error)) from None


def check_dimensions(header, max_pixels):
    """Refuse an image whose declared size exceeds ``max_pixels`` (before it is decoded)."""
    if header.pixels > max_pixels:
        raise RequestError(
            f'image too large: the {header.kind.upper()} header declares {header.width}x'
            f'{header.height} = {header.pixels} pixels, more than max_image_pixels '
            f'({max_pixels}); not decoded')


def _decode_png_rgb(data):
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:               # e.g. a size OpenCV's own limits refuse
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise RequestError('cannot decode the image: the decoder refused it'
                           f" ({lines[-1].strip() if lines else 'no reason given'})") from None
    if bgr is None:
        raise RequestError('cannot decode the image: corrupt or unsupported PNG data')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_jpeg_rgb(data):
    """Decode JPEG bytes with Pillow to an RGB uint8 array (errors as the exception)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))


def jpeg_scan_complete(data, rgb):
    """Return whether JPEG ``data`` (decoded as ``rgb``) held all of its entropy-coded data.

    A decoder that meets the end marker before the last block fills the rest with zero bits
    and returns an image with a grey or smeared end (libjpeg only warns). The check decodes
    again with filler bytes in place of the end marker: bytes after complete scan data are
    skipped and change nothing, while a cut-short scan consumes them and its pixels change (or
    the decoder fails on them). A cut that removes only padding bits, or bits that change no
    pixel, passes.
    """
    end = data.rfind(JPEG_EOI)
    try:
        again = _decode_jpeg_rgb(data[:end] + _SCAN_FILLER + JPEG_EOI)
    except Exception:  # noqa: BLE001 - the filler broke the decode: it was read as scan data
        return False
    return np.array_equal(again, rgb)


def decode_checked(data, header):
    """Decode JPEG/PNG bytes to an RGB uint8 image, refusing incomplete ones; raise RequestError.

    ``header`` comes from :func:`read_image_header` (and passed :func:`check_dimensions`).
    """
    data = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    if header.kind == 'jpeg':
        scans = data.count(JPEG_SOS)          # 0xFF 0xDA cannot occur inside scan data
        if scans > MAX_JPEG_SCANS:
            raise RequestError(f'JPEG with {scans} scans (more than {MAX_JPEG_SCANS}): '
                               'not decoded')
        try:
            rgb = _decode_jpeg_rgb(data)
        except Exception as error:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ...
            raise RequestError(f'cannot decode the image: corrupt JPEG data ({error})') from None
    else:
        rgb = _decode_png_rgb(data)
    if rgb.shape[:2] != (header.height, header.width):
        raise RequestError(f'decoded size {rgb.shape[1]}x{rgb.shape[0]} differs from the '
                           f'header\'s {header.width}x{header.height}')
    if header.kind == 'jpeg' and not jpeg_scan_complete(data, rgb):
        raise RequestError('truncated JPEG: the image data ends before the last block '
                           '(an end marker was appended to a cut-short file)')
    return rgb


def check_features(partition, shape, dtype, scale, zero_point, data, partition_shapes,
                   max_bytes):
    """Validate and decode the tensor of an ``OffloadFeatures`` request; RequestError.

    ``partition_shapes`` maps each partition this server can finish (blocks run on the robot)
    to its tensor shape. The byte limit is checked before anything is decompressed, and the
    decompressed size is bounded by the partition's shape (see ``cbo_common.tensor_codec``).
    Returns the float32 tensor.
    """
    from cbo_common.tensor_codec import decode_tensor, TensorPayload, TensorPayloadError
    if not partition_shapes:
        raise RequestError('this server has no early-exit partitions (build them with `python '
                           '-m cbo_ros.assets.early_exit_export` on the workstation)')
    if int(partition) not in partition_shapes:
        raise RequestError(f'unknown partition {int(partition)} (this server finishes '
                           f'partitions {sorted(partition_shapes)})')
    if len(data) == 0:
        raise RequestError('empty tensor payload')
    if len(data) > max_bytes:
        raise RequestError(f'payload of {len(data)} bytes exceeds the limit of {max_bytes} '
                           'bytes')
    payload = TensorPayload(tuple(int(s) for s in shape), str(dtype), float(scale),
                            int(zero_point), data if isinstance(data, bytes) else bytes(data))
    try:
        return decode_tensor(payload, expected_shape=partition_shapes[int(partition)],
                             max_bytes=max_bytes)
    except TensorPayloadError as error:
        raise RequestError(f'bad tensor for partition {int(partition)}: {error}') from None
