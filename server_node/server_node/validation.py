"""ROS-free checks of offload request payloads (before any decoding work is spent on them)."""

JPEG_MAGIC = b'\xff\xd8\xff'
JPEG_EOI = b'\xff\xd9'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
PNG_IEND = b'IEND'


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
    the file is complete (JPEG end-of-image marker, PNG IEND chunk), because decoders accept a
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
