"""Command-line options naming the robot and server models (cbo_calibrate, cbo_eval).

``--robot-model`` is ``int8`` or ``fp32`` (the shipped Lite0 models) or the path of your own
ONNX model; ``--server-model`` the path of your own server model. Each side takes its class
names (``--robot-labels-file``, one name per line) and its preprocessing (``--robot-resize``,
``--robot-mean``, ...; the robot's input size is ``--robot-resolution``). Options left out keep
the shipped models' values, so the old command lines mean what they meant.
"""

from pathlib import Path

from cbo_ros.assets import paths
from cbo_ros.evaluation.outputs_cache import ModelSpec, ROBOT_MODELS, SERVER_MODEL
from cbo_ros.perception.classifier import COLOR_ORDERS, LAYOUTS, Preprocessing, RESIZE_MODES

OWN_ROBOT_TAG = 'own'
PREPROCESSING_OPTIONS = ('resize', 'crop_fraction', 'mean', 'std', 'layout', 'color_order')


def add_model_arguments(parser):
    """Add the robot and server model options to an argparse parser."""
    group = parser.add_argument_group(
        'models', 'your own ONNX models (docs/own_model.md); omitted options keep the shipped '
        'models and their preprocessing')
    group.add_argument('--robot-model', default='int8', metavar='{int8,fp32,PATH}',
                       help='robot model: the shipped int8 or fp32 Lite0, or the path of your '
                            'own ONNX model (default int8)')
    group.add_argument('--server-model', default=None, metavar='PATH',
                       help=f'server ONNX model (default {paths.SERVER_MODEL_FP32})')
    group.add_argument('--server-input-size', type=int, default=None,
                       help=f'server model input side (default {paths.SERVER_INPUT_SIZE})')
    for side in ('robot', 'server'):
        group.add_argument(f'--{side}-labels-file', default='', metavar='FILE',
                           help=f'class names of the {side} model, one per line (line 1: '
                                'class id 0; default ImageNet-1k). Not the frames\' true '
                                'labels (--labels)')
        group.add_argument(f'--{side}-resize', choices=RESIZE_MODES, default=None,
                           help='center_crop (default) or stretch')
        group.add_argument(f'--{side}-crop-fraction', type=float, default=None,
                           help='center_crop: share of the short side kept (default 1.0)')
        group.add_argument(f'--{side}-mean', type=float, nargs=3, default=None,
                           metavar=('C1', 'C2', 'C3'),
                           help='per-channel mean on the 0..1 scale (default 0.5 0.5 0.5)')
        group.add_argument(f'--{side}-std', type=float, nargs=3, default=None,
                           metavar=('C1', 'C2', 'C3'),
                           help='per-channel std on the 0..1 scale (default 0.5 0.5 0.5)')
        group.add_argument(f'--{side}-layout', choices=LAYOUTS, default=None,
                           help='input tensor layout (default NCHW)')
        group.add_argument(f'--{side}-color-order', choices=COLOR_ORDERS, default=None,
                           help='channel order (default RGB)')


def _preprocessing(args, side, input_size):
    """``(Preprocessing, any option given)`` of one side."""
    given = {name: getattr(args, f'{side}_{name}') for name in PREPROCESSING_OPTIONS
             if getattr(args, f'{side}_{name}') is not None}
    return Preprocessing(input_size=input_size, **given), bool(given)


def model_specs(args, robot_resolution=paths.ROBOT_INPUT_SIZE):
    """``(robot tag, robot_models or None, server_model or None)`` for ``load_outputs``.

    Raises ValueError (with the reason) for a preprocessing that cannot be, and
    FileNotFoundError for a model or labels file that does not exist.
    """
    robot_pre, robot_given = _preprocessing(args, 'robot', robot_resolution)
    if args.robot_model in ROBOT_MODELS:
        tag, path = args.robot_model, ROBOT_MODELS[args.robot_model].path
        own = robot_given or bool(args.robot_labels_file)
    else:
        tag, path, own = OWN_ROBOT_TAG, args.robot_model, True
        _check_model(path)
    robot_models = {tag: ModelSpec(str(path), robot_pre, args.robot_labels_file)} \
        if own else None
    server_pre, server_given = _preprocessing(
        args, 'server', args.server_input_size or SERVER_MODEL.preprocessing.input_size)
    server_model = None
    if args.server_model or server_given or args.server_labels_file or args.server_input_size:
        server_model = ModelSpec(str(args.server_model or SERVER_MODEL.path), server_pre,
                                 args.server_labels_file)
        _check_model(server_model.path)
    for labels_file in (args.robot_labels_file, args.server_labels_file):
        if labels_file and not Path(labels_file).is_file():
            raise FileNotFoundError(f'labels file {labels_file} not found (class names, one '
                                    'per line)')
    return tag, robot_models, server_model


def _check_model(path):
    """Fail early (naming what was searched) when a model file does not exist."""
    if not paths.resolve_model(path).is_file():
        raise FileNotFoundError(paths.not_found_message('model file', path, 'models'))


def describe_models(tag, robot_models, server_model):
    """Provenance of the models for a calibration file or a report (JSON-ready)."""
    robot = (robot_models or ROBOT_MODELS)[tag]
    server = server_model or SERVER_MODEL
    return {side: {'model': str(paths.resolve_model(m.path)), 'labels_file': m.labels_file,
                   'preprocessing': m.preprocessing.as_dict()}
            for side, m in (('robot', robot), ('server', server))}
