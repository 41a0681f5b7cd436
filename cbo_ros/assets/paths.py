"""Where cbo_ros finds its generated artifacts (models, calibration, media, caches) and config.

Artifacts are looked up in this order (``artifact_roots()``):

1. ``$CBO_ARTIFACTS`` when set (written by ``cbo_env.sh`` in a checkout);
2. ``<checkout>/artifacts`` when cbo_ros runs from a source checkout (``pip install -e``);
3. the install's package share directory ``<prefix>/share/cbo_ros/artifacts`` (a colcon
   install: ``cbo_prepare_assets --install-into`` or ``scripts/colcon_build.sh`` put them there);
4. the user data directory ``${XDG_DATA_HOME:-~/.local/share}/cbo_ros/artifacts``.

A file named without a directory (``robot_lite0_int8.onnx``, ``bikes.mp4``) is taken from the
first of these that has it. Generated files (caches, results, ``cbo_calibrate`` output) go to
the first of them that exists; when none does, to the checkout's ``artifacts/`` in a checkout,
else to the user data directory. Every "not found" error lists what was searched and the fix.
"""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_ROOT = PACKAGE_DIR.parent

ROBOT_MODEL_INT8 = 'robot_lite0_int8.onnx'
ROBOT_MODEL_FP32 = 'robot_lite0_fp32.onnx'
SERVER_MODEL_FP32 = 'server_lite2_fp32.onnx'
# The robot/server pairing, chosen on the true-label benchmark's calibration split
# (scripts/pairing_study.py; docs/evaluation.md): the robot's int8 Lite0 runs at 128 px (a
# low-resolution NPU model, ~10 % top-1 there), the server's Lite2 at 260 px on JPEG offloads of
# up to 384 px (~26 %): a gap of about 15 points that offloading can win back.
ROBOT_INPUT_SIZE = 128
OFFLOAD_RESOLUTIONS = (128, 176, 224, 288, 384)
SERVER_INPUT_SIZE = 260
CALIBRATION_FILE = 'cbo_calibration.json'


def running_from_source():
    """Return True when cbo_ros is imported from a source checkout (not an install)."""
    return (SOURCE_ROOT / 'package.xml').is_file() and (SOURCE_ROOT / 'setup.py').is_file()


def package_share_dir():
    """Return the install's ``share/cbo_ros`` directory, or None outside an install.

    The share directory of the prefix this code is installed in comes first (a colcon install:
    ``<prefix>/lib/pythonX.Y/site-packages/cbo_ros``), then the ament index.
    """
    if PACKAGE_DIR.parent.name in ('site-packages', 'dist-packages'):
        share = PACKAGE_DIR.parents[3] / 'share' / 'cbo_ros'
        if (share / 'package.xml').is_file():
            return share
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('cbo_ros'))
    except Exception:  # noqa: BLE001 - ament_index missing or cbo_ros not in AMENT_PREFIX_PATH
        return None


def user_artifacts_dir():
    """Return the per-user artifacts directory (XDG data directory)."""
    home_data = os.path.join(os.path.expanduser('~'), '.local', 'share')
    base = os.environ.get('XDG_DATA_HOME') or home_data
    return Path(base) / 'cbo_ros' / 'artifacts'


def artifact_roots():
    """Return the artifacts search order as ``[(label, directory)]`` (see the module doc)."""
    roots = []
    env = os.environ.get('CBO_ARTIFACTS')
    if env:
        roots.append(('$CBO_ARTIFACTS', Path(os.path.expanduser(env))))
    if running_from_source():
        roots.append(('source checkout', SOURCE_ROOT / 'artifacts'))
    share = package_share_dir()
    if share is not None:
        roots.append(('package share', share / 'artifacts'))
    roots.append(('user data', user_artifacts_dir()))
    return roots


def artifacts_dir():
    """Directory of generated artifacts: the first existing one of the search order."""
    roots = artifact_roots()
    for _, root in roots:
        if root.is_dir():
            return root
    if os.environ.get('CBO_ARTIFACTS'):
        return roots[0][1]
    return SOURCE_ROOT / 'artifacts' if running_from_source() else user_artifacts_dir()


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


def calibration_dir():
    """Return the directory of the fitted calibration files."""
    return artifacts_dir() / 'calibration'


def config_dir():
    """Return the shipped config/ directory (the ament share directory when installed)."""
    if running_from_source():
        return SOURCE_ROOT / 'config'
    share = package_share_dir()
    if share is not None and (share / 'config').is_dir():
        return share / 'config'
    return SOURCE_ROOT / 'config'


def find_artifact(subdir, name):
    """Return ``<root>/<subdir>/<name>`` of the first root that has it, or None."""
    for _, root in artifact_roots():
        candidate = root / subdir / name
        if candidate.exists():
            return candidate
    return None


def install_hint():
    """Return the commands that put the artifacts where this installation looks for them."""
    share = package_share_dir()
    if running_from_source() or share is None:
        return ('run scripts/setup.sh (or `cbo_prepare_assets --artifacts DIR`) to generate '
                f'them into {artifacts_dir()}, or set CBO_ARTIFACTS to a directory with models/, '
                'media/ and calibration/')
    return ('install them into this install with `cbo_prepare_assets --artifacts DIR '
            f'--install-into {share / "artifacts"}` (DIR: where scripts/setup.sh generated them, '
            "a checkout's artifacts/; scripts/colcon_build.sh does this), or copy them to "
            f'{user_artifacts_dir()}, or set CBO_ARTIFACTS to a directory with models/, media/ '
            'and calibration/')


def not_found_message(kind, requested, subdir):
    """Explain a missing artifact: what was asked for, where it was searched, how to fix it."""
    requested = Path(str(requested))
    roots = artifact_roots()
    searched = ', '.join(f"{root / subdir}{'' if (root / subdir).is_dir() else ' (missing)'} "
                         f'[{label}]' for label, root in roots)
    if requested.is_absolute() and requested.parent not in [root / subdir for _, root in roots]:
        return (f'{kind} not found: {requested} (a path: check it; a bare file name is looked '
                f'up in: {searched}; the shipped artifacts: {install_hint()})')
    return (f'{kind} not found: {requested}; searched {requested.name!r} in: {searched}. '
            f'Fix: {install_hint()}; or give an absolute path')


def resolve_model(path_or_name):
    """Accept an absolute/relative path or a bare file name in the models of the search order.

    An unknown name resolves to ``models_dir()/name`` (opening it then fails with
    ``not_found_message``).
    """
    candidate = Path(os.path.expanduser(str(path_or_name)))
    if candidate.is_file() or candidate.is_absolute():
        return candidate
    return find_artifact('models', candidate) or models_dir() / candidate


def resolve_media(path_or_name):
    """Accept a path, or a name of the embedded media (e.g. 'bikes' or 'bikes.mp4')."""
    candidate = Path(os.path.expanduser(str(path_or_name)))
    if candidate.exists() or candidate.is_absolute():
        return candidate
    found = find_artifact('media', candidate)
    if found is not None:
        return found
    for _, root in artifact_roots():
        media = root / 'media'
        matches = sorted(media.glob(f'{candidate}.*')) if media.is_dir() else []
        if matches:
            return matches[0]
    return candidate


def default_calibration_file():
    """Return the default calibration bundle: the first found, else where cbo_calibrate writes."""
    return find_artifact('calibration', CALIBRATION_FILE) or calibration_dir() / CALIBRATION_FILE
