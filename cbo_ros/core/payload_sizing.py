"""Payload sizes of an offload: the JPEG bytes of a frame's centre square per resolution.

Consecutive video frames compress alike: the planner weighs the sizes of the latest
measurement and encodes only the resolution it chose. Every ``refresh_frames`` frames the sizes
are measured again on the current frame in a background thread (an encoding per resolution:
5-28 ms of a loaded 2-core CPU at 25 fps, which must not hold up the caller's executor).
"""

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Mapping, Optional

import numpy as np

from cbo_ros.perception.image_ops import center_square, encode_jpeg


class PayloadSizer:
    """The latest JPEG size of every offload resolution, and the encoder of the chosen one.

    ``on_error(text)`` is told when a background measurement failed (the next one retries).
    Thread safety: the measurement thread and the caller share ``sizes`` under ``lock``; the
    other methods are meant for one caller thread.
    """

    def __init__(self, resolutions: Iterable[int], quality: int = 90, refresh_frames: int = 5,
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        self.resolutions = [int(r) for r in resolutions]
        self.quality = int(quality)
        self.refresh_frames = int(refresh_frames)
        self.on_error = on_error
        # Real concurrency whatever the executor: measure_sizes runs in the worker thread.
        self.lock = threading.Lock()
        self.sizes: Dict[int, int] = {}          # resolution -> bytes of its latest JPEG
        self.frames_since = 0
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='jpeg_sizes')
        self.job: Optional[Future] = None

    def set_quality(self, quality: int) -> None:
        """Encode at ``quality`` from now on; sizes measured at the old quality no longer hold."""
        with self.lock:
            self.quality = int(quality)
            self.sizes.clear()

    def encode(self, rgb: np.ndarray, resolution: int) -> bytes:
        """Return the JPEG of ``rgb``'s centre square at ``resolution``, recording its size."""
        payload = encode_jpeg(center_square(rgb, resolution), self.quality)
        with self.lock:
            self.sizes[resolution] = len(payload)
        return payload

    def encode_payloads(self, rgb: np.ndarray) -> Dict[int, bytes]:
        """Return the payloads encoded now: every resolution while a size is unknown, else none.

        Every ``refresh_frames`` calls with known sizes, the sizes are measured again on
        ``rgb`` in the background (one measurement at a time).
        """
        with self.lock:
            unknown = any(r not in self.sizes for r in self.resolutions)
        if unknown:
            self.frames_since = 0
            return {r: self.encode(rgb, r) for r in self.resolutions}
        self.frames_since += 1
        if self.frames_since >= self.refresh_frames and (self.job is None or self.job.done()):
            if self.job is not None and self.job.exception() is not None and self.on_error:
                self.on_error(f'JPEG size measurement failed: {self.job.exception()}')
            self.frames_since = 0
            self.job = self.worker.submit(self.measure_sizes, rgb, self.quality)
        return {}

    def measure_sizes(self, rgb: np.ndarray, quality: int) -> None:
        """Record the JPEG size of ``rgb`` at every resolution (the background thread's job)."""
        sizes = {r: len(encode_jpeg(center_square(rgb, r), quality)) for r in self.resolutions}
        with self.lock:
            if quality == self.quality:          # not measured at a quality since replaced
                self.sizes.update(sizes)

    def size(self, resolution: int, payloads: Mapping[int, bytes]) -> int:
        """Return the size to plan with: the payload encoded now, else the latest measured."""
        if resolution in payloads:
            return len(payloads[resolution])
        with self.lock:
            return self.sizes[resolution]

    def close(self) -> None:
        """Stop the measuring thread (a measurement under way is abandoned)."""
        self.worker.shutdown(wait=False, cancel_futures=True)
