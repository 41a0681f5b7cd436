"""Early-exit EfficientNet-Lite0 for partitioned offloading: branches, distillation, ONNX parts.

Built at set-up time with torch (never on the robot). For each partition point ``k`` (the number
of MBConv blocks the robot runs) an exit branch (1x1 conv, BN, ReLU6, global average pool,
linear) reads the output of block ``k``. The branches are trained by **distillation** from the
model's own final softmax on unlabelled frames (a subsample of the benchmark's calibration split;
no labels are used), then exported per partition as two ONNX files:

- ``lite0_ee_head_b<k>.onnx``: image -> (exit logits of branch k, the block-k tensor),
- ``lite0_ee_tail_b<k>.onnx``: block-k tensor -> the full model's final logits.

Both parts are fp32 (the robot's full model is int8; statically quantising the parts is left
out). ``artifacts/models/early_exit/manifest.json`` records the version, the tensor shapes, the
distillation figures and the measured head/tail latencies; ``build_early_exit`` rebuilds only
when the version or the benchmark manifest changed.
"""

import json
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths

EARLY_EXIT_VERSION = 1
PARTITION_BLOCKS = (5, 8, 15)           # blocks run on the robot before each exit/partition
BRANCH_WIDTH = 256
EARLY_EXIT_DIR = 'early_exit'
MANIFEST = 'manifest.json'


def head_file(blocks):
    """File name of the head part of partition ``blocks``."""
    return f'lite0_ee_head_b{int(blocks)}.onnx'


def tail_file(blocks):
    """File name of the tail part of partition ``blocks``."""
    return f'lite0_ee_tail_b{int(blocks)}.onnx'


def early_exit_dir():
    """Directory of the early-exit parts (under the models of the artifacts)."""
    return paths.models_dir() / EARLY_EXIT_DIR


def _modules():
    """Return the torch module classes (built lazily: torch is needed at set-up only)."""
    import torch
    from torch import nn

    class Branch(nn.Module):
        """Exit branch on one block's output."""

        def __init__(self, channels, classes=1000, width=BRANCH_WIDTH):
            super().__init__()
            self.conv = nn.Conv2d(channels, width, 1, bias=False)
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, classes)

        def forward(self, x):
            x = torch.clamp(self.bn(self.conv(x)), 0.0, 6.0)
            return self.fc(x.mean(dim=(2, 3)))

    class Head(nn.Module):
        """Stem and the first ``blocks`` blocks, plus the branch: image -> (exit logits, x)."""

        def __init__(self, model, blocks, branch):
            super().__init__()
            self.model, self.blocks, self.branch = model, int(blocks), branch

        def forward(self, image):
            m = self.model
            x = m._swish(m._bn0(m._conv_stem(image)))
            for block in m._blocks[:self.blocks]:
                x = block(x)
            return self.branch(x), x

    class Tail(nn.Module):
        """The remaining blocks and the classifier: block-k tensor -> final logits."""

        def __init__(self, model, blocks):
            super().__init__()
            self.model, self.blocks = model, int(blocks)

        def forward(self, x):
            m = self.model
            for block in m._blocks[self.blocks:]:
                x = block(x)
            x = m._swish(m._bn1(m._conv_head(x)))
            return m._fc(x.mean(dim=(2, 3)))

    return Branch, Head, Tail


def distillation_frames(split='calibration', stride=3, size=paths.ROBOT_INPUT_SIZE,
                        manifest=None):
    """Preprocessed NCHW frames (every ``stride``-th) of a benchmark split; no labels read."""
    from cbo_ros.evaluation.pooling import benchmark_sources
    from cbo_ros.perception.image_ops import center_square
    from cbo_ros.perception.media import read_frames
    batches = []
    for source in benchmark_sources(split, manifest):
        frames, _ = read_frames(source.media, with_labels=False)
        squares = [center_square(f.rgb, size) for f in frames[::stride]]
        if squares:
            batch = np.stack(squares).astype(np.float32) * (2.0 / 255.0) - 1.0
            batches.append(batch.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(np.concatenate(batches))


def _features(model, images, blocks_list, batch=128):
    """Block outputs at each partition and the final softmax (the teacher) of ``images``."""
    import torch
    feats = {k: [] for k in blocks_list}
    teacher = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch])
            x = model._swish(model._bn0(model._conv_stem(x)))
            for index, block in enumerate(model._blocks):
                x = block(x)
                if index + 1 in feats:
                    feats[index + 1].append(x.clone())
            x = model._swish(model._bn1(model._conv_head(x)))
            teacher.append(torch.softmax(model._fc(x.mean(dim=(2, 3))), dim=1))
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(teacher)


def train_branch(branch, features, teacher, epochs=25, batch=64, lr=2e-3, seed=0):
    """Distil ``teacher`` probabilities into ``branch`` on cached ``features`` (KL loss)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(branch.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    branch.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order), batch):
            pick = order[start:start + batch]
            log_p = torch.log_softmax(branch(features[pick]), dim=1)
            loss = torch.nn.functional.kl_div(log_p, teacher[pick], reduction='batchmean')
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        schedule.step()
    branch.eval()
    return branch


def _latency_ms(session, feed, repeats=60):
    """Fastest single-frame run: robust to the other processes of a shared machine."""
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.min(times))


def measure_latencies(directory=None, log=print):
    """Re-measure the full model's and every part's single-frame time (one thread each).

    Updates the manifest; the policy uses the head/full ratio and the tail time.
    """
    import onnxruntime as ort
    directory = Path(directory or early_exit_dir())
    manifest = load_manifest(directory)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def session(path):
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=['CPUExecutionProvider'])
    side = int(manifest['input_size'])
    image = np.zeros((1, 3, side, side), np.float32)
    full = session(paths.resolve_model(paths.ROBOT_MODEL_FP32))
    manifest['full_ms'] = round(_latency_ms(full, {full.get_inputs()[0].name: image}), 3)
    for p in manifest['partitions']:
        head, tail = session(directory / p['head']), session(directory / p['tail'])
        p['head_ms'] = round(_latency_ms(head, {'image': image}), 3)
        inter = head.run(None, {'image': image})[1]
        p['tail_ms'] = round(_latency_ms(tail, {'features': inter}), 3)
        log(f"b{p['blocks']}: head {p['head_ms']} ms, tail {p['tail_ms']} ms "
            f"(full {manifest['full_ms']} ms)")
    manifest['latency'] = 'fastest of 60 single-frame runs, one thread, this machine'
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def export_parts(output_dir, images, blocks_list=PARTITION_BLOCKS, epochs=25, log=print):
    """Distil the branches on ``images`` and export every partition's head and tail ONNX.

    Returns the manifest dict (also written to ``output_dir/manifest.json``).
    """
    import onnxruntime as ort
    import torch

    from cbo_ros.assets.model_export import load_efficientnet
    torch.manual_seed(0)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_efficientnet('efficientnet-lite0')
    Branch, Head, Tail = _modules()
    started = time.monotonic()
    feats, teacher = _features(model, images, blocks_list)
    log(f'features of {len(images)} frames in {time.monotonic() - started:.0f} s')
    held = np.arange(len(images)) % 10 == 0          # held out: branch/final agreement
    train_idx = torch.from_numpy(np.flatnonzero(~held))
    held_idx = torch.from_numpy(np.flatnonzero(held))
    side = images.shape[-1]
    full_session = ort.InferenceSession(str(paths.resolve_model(paths.ROBOT_MODEL_FP32)),
                                        providers=['CPUExecutionProvider'])
    probe = images[:8]
    full_logits = full_session.run(None, {full_session.get_inputs()[0].name: probe})[0]
    full_ms = _latency_ms(full_session, {full_session.get_inputs()[0].name: probe[:1]})
    partitions = []
    for blocks in blocks_list:
        x = feats[blocks]
        branch = Branch(x.shape[1])
        tick = time.monotonic()
        train_branch(branch, x[train_idx], teacher[train_idx], epochs=epochs)
        with torch.no_grad():
            agree = float((branch(x[held_idx]).argmax(1) ==
                           teacher[held_idx].argmax(1)).float().mean())
        log(f'branch after {blocks} blocks: trained in {time.monotonic() - tick:.0f} s, '
            f'top-1 agreement with the final model on held-out frames {100 * agree:.1f} %')
        head, tail = Head(model, blocks, branch).eval(), Tail(model, blocks).eval()
        head_path, tail_path = output_dir / head_file(blocks), output_dir / tail_file(blocks)
        with torch.no_grad():
            torch.onnx.export(head, torch.zeros(1, 3, side, side), str(head_path), dynamo=False,
                              opset_version=17, input_names=['image'],
                              output_names=['exit_logits', 'features'],
                              dynamic_axes={'image': {0: 'batch'}, 'exit_logits': {0: 'batch'},
                                            'features': {0: 'batch'}})
            torch.onnx.export(tail, torch.zeros(1, *x.shape[1:]), str(tail_path), dynamo=False,
                              opset_version=17, input_names=['features'],
                              output_names=['logits'],
                              dynamic_axes={'features': {0: 'batch'}, 'logits': {0: 'batch'}})
        head_s = ort.InferenceSession(str(head_path), providers=['CPUExecutionProvider'])
        tail_s = ort.InferenceSession(str(tail_path), providers=['CPUExecutionProvider'])
        _, inter = head_s.run(None, {'image': probe})
        (tail_logits,) = tail_s.run(None, {'features': inter})
        partitions.append({
            'blocks': int(blocks), 'head': head_path.name, 'tail': tail_path.name,
            'tensor_shape': [1, *[int(s) for s in x.shape[1:]]],
            'head_ms': round(_latency_ms(head_s, {'image': probe[:1]}), 3),
            'tail_ms': round(_latency_ms(tail_s, {'features': inter[:1]}), 3),
            'branch_agreement_with_final': round(agree, 4),
            'head_tail_max_abs_diff_vs_full': float(np.abs(tail_logits - full_logits).max()),
        })
    manifest = {'version': EARLY_EXIT_VERSION, 'input_size': int(side), 'precision': 'fp32',
                'partitions': partitions, 'full_ms': round(full_ms, 3),
                'distillation': {'frames': int(len(images)), 'held_out': int(held.sum()),
                                 'epochs': int(epochs), 'teacher': 'final softmax of Lite0 fp32',
                                 'labels_used': False},
                'seconds': round(time.monotonic() - started, 1)}
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def load_manifest(directory=None):
    """Return the early-exit manifest (None when the parts have not been built)."""
    path = Path(directory or early_exit_dir()) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _benchmark_hash(manifest=None):
    """Content hash of the benchmark (distillation frames come from it), or None."""
    from cbo_ros.evaluation.pooling import default_manifest_path
    path = Path(manifest) if manifest else default_manifest_path()
    content = path.parent / 'content_hash.txt'
    return content.read_text().strip() if content.is_file() else None


def build_early_exit(directory=None, force=False, stride=3, epochs=25, log=print):
    """Build the early-exit parts unless up to date; return the manifest (idempotent)."""
    directory = Path(directory or early_exit_dir())
    current = load_manifest(directory)
    benchmark = _benchmark_hash()
    if (not force and current and current.get('version') == EARLY_EXIT_VERSION
            and current.get('benchmark_hash') == benchmark
            and all((directory / p[key]).is_file() for p in current['partitions']
                    for key in ('head', 'tail'))):
        return current
    log(f'building the early-exit Lite0 parts in {directory}')
    images = distillation_frames(stride=stride)
    manifest = export_parts(directory, images, epochs=epochs, log=log)
    manifest['benchmark_hash'] = benchmark
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return measure_latencies(directory, log)


def main(argv=None):
    """Command line: build (or rebuild with --force) the early-exit parts."""
    import argparse
    parser = argparse.ArgumentParser(description=build_early_exit.__doc__)
    parser.add_argument('--force', action='store_true')
    parser.add_argument('--stride', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=25)
    parser.add_argument('--measure', action='store_true',
                        help='re-measure the head/tail times (on an otherwise idle machine)')
    args = parser.parse_args(argv)
    manifest = build_early_exit(force=args.force, stride=args.stride, epochs=args.epochs)
    if args.measure:
        manifest = measure_latencies()
    print(json.dumps(manifest, indent=2))


if __name__ == '__main__':
    main()
