"""Where cbo_ros finds its generated artifacts (models, media, caches) and shipped config."""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_ROOT = PACKAGE_DIR.parent

ROBOT_MODEL_INT8 = 'robot_lite0_int8.onnx'
ROBOT_MODEL_FP32 = 'robot_lite0_fp32.onnx'
SERVER_MODEL_FP32 = 'server_lite2_fp32.onnx'
ROBOT_INPUT_SIZE = 224
SERVER_INPUT_SIZE = 260


def artifacts_dir():
    """Directory of generated artifacts: $CBO_ARTIFACTS, else <checkout>/artifacts."""
    env = os.environ.get('CBO_ARTIFACTS')
    if env:
        return Path(env)
    return SOURCE_ROOT / 'artifacts'


def models_dir():
    """Return the directory of the exported models."""
    return artifacts_dir() / 'models'


def media_dir():
    """Return the directory of the prepared media."""
    return artifacts_dir() / 'media'


def cache_dir():
    """Return the directory of cached model outputs."""
    return artifacts_dir() / 'cache'


def results_dir():
    """Return the directory of evaluation results."""
    return artifacts_dir() / 'results'


def config_dir():
    """Return the shipped config/ directory (the ament share directory when installed)."""
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('cbo_ros')) / 'config'
        if share.is_dir():
            return share
    except Exception:  # noqa: BLE001 - not installed through ament: use the checkout
        pass
    return SOURCE_ROOT / 'config'


def resolve_model(path_or_name):
    """Accept an absolute/relative path or a bare file name inside models_dir()."""
    candidate = Path(os.path.expanduser(str(path_or_name)))
    if candidate.is_file() or candidate.is_absolute():
        return candidate
    return models_dir() / candidate


def resolve_media(path_or_name):
    """Accept a path, or a name of the embedded media (e.g. 'bikes' or 'bikes.mp4')."""
    candidate = Path(os.path.expanduser(str(path_or_name)))
    if candidate.exists() or candidate.is_absolute():
        return candidate
    media = media_dir()
    if (media / candidate).exists():
        return media / candidate
    matches = sorted(media.glob(f'{candidate}.*')) if media.is_dir() else []
    return matches[0] if matches else candidate
