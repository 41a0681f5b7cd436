"""Your own model: ONNX path, class-names file and preprocessing, in the classifier and the tools.

The "own" model here is the shipped fp32 Lite0 wrapped in ONNX nodes so that it takes NHWC, BGR,
ImageNet mean/std input: with the matching preprocessing parameters it must give the shipped
model's logits, and with the defaults it must not.
"""

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
import pytest

from cbo_common.class_names import imagenet_class_names

from cbo_ros.assets import paths
from cbo_ros.core.calibration import load_calibration
from cbo_ros.evaluation.outputs_cache import load_outputs, ModelSpec
from cbo_ros.perception.classifier import OnnxClassifier, Preprocessing, read_class_names
from cbo_ros.perception.image_ops import center_square
from cbo_ros.perception.media import read_frames
from cbo_ros.tools import calibrate, evaluate

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OWN = dict(mean=IMAGENET_MEAN[::-1], std=IMAGENET_STD[::-1], layout='NHWC', color_order='BGR')


def old_preprocess(frames, side):
    """The classifier's preprocessing before it took parameters (reference)."""
    squares = np.stack([center_square(frame, side) for frame in frames])
    batch = squares.astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def wrap_nhwc_bgr(source, target, mean_bgr, std_bgr):
    """Write ``source`` behind nodes that turn NHWC BGR (p/255 - mean)/std into its input."""
    model = onnx.load(str(source))
    graph = model.graph
    old_input = graph.input[0].name
    scale = numpy_helper.from_array(
        (2.0 * np.asarray(std_bgr)).astype(np.float32).reshape(1, 1, 1, 3), 'own_scale')
    shift = numpy_helper.from_array(
        (2.0 * np.asarray(mean_bgr) - 1.0).astype(np.float32).reshape(1, 1, 1, 3), 'own_shift')
    order = numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), 'own_rgb')
    nodes = [helper.make_node('Mul', ['own_input', 'own_scale'], ['own_scaled']),
             helper.make_node('Add', ['own_scaled', 'own_shift'], ['own_shifted']),
             helper.make_node('Gather', ['own_shifted', 'own_rgb'], ['own_rgb_hwc'], axis=3),
             helper.make_node('Transpose', ['own_rgb_hwc'], [old_input], perm=[0, 3, 1, 2])]
    graph.initializer.extend([scale, shift, order])
    new_input = helper.make_tensor_value_info('own_input', TensorProto.FLOAT,
                                              ['N', 'H', 'W', 3])
    kept = [i for i in graph.input if i.name != old_input]
    del graph.input[:]
    graph.input.extend([new_input] + kept)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope='module')
def own_files(tmp_path_factory):
    root = tmp_path_factory.mktemp('own_model')
    model = wrap_nhwc_bgr(paths.resolve_model(paths.ROBOT_MODEL_FP32), root / 'my_robot.onnx',
                          OWN['mean'], OWN['std'])
    labels = root / 'classes.txt'
    names = imagenet_class_names() or tuple(f'class {i}' for i in range(1000))
    labels.write_text('\n'.join(f'my {n}' for n in names) + '\n')
    return root, model, labels


@pytest.fixture(scope='module')
def samples():
    frames, _ = read_frames(paths.media_dir() / 'imagenet_samples')
    return [f.rgb for f in frames]


def test_default_preprocessing_is_exactly_the_old_one(samples):
    wide = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    frames = samples[:4] + [wide]
    pre = Preprocessing(paths.ROBOT_INPUT_SIZE)
    for side in (64, paths.ROBOT_INPUT_SIZE, 260):
        new = pre.to_tensor([pre.resized(f, side) for f in frames])
        np.testing.assert_array_equal(new, old_preprocess(frames, side))
        assert new.dtype == np.float32 and new.flags.c_contiguous


def test_stretch_bgr_nhwc_and_mean_std_are_applied_as_documented():
    frame = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    pre = Preprocessing(10, resize='stretch', mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125),
                        layout='NHWC', color_order='BGR')
    out = pre.to_tensor([pre.resized(frame)])
    import cv2
    expected = cv2.resize(frame, (10, 10), interpolation=cv2.INTER_AREA)[..., ::-1] / 255.0
    expected = (expected - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 0.125])
    assert out.shape == (1, 10, 10, 3)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    cropped = Preprocessing(10, crop_fraction=0.5).resized(frame)
    np.testing.assert_array_equal(cropped, center_square(frame[7:22, 17:32], 10))


@pytest.mark.parametrize('bad,reason', [
    (dict(resize='letterbox'), 'resize mode'), (dict(layout='CHW'), 'layout'),
    (dict(color_order='YUV'), 'colour order'), (dict(mean=(0.5, 0.5)), 'mean needs 3'),
    (dict(std=(0.5, 0.0, 0.5)), 'positive'), (dict(crop_fraction=1.5), 'crop fraction')])
def test_bad_preprocessing_is_refused_with_the_reason(bad, reason):
    with pytest.raises(ValueError, match=reason):
        Preprocessing(128, **bad)


def test_own_model_by_path_with_labels_file_runs_through_the_classifier(own_files, samples):
    _, model, labels = own_files
    shipped = OnnxClassifier(str(paths.resolve_model(paths.ROBOT_MODEL_FP32)), 128)
    own = OnnxClassifier(str(model), preprocessing=Preprocessing(128, **OWN),
                         labels_file=str(labels))
    reference = shipped.logits(samples[:6])
    np.testing.assert_allclose(own.logits(samples[:6]), reference, atol=1e-4)
    top = int(reference[0].argmax())
    assert own.class_name(top) == read_class_names(labels)[top]
    assert own.class_name(top).startswith('my ')
    # The defaults (NCHW) cannot feed an NHWC model: a clear error names the fix.
    with pytest.raises(ValueError, match='layout'):
        OnnxClassifier(str(model), 128, labels_file=str(labels))
    # Right layout, wrong colour order and normalisation: other answers.
    wrong = OnnxClassifier(str(model), preprocessing=Preprocessing(128, layout='NHWC'))
    assert np.abs(wrong.logits(samples[:6]) - reference).max() > 0.5


def test_labels_file_errors_name_the_line_and_the_count(own_files, tmp_path):
    _, model, _ = own_files
    short = tmp_path / 'short.txt'
    short.write_text('cat\ndog\n')
    with pytest.raises(ValueError, match='names 2 classes but the model .* outputs 1000'):
        OnnxClassifier(str(model), preprocessing=Preprocessing(128, **OWN),
                       labels_file=str(short))
    gap = tmp_path / 'gap.txt'
    gap.write_text('cat\n\ndog\n')
    with pytest.raises(ValueError, match=r'gap.txt:2: empty line'):
        read_class_names(gap)
    with pytest.raises(FileNotFoundError, match='one class name per line'):
        read_class_names(tmp_path / 'missing.txt')


def own_model_args(model, labels):
    """The command-line options of the wrapped model (robot) and the shipped server by path."""
    server = paths.resolve_model(paths.SERVER_MODEL_FP32)
    return ['--robot-model', str(model), '--robot-labels-file', str(labels),
            '--robot-mean', *map(str, OWN['mean']), '--robot-std', *map(str, OWN['std']),
            '--robot-layout', 'NHWC', '--robot-color-order', 'BGR',
            '--server-model', str(server), '--server-input-size', '260',
            '--server-labels-file', str(labels)]


def test_calibrate_and_eval_take_an_own_model_by_path(own_files, capsys):
    root, model, labels = own_files
    cache, output = root / 'cache', root / 'own_cal.json'
    common = ['--cache-dir', str(cache), '--no-progress']
    code = calibrate.main(['--media', 'imagenet_samples', '--frames-per-video', '0',
                           '--held-out', '--offload-resolutions', '96', '--method',
                           'temperature', '--bootstrap', '50', '--output', str(output),
                           *own_model_args(model, labels), *common])
    assert code == 0, capsys.readouterr().err
    bundle = load_calibration(output)
    models = bundle.source_info['models']
    assert models['robot']['model'] == str(model)
    assert models['robot']['preprocessing']['layout'] == 'NHWC'
    assert models['server']['labels_file'] == str(labels)
    assert (root / 'reliability_own.png').is_file()
    report = root / 'own_eval.json'
    code = evaluate.main(['imagenet_samples', '--calibration', str(output), '--json',
                          str(report), '--no-plots', '--strategies', 'local_only', 'cbo',
                          *own_model_args(model, labels), *common])
    assert code == 0, capsys.readouterr().err
    result = json.loads(report.read_text())
    assert result['labels'] == 'true' and result['frames'] == 20
    assert result['models']['robot']['model'] == str(model)
    # The own model's cached outputs are those of the shipped model it wraps, and they are
    # cached apart from the shipped model's.
    own = load_outputs('imagenet_samples', robot_tags=('own',), offload_resolutions=(96,),
                       cache_dir=str(cache), progress=False, robot_models={
                           'own': ModelSpec(str(model), Preprocessing(128, **OWN), str(labels))})
    shipped = load_outputs('imagenet_samples', robot_tags=('fp32',), offload_resolutions=(96,),
                           cache_dir=str(root / 'cache_shipped'), progress=False)
    np.testing.assert_allclose(own.robot_logits[('own', 128)],
                               shipped.robot_logits[('fp32', 128)], atol=1e-4)
    local = result['strategies']['local_only']['accuracy']
    assert local == pytest.approx(float(shipped.local_correct('fp32', 128).mean()), abs=1e-9)


def test_tools_refuse_a_missing_model_or_labels_file(own_files, capsys, tmp_path):
    root, model, labels = own_files
    assert calibrate.main(['--media', 'imagenet_samples', '--robot-model',
                           str(tmp_path / 'nope.onnx'), '--no-progress']) == 2
    assert 'model file not found' in capsys.readouterr().err
    assert evaluate.main(['imagenet_samples', '--robot-model', str(model),
                          '--robot-labels-file', str(tmp_path / 'nope.txt'),
                          '--no-progress']) == 1
    assert 'labels file' in capsys.readouterr().err


@pytest.mark.integration
def test_classifier_node_runs_an_own_model_from_its_parameters(own_files, tmp_path):
    """npu_classifier_node over DDS with the own model's path, class names and preprocessing."""
    import sys
    import time

    from cbo_interfaces.msg import FrameClassification
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from cbo_ros.nodes.ros_common import RESULT_QOS
    from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
    from ros_session import RosSession
    from test_classifier_node import frame_msg
    _, model, labels = own_files
    domain, namespace = unique_domain_id(), '/own_model'
    parameters = [f'model:={model}', f'labels_file:={labels}', 'layout:=NHWC',
                  'color_order:=BGR', f'mean:={list(OWN["mean"])}', f'std:={list(OWN["std"])}']
    log = tmp_path / 'classifier.log'
    process = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.npu_classifier_node', '--ros-args',
         '--params-file', str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'),
         *[arg for p in parameters for arg in ('-p', p)], '-r', f'__ns:={namespace}'],
        ros_env(domain), log)
    session = RosSession(domain, namespace=namespace)
    results = []
    session.node.create_subscription(FrameClassification, 'local_result', results.append,
                                     RESULT_QOS)
    camera = session.node.create_publisher(Image, 'image_raw', qos_profile_sensor_data)
    sent = frame_msg(time.time_ns(), seed=4)
    try:
        deadline = time.monotonic() + 40.0
        while not results and time.monotonic() < deadline:
            sent.header.stamp = frame_msg(time.time_ns(), seed=4).header.stamp
            camera.publish(sent)
            session.spin_for(0.2)
    finally:
        session.close()
        code = stop_process(process)
    text = log.read_text()
    assert results and results[0].class_id, text
    rgb = np.frombuffer(bytes(sent.data), np.uint8).reshape(120, 160, 3)
    shipped = OnnxClassifier(str(paths.resolve_model(paths.ROBOT_MODEL_FP32)), 128)
    top = int(shipped.logits([rgb])[0].argmax())
    assert results[0].class_id == str(top), text
    assert results[0].class_name == read_class_names(labels)[top], text
    assert results[0].model == 'my_robot', text
    assert code == 0, text


def test_server_node_takes_an_own_model_from_its_parameters(own_files):
    """server_node's model, class names and preprocessing come from its parameters."""
    import rclpy

    from cbo_ros.perception.image_ops import encode_jpeg
    from ros_helpers import unique_domain_id
    from server_node.offload_server import OffloadServer
    from server_node.validation import read_image_header
    _, model, labels = own_files
    parameters = [f'model:={model}', f'labels_file:={labels}', 'layout:=NHWC',
                  'color_order:=BGR', f'mean:={list(OWN["mean"])}', f'std:={list(OWN["std"])}',
                  'input_size:=128', 'warmup:=false']
    context = rclpy.Context()
    rclpy.init(args=['test', '--ros-args', '--params-file',
                     str(paths.SOURCE_ROOT / 'config' / 'server.yaml'),
                     *[arg for p in parameters for arg in ('-p', p)]],
               context=context, domain_id=unique_domain_id())
    try:
        node = OffloadServer(context=context)
        try:
            assert node.classifier.preprocessing == Preprocessing(128, **OWN)
            assert node.classifier.class_name(1) == read_class_names(labels)[1]
            frame = np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
            jpeg = encode_jpeg(frame)
            tensor = node._decode(jpeg, read_image_header(jpeg, 'jpeg'))
            assert tensor.shape == (128, 128, 3)          # NHWC, one image
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
