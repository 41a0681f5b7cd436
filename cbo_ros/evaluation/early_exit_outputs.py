"""Early-exit model outputs of a source, computed once with the ONNX parts and cached.

Per frame (centre square at the model's input size) and partition ``b``: the exit branch's
logits (float16), the compressed size of the intermediate tensor as it would travel (uint8 +
zlib, ``cbo_common.tensor_codec``), and the tail's top-1 and softmax score on the *decoded*
tensor (so the quantisation's effect on the server's answer is included). Cached under
``artifacts/cache/early_exit/`` keyed by the source and the parts' manifest.
"""

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from cbo_common.tensor_codec import decode_tensor, encode_tensor
from cbo_ros.assets import paths
from cbo_ros.perception.early_exit import EarlyExitModel
from cbo_ros.perception.image_ops import softmax
from cbo_ros.perception.media import read_frames

_MODELS = {}


@dataclass
class EarlyExitOutputs:
    """Per-partition outputs of one source, indexed by frame."""

    exit_logits: dict       # blocks -> (N, C) float32
    tail_pred: dict         # blocks -> (N,) int: server answer on the decoded tensor
    tail_score: dict        # blocks -> (N,) its softmax probability
    tensor_bytes: dict      # blocks -> (N,) int: compressed payload

    def __len__(self):
        return len(next(iter(self.tail_pred.values())))


def shared_model():
    """One ``EarlyExitModel`` per process (sessions are reused)."""
    if 'model' not in _MODELS:
        _MODELS['model'] = EarlyExitModel(intra_op_threads=2)
    return _MODELS['model']


def _key(spec, model, max_frames=0):
    from cbo_ros.evaluation.outputs_cache import cache_key
    files = [[f, (model.directory / f).stat().st_size, (model.directory / f).stat().st_mtime_ns]
             for p in model.manifest['partitions'] for f in (p['head'], p['tail'])]
    identity = [model.manifest.get('version'), model.manifest.get('input_size'), files]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:10]
    return f'{cache_key(spec, max_frames=max_frames)}-ee{digest}'


def compute_outputs(frames, model, batch=64):
    """Run every partition on RGB ``frames``; return an ``EarlyExitOutputs``."""
    result = EarlyExitOutputs({}, {}, {}, {})
    for blocks in model.blocks:
        logits, preds, scores, sizes = [], [], [], []
        shape = model.tensor_shape(blocks)
        for start in range(0, len(frames), batch):
            images = model.preprocess(frames[start:start + batch])
            exit_logits, features = model.head(blocks, images)
            decoded = []
            for row in features:
                payload = encode_tensor(row[None])
                sizes.append(len(payload.data))
                decoded.append(decode_tensor(payload, expected_shape=shape)[0])
            tail = softmax(model.tail(blocks, np.stack(decoded)))
            logits.append(exit_logits.astype(np.float16))
            preds.append(tail.argmax(axis=1))
            scores.append(tail.max(axis=1))
        result.exit_logits[blocks] = np.concatenate(logits)
        result.tail_pred[blocks] = np.concatenate(preds).astype(np.int64)
        result.tail_score[blocks] = np.concatenate(scores).astype(np.float32)
        result.tensor_bytes[blocks] = np.asarray(sizes, dtype=np.int64)
    return result


def load_early_exit_outputs(spec, model=None, max_frames=0):
    """Return the cached (or freshly computed) ``EarlyExitOutputs`` of a source.

    ``max_frames`` (0: all) reads only the first frames, as ``cbo_eval --max-frames`` does; the
    cached outputs of the whole source serve too when they exist.
    """
    model = model or shared_model()
    directory = paths.cache_dir() / 'early_exit'
    path = directory / f'{_key(spec, model, max_frames)}.npz'
    whole = directory / f'{_key(spec, model)}.npz'
    for cached in (path, whole):
        if cached.is_file():
            data = np.load(cached)
            end = max_frames or None
            out = EarlyExitOutputs({}, {}, {}, {})
            for blocks in model.blocks:
                out.exit_logits[blocks] = data[f'exit_{blocks}'][:end].astype(np.float32)
                out.tail_pred[blocks] = data[f'pred_{blocks}'][:end]
                out.tail_score[blocks] = data[f'score_{blocks}'][:end]
                out.tensor_bytes[blocks] = data[f'bytes_{blocks}'][:end]
            return out
    frames, _ = read_frames(spec, max_frames=max_frames, with_labels=False)
    out = compute_outputs([f.rgb for f in frames], model)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for blocks in model.blocks:
        arrays[f'exit_{blocks}'] = out.exit_logits[blocks]
        arrays[f'pred_{blocks}'] = out.tail_pred[blocks]
        arrays[f'score_{blocks}'] = out.tail_score[blocks]
        arrays[f'bytes_{blocks}'] = out.tensor_bytes[blocks]
    tmp = path.with_suffix('.tmp.npz')
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    for blocks in model.blocks:
        out.exit_logits[blocks] = out.exit_logits[blocks].astype(np.float32)
    return out
