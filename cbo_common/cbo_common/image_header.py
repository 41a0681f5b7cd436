"""Image size from a JPEG or PNG file header, read without decoding (decompression bombs).

Shared by the robot's frame readers and the workstation's server: both refuse an image whose
header declares more pixels than they allow before any decoder allocates memory for it.
"""

import struct
from dataclasses import dataclass

JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers RST0-RST7.
JPEG_STANDALONE_MARKERS = frozenset([0x01] + list(range(0xD0, 0xD8)))


class ImageHeaderError(ValueError):
    """The header is corrupt or declares an absurd image; the message says why."""


@dataclass(frozen=True)
class ImageHeader:
    """What the file header declares, read without decoding."""

    kind: str          # 'jpeg' or 'png'
    width: int
    height: int
    channels: int

    @property
    def pixels(self):
        """Width times height."""
        return self.width * self.height


def jpeg_header(data):
    """Walk the JPEG marker segments up to the frame header; return an ImageHeader."""
    size = len(data)
    pos = 2                                               # after SOI
    while pos < size:
        if data[pos] != 0xFF:
            raise ImageHeaderError(f'corrupt JPEG header: no marker at byte {pos}')
        while pos < size and data[pos] == 0xFF:           # fill bytes before a marker
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker in JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageHeaderError('corrupt JPEG header: '
                                   f"{'end of image' if marker == 0xD9 else 'scan'} before the "
                                   'frame header (no image size)')
        if pos + 2 > size:
            break
        (length,) = struct.unpack_from('>H', data, pos)
        if length < 2 or pos + length > size:
            raise ImageHeaderError(f'corrupt JPEG header: segment 0xFF{marker:02X} of {length} '
                                   f'bytes at byte {pos} runs past the end of the file')
        if marker in JPEG_SOF_MARKERS:
            if length < 8:
                raise ImageHeaderError('corrupt JPEG header: frame header too short')
            height, width, channels = struct.unpack_from('>HHB', data, pos + 3)
            if height == 0:
                raise ImageHeaderError('JPEG header declares a height of 0 (height defined later '
                                       'by a DNL marker is not supported)')
            if width == 0 or channels not in (1, 3, 4):
                raise ImageHeaderError(f'absurd JPEG header: {width}x{height} pixels, {channels} '
                                       'components')
            return ImageHeader('jpeg', int(width), int(height), int(channels))
        pos += length
    raise ImageHeaderError('corrupt JPEG header: no frame header (no image size)')


def png_header(data):
    """Read the IHDR chunk (it must come first); return an ImageHeader."""
    if len(data) < 33 or bytes(data[12:16]) != b'IHDR':
        raise ImageHeaderError('corrupt PNG header: the first chunk is not IHDR')
    width, height, depth, color = struct.unpack_from('>IIBB', data, 16)
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color)
    if width == 0 or height == 0 or channels is None or depth not in (1, 2, 4, 8, 16):
        raise ImageHeaderError(f'absurd PNG header: {width}x{height} pixels, bit depth {depth}, '
                               f'colour type {color}')
    return ImageHeader('png', int(width), int(height), channels)


def read_image_header(data, kind=None):
    """Return the :class:`ImageHeader` of JPEG/PNG bytes without decoding (ImageHeaderError).

    ``kind`` is ``'jpeg'`` or ``'png'``; None tells them apart by their magic bytes.
    """
    data = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    if kind is None:
        if data[:3] == b'\xff\xd8\xff':
            kind = 'jpeg'
        elif data[:8] == b'\x89PNG\r\n\x1a\n':
            kind = 'png'
        else:
            raise ImageHeaderError('neither a JPEG nor a PNG file')
    return jpeg_header(data) if kind == 'jpeg' else png_header(data)
