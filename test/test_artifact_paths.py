"""Artifact search order (cbo_ros.assets.paths) and installing artifacts into an install."""

import pytest

from cbo_ros.assets import paths, prepare


@pytest.fixture
def fake_install(tmp_path, monkeypatch):
    """cbo_ros as a colcon install lays it out: <prefix>/lib/python3.11/site-packages/cbo_ros."""
    prefix = tmp_path / 'install' / 'cbo_ros'
    package = prefix / 'lib' / 'python3.11' / 'site-packages' / 'cbo_ros'
    package.mkdir(parents=True)
    share = prefix / 'share' / 'cbo_ros'
    (share / 'config').mkdir(parents=True)
    (share / 'package.xml').write_text('<package/>')
    monkeypatch.setattr(paths, 'PACKAGE_DIR', package)
    monkeypatch.setattr(paths, 'SOURCE_ROOT', package.parent)
    monkeypatch.delenv('CBO_ARTIFACTS', raising=False)
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path / 'data'))
    return share


def test_search_order_of_an_install(fake_install, tmp_path, monkeypatch):
    share = fake_install
    assert not paths.running_from_source()
    assert paths.package_share_dir() == share
    assert paths.config_dir() == share / 'config'
    labels = [label for label, _ in paths.artifact_roots()]
    assert labels == ['package share', 'user data']
    # Nothing exists yet: generated files go to the user data directory.
    assert paths.artifacts_dir() == tmp_path / 'data' / 'cbo_ros' / 'artifacts'
    (share / 'artifacts' / 'models').mkdir(parents=True)
    (share / 'artifacts' / 'models' / 'robot.onnx').write_bytes(b'x')
    assert paths.artifacts_dir() == share / 'artifacts'
    assert paths.resolve_model('robot.onnx') == share / 'artifacts' / 'models' / 'robot.onnx'
    # A user's own model in the user data directory is found too; CBO_ARTIFACTS comes first.
    user_models = tmp_path / 'data' / 'cbo_ros' / 'artifacts' / 'models'
    user_models.mkdir(parents=True)
    (user_models / 'mine.onnx').write_bytes(b'x')
    assert paths.resolve_model('mine.onnx') == user_models / 'mine.onnx'
    explicit = tmp_path / 'explicit'
    (explicit / 'models').mkdir(parents=True)
    (explicit / 'models' / 'robot.onnx').write_bytes(b'y')
    monkeypatch.setenv('CBO_ARTIFACTS', str(explicit))
    assert paths.artifact_roots()[0] == ('$CBO_ARTIFACTS', explicit)
    assert paths.resolve_model('robot.onnx') == explicit / 'models' / 'robot.onnx'


def test_not_found_names_the_searched_paths_and_the_fix(fake_install):
    share = fake_install
    message = paths.not_found_message('model file', paths.resolve_model('x.onnx'), 'models')
    assert "'x.onnx'" in message
    assert f'{share}/artifacts/models (missing) [package share]' in message
    assert '[user data]' in message
    assert f'--install-into {share}/artifacts' in message


def test_checkout_is_searched_when_running_from_source(monkeypatch):
    monkeypatch.delenv('CBO_ARTIFACTS', raising=False)
    assert paths.running_from_source()
    assert paths.artifact_roots()[0] == ('source checkout', paths.SOURCE_ROOT / 'artifacts')
    assert paths.config_dir() == paths.SOURCE_ROOT / 'config'


def test_classifier_error_names_the_fix(monkeypatch, tmp_path):
    from cbo_ros.perception.classifier import OnnxClassifier
    monkeypatch.setenv('CBO_ARTIFACTS', str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r'searched .*\[\$CBO_ARTIFACTS\].*Fix: '):
        OnnxClassifier(str(paths.resolve_model('absent.onnx')), 224)


def make_artifacts(root):
    for name, content in (('models/a.onnx', b'model'), ('models/manifest.json', b'{}'),
                          ('calibration/cbo_calibration.json', b'{}'),
                          ('media/clip.mp4', b'video'), ('media/images/1.jpg', b'jpg'),
                          ('cache/big.npz', b'cache')):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def test_install_artifacts_copies_or_links(tmp_path):
    source, target = tmp_path / 'generated', tmp_path / 'share' / 'artifacts'
    make_artifacts(source)
    assert prepare.install_artifacts(source, target) == ['models', 'calibration', 'media']
    assert (target / 'models' / 'a.onnx').read_bytes() == b'model'
    assert (target / 'media' / 'images' / '1.jpg').is_file()
    assert not (target / 'cache').exists()            # caches stay where they were made
    (source / 'models' / 'a.onnx').write_bytes(b'model v2')
    prepare.install_artifacts(source, target)         # again: changed files are copied
    assert (target / 'models' / 'a.onnx').read_bytes() == b'model v2'
    prepare.install_artifacts(source, target, link=True)
    assert (target / 'models').is_symlink()
    assert (target / 'models').resolve() == (source / 'models').resolve()
    prepare.install_artifacts(source, target)         # back to a copy
    assert not (target / 'models').is_symlink() and (target / 'models' / 'a.onnx').is_file()


def test_install_artifacts_without_models_says_how_to_make_them(tmp_path, capsys):
    code = prepare.main(['--artifacts', str(tmp_path / 'empty'), '--install-into',
                         str(tmp_path / 'target')])
    assert code == 1
    assert 'generate them first with `cbo_prepare_assets' in capsys.readouterr().err


def test_a_missing_absolute_path_is_reported_as_such(tmp_path):
    message = paths.not_found_message('model file', tmp_path / 'mine.onnx', 'models')
    assert f'model file not found: {tmp_path}/mine.onnx (a path: check it' in message
