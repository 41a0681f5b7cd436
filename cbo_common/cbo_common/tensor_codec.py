"""Intermediate-tensor payloads of partitioned inference (numpy + zlib; robot and server).

The robot quantises a float tensor to uint8 with an affine scale/zero-point
(``x ~ scale * (q - zero_point)``), compresses the bytes with zlib and sends them with the shape;
the server checks everything against the partition it expects before and after decompressing.
"""

import zlib
from dataclasses import dataclass

import numpy as np

DTYPE_UINT8 = 'uint8'


class TensorPayloadError(ValueError):
    """A tensor payload is malformed or does not match its partition."""


@dataclass
class TensorPayload:
    """A quantised, compressed tensor as it travels."""

    shape: tuple
    dtype: str
    scale: float
    zero_point: int
    data: bytes            # zlib-compressed uint8 values, C order


def quantize_uint8(tensor):
    """Return ``(q, scale, zero_point)``: the uint8 affine quantisation of a float tensor."""
    tensor = np.asarray(tensor, dtype=np.float32)
    low = float(min(tensor.min(), 0.0)) if tensor.size else 0.0
    high = float(max(tensor.max(), 0.0)) if tensor.size else 0.0
    scale = (high - low) / 255.0 if high > low else 1.0
    zero_point = int(round(-low / scale))
    q = np.clip(np.round(tensor / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, scale, zero_point


def dequantize(q, scale, zero_point):
    """Float32 tensor of uint8 values ``q``."""
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale))


def encode_tensor(tensor, level=6):
    """Quantise and compress a float tensor into a ``TensorPayload``."""
    q, scale, zero_point = quantize_uint8(tensor)
    return TensorPayload(tuple(int(s) for s in q.shape), DTYPE_UINT8, float(scale),
                         int(zero_point), zlib.compress(q.tobytes(), level))


def decode_tensor(payload, expected_shape=None, max_bytes=None):
    """Validate and decode a ``TensorPayload`` into a float32 tensor.

    ``expected_shape``: the partition's tensor shape, a batch dimension of 1 included (None:
    any). ``max_bytes``: limit on the compressed size, checked before decompressing; the
    decompressed size is bounded by the shape (a zlib bomb stops there). Raises
    ``TensorPayloadError`` with the reason.
    """
    shape = tuple(int(s) for s in payload.shape)
    if payload.dtype != DTYPE_UINT8:
        raise TensorPayloadError(f"dtype {payload.dtype!r} not supported (only '{DTYPE_UINT8}')")
    if not shape or any(s <= 0 for s in shape):
        raise TensorPayloadError(f'bad shape {list(shape)}: every dimension must be > 0')
    if expected_shape is not None and shape != tuple(int(s) for s in expected_shape):
        raise TensorPayloadError(f'shape {list(shape)} does not match the partition '
                                 f'({list(expected_shape)})')
    if not np.isfinite(payload.scale) or payload.scale <= 0:
        raise TensorPayloadError(f'scale {payload.scale} must be finite and > 0')
    if not 0 <= int(payload.zero_point) <= 255:
        raise TensorPayloadError(f'zero_point {payload.zero_point} outside [0, 255]')
    data = bytes(payload.data)
    if not data:
        raise TensorPayloadError('empty tensor data')
    if max_bytes is not None and len(data) > int(max_bytes):
        raise TensorPayloadError(f'payload of {len(data)} bytes exceeds the limit of '
                                 f'{int(max_bytes)} bytes')
    count = int(np.prod(shape))
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, count + 1)
    except zlib.error as error:
        raise TensorPayloadError(f'data is not zlib-compressed ({error})') from None
    if len(raw) != count or inflater.unconsumed_tail or not inflater.eof:
        raise TensorPayloadError(f'data holds {"more than " if len(raw) > count else ""}'
                                 f'{len(raw)} values, the shape {list(shape)} needs {count}')
    q = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    return dequantize(q, payload.scale, payload.zero_point)
