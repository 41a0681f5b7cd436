"""Early-exit parts (ONNX, built at set-up): head + tail reproduce the full Lite0."""

import numpy as np
import pytest

from cbo_ros.assets import paths

pytest.importorskip('onnxruntime')


@pytest.fixture(scope='module')
def model():
    from cbo_ros.perception.early_exit import EarlyExitModel, find_early_exit_dir
    if not (find_early_exit_dir() / 'manifest.json').is_file():
        pytest.skip('early-exit parts not built (python -m cbo_ros.assets.early_exit_export)')
    return EarlyExitModel()


@pytest.fixture(scope='module')
def frames():
    import cv2
    files = sorted((paths.media_dir() / 'imagenet_samples').glob('*.jpg'))[:12]
    if not files:
        pytest.skip('media not prepared')
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]


def test_head_plus_tail_equals_the_full_model(model, frames):
    from cbo_ros.perception.classifier import OnnxClassifier
    full = OnnxClassifier(str(paths.resolve_model(paths.ROBOT_MODEL_FP32)), model.input_size)
    batch = model.preprocess(frames)
    reference = full.infer(batch)
    for blocks in model.blocks:
        exit_logits, features = model.head(blocks, batch)
        assert exit_logits.shape == reference.shape
        assert features.shape[1:] == model.tensor_shape(blocks)[1:]
        np.testing.assert_allclose(model.tail(blocks, features), reference, atol=2e-3)


def test_short_provider_names_resolve_as_for_the_classifier(model):
    """The server passes its provider list ('tensorrt', 'cuda', 'cpu'); onnxruntime itself would
    reject the short names and fall back to the CPU alone, also where CUDA is present."""
    import onnxruntime as ort
    from cbo_ros.perception.early_exit import EarlyExitModel
    tails = EarlyExitModel(model.directory, providers=['tensorrt', 'cuda', 'cpu'])
    wanted = [p for p in ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
              if p in ort.get_available_providers()] + ['CPUExecutionProvider']
    assert tails.providers == wanted
    assert len(tails.provider_warnings) == 3 - len(wanted)
    blocks = tails.blocks[0]
    tails.tail(blocks, np.zeros(tails.tensor_shape(blocks), np.float32))
    # (an onnxruntime-gpu build without TensorRT's libraries may fall back to CUDA at run time)
    assert tails._session(blocks, 'tail').get_providers()[0] in wanted


def test_quantised_tensor_keeps_the_answer(model, frames):
    from cbo_common.tensor_codec import decode_tensor, encode_tensor
    from cbo_ros.perception.image_ops import encode_jpeg, center_square
    batch = model.preprocess(frames)
    for blocks in model.blocks:
        _, features = model.head(blocks, batch)
        exact = model.tail(blocks, features).argmax(axis=1)
        payloads = [encode_tensor(row[None]) for row in features]
        decoded = np.concatenate([decode_tensor(p, model.tensor_shape(blocks))
                                  for p in payloads])
        agree = np.mean(model.tail(blocks, decoded).argmax(axis=1) == exact)
        assert agree >= 0.8, (blocks, agree)
        # the tensor is smaller than its uint8 values; compare with a JPEG at 224 px
        sizes = [len(p.data) for p in payloads]
        assert max(sizes) < np.prod(model.tensor_shape(blocks))
    jpeg = np.mean([len(encode_jpeg(center_square(f, 224))) for f in frames])
    assert jpeg > 0


def test_cbo_eval_replays_the_early_exit_strategies(model, tmp_path, capsys):
    """cbo_eval --strategies early_exit_partition* on a short clip: the same code as live."""
    import json

    from cbo_ros.evaluation.early_exit_eval import calibration_path
    from cbo_ros.tools import evaluate
    if not calibration_path().is_file():
        pytest.skip('early-exit calibration not fitted (python -m '
                    'cbo_ros.evaluation.early_exit_eval calibrate)')
    out = tmp_path / 'report.json'
    argv = ['bikes', '--max-frames', '16', '--strategies', 'local_only', 'early_exit_partition',
            'early_exit_partition_uncalibrated', '--cache-dir', str(tmp_path / 'cache'),
            '--json', str(out), '--no-plots', '--no-progress']
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    strategies = json.loads(out.read_text())['strategies']
    assert set(strategies) == {'local_only', 'early_exit_partition',
                               'early_exit_partition_uncalibrated'}
    assert strategies['early_exit_partition']['frames'] == 16
