"""Raw material of the true-label benchmark, fetched from Debian packages and cached.

- ``tuxpaint-stamps-default`` (GPL): photographic cut-outs (RGBA PNG) with an English caption.
- ``wordnet-base``: WordNet 3.0 (``data.noun``, ``index.noun``, ``noun.exc``).
- ``opencv-doc``: a few real photos used as still backgrounds.

The packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb`` (never
installed) into ``$CBO_ARTIFACTS/benchmark/sources``; nothing of them is committed.
"""

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from cbo_ros.assets import paths

STAMPS_PACKAGE = 'tuxpaint-stamps-default'
WORDNET_PACKAGE = 'wordnet-base'
PHOTOS_PACKAGE = 'opencv-doc'
STAMPS_ROOT = 'usr/share/tuxpaint/stamps'
WORDNET_ROOT = 'usr/share/wordnet'
WORDNET_FILES = ('data.noun', 'index.noun', 'noun.exc')
PHOTOS_ROOT = 'usr/share/doc/opencv-doc/examples/data'
# Real photos of scenes without a dominant ImageNet object (used as still backgrounds).
PHOTO_FILES = ('building.jpg', 'home.jpg', 'leuvenA.jpg', 'aloeL.jpg', 'box_in_scene.png',
               'basketball1.png', 'rubberwhale1.png', 'stuff.jpg')
# Stamp folders that hold no photographs.
SKIPPED_STAMP_FOLDERS = ('cartoon', 'symbols')


class SourcesError(RuntimeError):
    """The Debian raw material cannot be fetched or is incomplete."""


def sources_dir(artifacts=None):
    """Return the cache folder of the raw material."""
    return Path(artifacts or paths.artifacts_dir()) / 'benchmark' / 'sources'


def _download(package, folder):
    if not shutil.which('apt-get') or not shutil.which('dpkg-deb'):
        raise SourcesError(f'cannot fetch {package}: apt-get and dpkg-deb are needed '
                           '(Debian/Ubuntu)')
    try:
        subprocess.run(['apt-get', 'download', package], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    except subprocess.CalledProcessError as error:
        raise SourcesError(f'apt-get download {package} failed: '
                           f'{error.stderr.decode(errors="replace").strip()[-300:]} '
                           '(run apt-get update?)') from error
    except subprocess.TimeoutExpired as error:
        raise SourcesError(f'apt-get download {package} timed out') from error
    debs = sorted(Path(folder).glob(f'{package}_*.deb'))
    if not debs:
        raise SourcesError(f'apt-get download {package} produced no .deb file')
    return debs[0]


def _extract(deb, destination, members, wildcards=()):
    """Extract ``members`` (paths or shell patterns) of ``deb`` into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    tar_cmd = ['tar', '-x', '-C', str(destination)]
    if wildcards:
        tar_cmd += ['--wildcards'] + list(wildcards)
    tar_cmd += list(members)
    dpkg = subprocess.Popen(['dpkg-deb', '--fsys-tarfile', str(deb)], stdout=subprocess.PIPE)
    result = subprocess.run(tar_cmd, stdin=dpkg.stdout, stderr=subprocess.PIPE)
    dpkg.stdout.close()
    dpkg.wait()
    if result.returncode != 0 or dpkg.returncode != 0:
        raise SourcesError(f'cannot unpack {deb.name}: {result.stderr.decode(errors="replace")}')


def _version_of(deb):
    return deb.name.split('_')[1].replace('%3a', ':')


def fetch(artifacts=None, log=print):
    """Fetch and unpack the raw material unless cached; return the sources description."""
    root = sources_dir(artifacts)
    info_file = root / 'sources.json'
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if all((root / p).exists() for p in info.get('required', [])):
            return info
    root.mkdir(parents=True, exist_ok=True)
    versions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for package in (STAMPS_PACKAGE, WORDNET_PACKAGE, PHOTOS_PACKAGE):
            log(f'fetching {package} (apt-get download)')
            deb = _download(package, tmp)
            versions[package] = _version_of(deb)
            if package == STAMPS_PACKAGE:
                _extract(deb, root, [f'./{STAMPS_ROOT}/*.png', f'./{STAMPS_ROOT}/*.txt'],
                         wildcards=('--exclude=*/cartoon/*', '--exclude=*/symbols/*'))
            elif package == WORDNET_PACKAGE:
                _extract(deb, root, [f'./{WORDNET_ROOT}/{name}' for name in WORDNET_FILES])
            else:
                _extract(deb, root, [f'./{PHOTOS_ROOT}/{name}' for name in PHOTO_FILES])
            deb.unlink()
    required = [STAMPS_ROOT] + [f'{WORDNET_ROOT}/{n}' for n in WORDNET_FILES] + \
        [f'{PHOTOS_ROOT}/{n}' for n in PHOTO_FILES]
    missing = [p for p in required if not (root / p).exists()]
    if missing:
        raise SourcesError(f'unpacked packages lack {", ".join(missing)}')
    digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
    info = {'packages': versions, 'required': required, 'digest': digest}
    info_file.write_text(json.dumps(info, indent=2) + '\n')
    return info


def available(artifacts=None):
    """Whether the cached raw material is complete (no fetching)."""
    root = sources_dir(artifacts)
    info_file = root / 'sources.json'
    if not info_file.is_file():
        return False
    info = json.loads(info_file.read_text())
    return all((root / p).exists() for p in info.get('required', []))


def stamps_dir(artifacts=None):
    """Return the directory of the unpacked tuxpaint stamps."""
    return sources_dir(artifacts) / STAMPS_ROOT


def wordnet_dir(artifacts=None):
    """Return the directory of the unpacked WordNet 3.0 files."""
    return sources_dir(artifacts) / WORDNET_ROOT


def photo_paths(artifacts=None):
    """Paths of the still background photos."""
    root = sources_dir(artifacts) / PHOTOS_ROOT
    return [root / name for name in PHOTO_FILES if (root / name).is_file()]


def list_stamps(artifacts=None):
    """Return [(relative path, caption)] of the photographic-folder stamps, sorted by path."""
    root = stamps_dir(artifacts)
    stamps = []
    for png in sorted(root.rglob('*.png')):
        relative = png.relative_to(root).as_posix()
        if relative.split('/')[0] in SKIPPED_STAMP_FOLDERS:
            continue
        text = png.with_suffix('.txt')
        caption = ''
        if text.is_file():
            lines = text.read_text(encoding='utf-8', errors='replace').splitlines()
            caption = lines[0].strip() if lines else ''
        stamps.append((relative, caption))
    return stamps
