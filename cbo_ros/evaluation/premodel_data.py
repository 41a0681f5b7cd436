"""Premodel data: every candidate's outputs and the image features of a source (cached).

The candidates' logits come from the outputs cache (``load_outputs``, one file per model and
input size); the image features (``cbo_ros.perception.image_features``) and their extraction
times are cached beside them (``premodel_features_v<N>.npz``). ``PremodelTable`` stacks the
labelled frames of many sources: the training / scoring set of the premodel.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.assets.premodel_models import CANDIDATES
from cbo_ros.evaluation.outputs_cache import cache_key, load_outputs
from cbo_ros.perception.image_features import FEATURE_NAMES, timed_features
from cbo_ros.perception.media import open_source

FEATURES_VERSION = 1


def features_file(spec, labels_file=None, cache_dir=None, stride=1, max_frames=0, topic=None):
    """Path of a source's cached image features."""
    key = cache_key(spec, stride, max_frames, labels_file, topic)
    return Path(cache_dir or paths.cache_dir()) / key / f'premodel_features_v{FEATURES_VERSION}.npz'


def load_features(spec, labels_file=None, cache_dir=None, expected_frames=None, stride=1,
                  max_frames=0, topic=None):
    """Return ``(features (N, F), seconds (N,))`` of the frames of a source (cached).

    ``stride`` and ``max_frames`` select frames as ``load_outputs`` does.
    """
    path = features_file(spec, labels_file, cache_dir, stride, max_frames, topic)
    if path.is_file():
        with np.load(path) as data:
            features, seconds = data['features'], data['seconds']
        if expected_frames is None or len(features) == expected_frames:
            return features, seconds
    source = open_source(spec, labels_file=labels_file, max_frames=max_frames, stride=stride,
                         topic=topic)
    rows, times = [], []
    try:
        for frame in source:
            feature, seconds = timed_features(frame.rgb)
            rows.append(feature)
            times.append(seconds)
    finally:
        source.close()
    features = np.asarray(rows, dtype=np.float32).reshape(-1, len(FEATURE_NAMES))
    seconds = np.asarray(times, dtype=np.float64)
    if expected_frames is not None and len(features) != expected_frames:
        raise ValueError(f'{spec}: {len(features)} frames read for features, '
                         f'{expected_frames} in its cached outputs')
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, features=features, seconds=seconds)
    os.replace(tmp, path)
    return features, seconds


def load_premodel_outputs(source, offload_resolutions=(), candidates=CANDIDATES,
                          cache_dir=None, progress=False):
    """``VideoOutputs`` of a ``LabelledSource`` with every candidate's logits, plus features.

    Returns ``(outputs, features, feature_seconds)``; ``outputs.robot_logits`` holds
    ``(tag, input_size)`` of each candidate.
    """
    outputs = None
    for candidate in candidates:
        loaded = load_outputs(source.media, robot_tags=(candidate.tag,),
                              robot_resolutions=(candidate.input_size,),
                              offload_resolutions=offload_resolutions if outputs is None else (),
                              labels_file=source.labels_file, cache_dir=cache_dir,
                              progress=progress)
        if outputs is None:
            outputs = loaded
        else:
            outputs.robot_logits.update(loaded.robot_logits)
    outputs.group = source.group or outputs.source
    features, seconds = load_features(source.media, source.labels_file, cache_dir, len(outputs))
    return outputs, features, seconds


def attach_premodel_inputs(outputs, media, labels_file=None, candidates=CANDIDATES,
                           stride=1, max_frames=0, cache_dir=None, progress=False, topic=None):
    """Add every candidate's logits and the image features to loaded ``outputs`` (in place)."""
    for candidate in candidates:
        key = (candidate.tag, candidate.input_size)
        if key not in outputs.robot_logits:
            loaded = load_outputs(media, robot_tags=(candidate.tag,),
                                  robot_resolutions=(candidate.input_size,),
                                  offload_resolutions=(), stride=stride, max_frames=max_frames,
                                  labels_file=labels_file, topic=topic, cache_dir=cache_dir,
                                  progress=progress)
            outputs.robot_logits[key] = loaded.robot_logits[key]
    outputs.features, _ = load_features(media, labels_file, cache_dir, len(outputs), stride,
                                        max_frames, topic)
    return outputs


@dataclass
class PremodelTable:
    """Labelled frames of many sources, stacked: what the premodel trains and is scored on."""

    features: np.ndarray          # (N, F)
    feature_seconds: np.ndarray   # (N,)
    logits: list                  # per candidate (N, C)
    correct: np.ndarray           # (N, M) 0/1 per candidate
    labels: np.ndarray            # (N, C) bool true label sets
    groups: np.ndarray            # (N,) object of each frame
    server_correct: dict          # offload resolution -> (N,) 0/1
    candidates: tuple


def build_table(sources, offload_resolutions=(), candidates=CANDIDATES, cache_dir=None,
                progress=False):
    """Stack the labelled frames of ``sources`` (``LabelledSource`` list) into a table."""
    feats, secs, logits, correct, labels, groups = [], [], [], [], [], []
    server = {int(r): [] for r in offload_resolutions}
    for source in sources:
        outputs, features, seconds = load_premodel_outputs(source, offload_resolutions,
                                                           candidates, cache_dir, progress)
        keep = outputs.labelled
        if not keep.any():
            continue
        feats.append(features[keep])
        secs.append(seconds[keep])
        logits.append([outputs.robot_logits[(c.tag, c.input_size)][keep] for c in candidates])
        correct.append(np.column_stack([outputs.local_correct(c.tag, c.input_size)[keep]
                                        for c in candidates]))
        labels.append(outputs.labels[keep])
        groups.extend([outputs.group] * int(keep.sum()))
        for r in server:
            server[r].append(outputs.server_correct(r)[keep])
    if not feats:
        raise ValueError('no labelled frame in the given sources')
    return PremodelTable(
        np.concatenate(feats), np.concatenate(secs),
        [np.concatenate([per[m] for per in logits]) for m in range(len(candidates))],
        np.concatenate(correct), np.concatenate(labels), np.asarray(groups),
        {r: np.concatenate(v) for r, v in server.items()}, tuple(candidates))
