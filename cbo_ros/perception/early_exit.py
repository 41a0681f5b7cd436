"""Run the early-exit Lite0 parts with onnxruntime (robot heads, server tails; no torch).

The parts and their manifest are built at set-up (``cbo_ros.assets.early_exit_export``).
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cbo_ros.assets import paths
from cbo_ros.perception.classifier import resolve_providers
from cbo_ros.perception.image_ops import center_square

EARLY_EXIT_DIR = 'early_exit'      # under the artifacts' models/
MANIFEST = 'manifest.json'


def find_early_exit_dir():
    """Directory of the built parts (the first artifacts root that has them)."""
    found = paths.find_artifact('models', f'{EARLY_EXIT_DIR}/{MANIFEST}')
    return found.parent if found is not None else paths.models_dir() / EARLY_EXIT_DIR


class EarlyExitModel:
    """Head and tail sessions of every partition of the early-exit model."""

    def __init__(self, directory=None, providers=('CPUExecutionProvider',), intra_op_threads=0):
        self.directory = Path(directory or find_early_exit_dir())
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                paths.not_found_message('early-exit model manifest',
                                        f'{EARLY_EXIT_DIR}/{MANIFEST}', 'models')
                + ' (build the parts with `python -m cbo_ros.assets.early_exit_export`)')
        self.manifest = json.loads(manifest_path.read_text())
        self.input_size = int(self.manifest['input_size'])
        self.partitions = {int(p['blocks']): p for p in self.manifest['partitions']}
        # Short names ('cuda', 'cpu') and providers missing here resolve as for the classifier;
        # onnxruntime itself rejects a short name and falls back to the CPU alone.
        self.providers, self.provider_warnings = resolve_providers(list(providers))
        self._options = ort.SessionOptions()
        if intra_op_threads:
            self._options.intra_op_num_threads = int(intra_op_threads)
        self._sessions = {}

    @property
    def blocks(self):
        """Partition points (blocks run on the robot), ascending."""
        return sorted(self.partitions)

    def tensor_shape(self, blocks):
        """Shape of partition ``blocks``'s intermediate tensor (batch of 1)."""
        return tuple(self.partitions[int(blocks)]['tensor_shape'])

    def _session(self, blocks, part):
        key = (int(blocks), part)
        if key not in self._sessions:
            path = self.directory / self.partitions[int(blocks)][part]
            if not os.path.isfile(path):
                raise FileNotFoundError(f'early-exit {part} of partition b{blocks} missing: '
                                        f'{path}')
            self._sessions[key] = ort.InferenceSession(str(path), sess_options=self._options,
                                                       providers=self.providers)
        return self._sessions[key]

    def preprocess(self, frames):
        """RGB uint8 frames -> the model's normalised NCHW batch (centre square)."""
        squares = np.stack([center_square(f, self.input_size) for f in frames])
        batch = squares.astype(np.float32) * (2.0 / 255.0) - 1.0
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def head(self, blocks, batch):
        """Run partition ``blocks``'s head: returns (exit logits, intermediate tensor)."""
        exit_logits, features = self._session(blocks, 'head').run(None, {'image': batch})
        return exit_logits, features

    def tail(self, blocks, features):
        """Run partition ``blocks``'s tail on intermediate tensors: returns final logits."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        return self._session(blocks, 'tail').run(None, {'features': features})[0]
