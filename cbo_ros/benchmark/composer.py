"""Compose labelled robot-camera clips: a stamp (RGBA photo cut-out) on real backgrounds.

Every clip follows a seeded camera trajectory (approach, recede, pan, rotation) with the
degradations a robot camera sees (motion blur, defocus, exposure drift, sensor noise, partial
occlusion, JPEG). The same clip spec always gives byte-identical frames (numpy's seeded
generator and single-threaded OpenCV; no wall clock, no global state).
"""

from dataclasses import dataclass

import cv2
import numpy as np

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
# Backgrounds are stored this much larger than the frame, so the camera can pan over them.
BACKGROUND_MARGIN = 1.125
TRAJECTORIES = ('approach', 'recede', 'pan', 'rotate')
# A frame is labelled when at least this share of the object's pixels is visible.
MIN_VISIBLE_FRACTION = 0.35


@dataclass
class ClipSpec:
    """What one clip shows; with ``seed`` it fixes every pixel of the clip."""

    clip_id: str
    object_id: str
    stamp: str
    background: str
    trajectory: str
    seed: int
    frames: int = 32
    min_size: float = 0.15       # object extent range (share of the frame's height/width)
    max_size: float = 0.9


def cover_resize(rgb, width, height):
    """Scale and centre-crop ``rgb`` to exactly ``width`` x ``height``."""
    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    resized = cv2.resize(rgb, (max(width, round(w * scale)), max(height, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def background_size():
    """Return the (width, height) backgrounds are resized to (the frame plus a pan margin)."""
    return round(FRAME_WIDTH * BACKGROUND_MARGIN), round(FRAME_HEIGHT * BACKGROUND_MARGIN)


def load_video_background(path, frames=40, stride=2):
    """Return up to ``frames`` RGB frames (every ``stride``-th) of a video, background-sized."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f'cannot open background video {path}')
    width, height = background_size()
    result, index = [], 0
    while len(result) < frames:
        ok, bgr = capture.read()
        if not ok:
            break
        if index % stride == 0:
            result.append(cover_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), width, height))
        index += 1
    capture.release()
    if not result:
        raise ValueError(f'background video {path} has no frames')
    return result


def load_photo_background(path):
    """Return a still photo as a one-frame background."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'cannot read background photo {path}')
    width, height = background_size()
    return [cover_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), width, height)]


def load_stamp(path):
    """Read a stamp as (RGB uint8, alpha float32 0..1); stamps without alpha are rejected."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'cannot read stamp {path}')
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f'stamp {path} has no alpha channel')
    rgb = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
    alpha = image[..., 3].astype(np.float32) / 255.0
    ys, xs = np.nonzero(alpha > 0.05)
    if len(ys) == 0:
        raise ValueError(f'stamp {path} is fully transparent')
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return (np.ascontiguousarray(rgb[top:bottom, left:right]),
            np.ascontiguousarray(alpha[top:bottom, left:right]))


def _smooth_walk(rng, count, scale):
    """Return a smooth random curve of ``count`` values (camera shake, drifts)."""
    knots = rng.normal(0.0, scale, size=max(2, count // 8 + 2))
    return np.interp(np.linspace(0, len(knots) - 1, count), np.arange(len(knots)), knots)


def _plan(spec, rng, stamp_shape):
    """Per-frame geometry and degradation parameters of a clip."""
    n = spec.frames
    t = np.linspace(0.0, 1.0, n)
    lo, hi = spec.min_size, spec.max_size
    angle = np.zeros(n)
    center_x = 0.5 + _smooth_walk(rng, n, 0.03)
    center_y = 0.5 + _smooth_walk(rng, n, 0.03)
    if spec.trajectory in ('approach', 'recede'):
        small = rng.uniform(lo, lo + 0.25 * (hi - lo))
        large = rng.uniform(lo + 0.55 * (hi - lo), hi)
        ease = t * t * (3 - 2 * t)
        size = small + (large - small) * (ease if spec.trajectory == 'approach' else 1 - ease)
        center_x += rng.uniform(-0.15, 0.15) * (1 - ease if spec.trajectory == 'approach' else ease)
        angle += rng.uniform(-10, 10)
    elif spec.trajectory == 'pan':
        size = np.full(n, rng.uniform(lo + 0.1 * (hi - lo), lo + 0.75 * (hi - lo)))
        size *= 1 + _smooth_walk(rng, n, 0.04)
        start, end = (-0.15, 1.15) if rng.random() < 0.5 else (1.15, -0.15)
        center_x = start + (end - start) * t + _smooth_walk(rng, n, 0.01)
        angle += rng.uniform(-8, 8)
    elif spec.trajectory == 'rotate':
        size = np.full(n, rng.uniform(lo + 0.2 * (hi - lo), hi * 0.95))
        size *= 1 + _smooth_walk(rng, n, 0.05)
        sweep = rng.uniform(25, 70) * (1 if rng.random() < 0.5 else -1)
        angle = rng.uniform(-15, 15) + sweep * (t - 0.5) * 2
    else:
        raise ValueError(f'unknown trajectory {spec.trajectory!r} (use one of {TRAJECTORIES})')
    size = np.clip(size, lo, hi)
    # Camera motion over the (larger) background: a drift plus shake, in pixels.
    bg_w, bg_h = background_size()
    pan_x = np.clip((bg_w - FRAME_WIDTH) * (0.5 + _smooth_walk(rng, n, 0.3)), 0, bg_w - FRAME_WIDTH)
    pan_y = np.clip((bg_h - FRAME_HEIGHT) * (0.5 + _smooth_walk(rng, n, 0.3)), 0,
                    bg_h - FRAME_HEIGHT)
    if spec.trajectory == 'pan':   # the camera turns, so the background moves against the object
        direction = np.sign(center_x[-1] - center_x[0])
        pan_x = np.clip((bg_w - FRAME_WIDTH) * (0.5 - 0.5 * direction * (t - 0.5) * 2), 0,
                        bg_w - FRAME_WIDTH)
    degradations = {
        'motion_blur': float(rng.choice([0.0, 0.5, 1.0, 1.5], p=[0.25, 0.3, 0.3, 0.15])),
        'defocus': float(rng.choice([0.0, 0.7, 1.5, 2.5], p=[0.35, 0.3, 0.2, 0.15])),
        'focus_hunting': bool(rng.random() < 0.3),
        'exposure_gain': float(rng.uniform(0.6, 1.4)),
        'exposure_drift': float(rng.uniform(0.0, 0.35)),
        'gamma': float(rng.uniform(0.8, 1.25)),
        'noise_sigma': float(rng.choice([0.0, 3.0, 6.0, 10.0], p=[0.3, 0.3, 0.25, 0.15])),
        'occlusion': bool(rng.random() < 0.35),
        'jpeg_quality': int(rng.choice([0, 30, 50, 75], p=[0.4, 0.2, 0.2, 0.2])),
    }
    gain = degradations['exposure_gain'] * (1 + degradations['exposure_drift'] *
                                            np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5) +
                                                                rng.random())))
    defocus = np.full(n, degradations['defocus'])
    if degradations['focus_hunting']:
        defocus = defocus + 1.5 * np.abs(np.sin(np.pi * (t * rng.uniform(1, 3) + rng.random())))
    occluder = None
    if degradations['occlusion']:
        # A bar (post, passer-by, arm) sweeping across the view during part of the clip.
        occluder = {
            'width': rng.uniform(0.12, 0.35), 'start': rng.uniform(-0.3, 0.4),
            'speed': rng.uniform(0.8, 1.8) * (1 if rng.random() < 0.5 else -1),
            'shade': rng.uniform(0.1, 0.6),
            'source': (rng.integers(0, bg_w - FRAME_WIDTH + 1),
                       rng.integers(0, bg_h - FRAME_HEIGHT + 1)),
        }
    stamp_h, stamp_w = stamp_shape
    return {'size': size, 'angle': angle, 'cx': center_x, 'cy': center_y, 'pan_x': pan_x,
            'pan_y': pan_y, 'gain': gain, 'defocus': defocus, 'occluder': occluder,
            'degradations': degradations, 'aspect': stamp_w / stamp_h}


def _warp_stamp(rgb, alpha, scale, angle, center):
    """Scale and rotate the stamp about its centre into frame coordinates (clipped)."""
    h, w = alpha.shape
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), float(scale))
    matrix[0, 2] += center[0] - w / 2.0
    matrix[1, 2] += center[1] - h / 2.0
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=np.float64)
    mapped = corners @ matrix.T
    x0, y0 = np.floor(mapped.min(axis=0)).astype(int)
    x1, y1 = np.ceil(mapped.max(axis=0)).astype(int)
    full_area = float(alpha.sum()) * scale * scale
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, FRAME_WIDTH), min(y1, FRAME_HEIGHT)
    if cx1 <= cx0 or cy1 <= cy0:
        return None, None, (x0, y0, x1, y1), (0, 0, 0, 0), full_area
    matrix[0, 2] -= cx0
    matrix[1, 2] -= cy0
    size = (cx1 - cx0, cy1 - cy0)
    interpolation = cv2.INTER_AREA if scale < 0.7 else cv2.INTER_LINEAR
    warped_rgb = cv2.warpAffine(rgb, matrix, size, flags=interpolation,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped_alpha = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped_rgb, warped_alpha, (x0, y0, x1, y1), (cx0, cy0, cx1, cy1), full_area


def _motion_blur(frame, length, angle_rad):
    """Average of shifted copies along the motion direction (a line kernel, cheap for long ones)."""
    taps = int(min(9, max(2, round(length))))
    pad = int(np.ceil(length / 2)) + 1
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    height, width = frame.shape[:2]
    total = np.zeros_like(frame)
    for offset in np.linspace(-length / 2, length / 2, taps):
        dx = int(round(offset * np.cos(angle_rad)))
        dy = int(round(offset * np.sin(angle_rad)))
        total += padded[pad + dy:pad + dy + height, pad + dx:pad + dx + width]
    total *= 1.0 / taps
    return total


def compose_clip(spec, stamp_rgb, stamp_alpha, background_frames):
    """Render a clip; return (frames as RGB uint8 arrays, per-frame metadata dicts)."""
    rng = np.random.default_rng([int(spec.seed) & 0xFFFFFFFF, 0x5eed])
    plan = _plan(spec, rng, stamp_alpha.shape)
    degr = plan['degradations']
    stamp_h, stamp_w = stamp_alpha.shape
    noise_bank = None
    if degr['noise_sigma'] > 0:
        noise_bank = rng.normal(0.0, degr['noise_sigma'],
                                (FRAME_HEIGHT + 32, FRAME_WIDTH + 32, 3)).astype(np.float32)
    bg_offset = int(rng.integers(0, len(background_frames)))
    bg_direction = 1 if rng.random() < 0.5 else -1
    gamma_lut = None
    frames, metadata = [], []
    previous_center = None
    for i in range(spec.frames):
        # Ping-pong through the background video so clips longer than it stay continuous.
        period = max(1, 2 * len(background_frames) - 2)
        k = (bg_offset + bg_direction * i) % period
        k = k if k < len(background_frames) else period - k
        bg = background_frames[k]
        px, py = int(round(plan['pan_x'][i])), int(round(plan['pan_y'][i]))
        frame = bg[py:py + FRAME_HEIGHT, px:px + FRAME_WIDTH].astype(np.float32)
        # Object: the size is its larger extent relative to the frame (height or width).
        extent = plan['size'][i]
        scale = min(extent * FRAME_HEIGHT / stamp_h, extent * FRAME_WIDTH / stamp_w)
        center = (plan['cx'][i] * FRAME_WIDTH, plan['cy'][i] * FRAME_HEIGHT)
        warped_rgb, warped_alpha, box, clipped, full_area = _warp_stamp(
            stamp_rgb, stamp_alpha, scale, plan['angle'][i], center)
        visible_area = 0.0
        if warped_alpha is not None:
            cx0, cy0, cx1, cy1 = clipped
            region = frame[cy0:cy1, cx0:cx1]
            a = warped_alpha[..., None]
            region *= (1.0 - a)
            region += warped_rgb.astype(np.float32) * a
            visible_area = float(warped_alpha.sum())
        occluded = 0.0
        occ = plan['occluder']
        if occ is not None:
            position = occ['start'] + occ['speed'] * i / max(1, spec.frames - 1)
            ox0 = int(round((position if occ['speed'] > 0 else 1 - position) * FRAME_WIDTH))
            ox1 = ox0 + int(round(occ['width'] * FRAME_WIDTH))
            ox0, ox1 = max(ox0, 0), min(ox1, FRAME_WIDTH)
            if ox1 > ox0:
                sx, sy = occ['source']
                patch = bg[sy:sy + FRAME_HEIGHT, sx + ox0:sx + ox1].astype(np.float32)
                frame[:, ox0:ox1] = patch * occ['shade']
                if warped_alpha is not None:
                    cx0, cy0, cx1, cy1 = clipped
                    lo, hi = max(ox0, cx0) - cx0, min(ox1, cx1) - cx0
                    if hi > lo:
                        occluded = float(warped_alpha[:, lo:hi].sum())
        visible = max(0.0, visible_area - occluded) / full_area if full_area > 0 else 0.0
        # Camera: motion blur from the apparent motion, defocus, exposure, noise, JPEG.
        blur_length = 0.0
        if previous_center is not None and degr['motion_blur'] > 0:
            dx = center[0] - previous_center[0] + (plan['pan_x'][i] - plan['pan_x'][i - 1])
            dy = center[1] - previous_center[1] + (plan['pan_y'][i] - plan['pan_y'][i - 1])
            blur_length = min(16.0, degr['motion_blur'] * (np.hypot(dx, dy) * 0.5 + 2.0))
            if blur_length >= 1.5:
                frame = _motion_blur(frame, blur_length, np.arctan2(dy, dx))
        previous_center = center
        sigma = float(plan['defocus'][i])
        if sigma > 2.0:   # a wide blur at half resolution (same look, a third of the cost)
            small = cv2.resize(frame, (FRAME_WIDTH // 2, FRAME_HEIGHT // 2),
                               interpolation=cv2.INTER_AREA)
            frame = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / 2),
                               (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_LINEAR)
        elif sigma > 0.3:
            frame = cv2.GaussianBlur(frame, (0, 0), sigma)
        frame *= float(plan['gain'][i])
        if noise_bank is not None:
            ny, nx = rng.integers(0, 33, size=2)
            frame += noise_bank[ny:ny + FRAME_HEIGHT, nx:nx + FRAME_WIDTH]
        out = np.clip(frame, 0, 255).astype(np.uint8)
        if abs(degr['gamma'] - 1.0) > 1e-3:
            if gamma_lut is None:
                gamma_lut = np.clip(255.0 * (np.arange(256) / 255.0) ** degr['gamma'], 0,
                                    255).astype(np.uint8)
            out = cv2.LUT(out, gamma_lut)
        if degr['jpeg_quality']:
            ok, data = cv2.imencode('.jpg', out, [int(cv2.IMWRITE_JPEG_QUALITY),
                                                  degr['jpeg_quality']])
            out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        frames.append(out)
        x0, y0, x1, y1 = box
        metadata.append({
            'frame': i,
            'box': [int(max(x0, 0)), int(max(y0, 0)), int(min(x1, FRAME_WIDTH)),
                    int(min(y1, FRAME_HEIGHT))],
            'extent': round(float(extent), 4),
            'height_fraction': round(float(min(y1, FRAME_HEIGHT) - max(y0, 0)) / FRAME_HEIGHT, 4),
            'scale': round(float(scale), 4),
            'angle': round(float(plan['angle'][i]), 2),
            'visible_fraction': round(float(min(1.0, visible)), 4),
            'labelled': bool(visible >= MIN_VISIBLE_FRACTION),
            'background_frame': int(k),
            'motion_blur_px': round(float(blur_length), 2),
            'defocus_sigma': round(sigma, 2),
            'exposure_gain': round(float(plan['gain'][i]), 3),
        })
    return frames, metadata, degr
