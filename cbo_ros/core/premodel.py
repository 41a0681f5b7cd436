"""Premodel model selection: per frame, pick which of several local models to run (no ROS).

The premodel (after Taylor et al., LCTES 2018; the formulation and code here are ours) maps cheap
image features, optionally with the cheapest model's calibrated confidence, to one of the
candidate models, ordered by cost. Training labels follow the "first correct in cost order"
rule: a frame's label is the cheapest candidate within the time budget whose top-1 is in the
frame's true label set; when none is, the ``fallback`` candidate (the cheapest: nothing is won
by paying more; or the most capable). A kNN or a small decision tree (numpy, below) learns the
labels; hyper-parameters are chosen by cross-validation grouped by object (``cross_validate``),
maximising the accuracy of the selected answers and, among settings within ``tolerance`` of the
best, the lowest mean time.

Cost of a frame: feature extraction + (the cheapest model, when its confidence is a feature)
+ the chosen model (nothing more when the chosen one is the cheapest already run).

A ``Premodel`` keeps its standardised training set and refits its classifier on load, so the
saved file (``.npz``: arrays + JSON metadata, no pickles) is small and portable. It also keeps,
per candidate, the temperature of its confidence and its server profile A_r(c) (the
``premodel_cbo`` strategy plans offloads from the chosen model's calibrated confidence).
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from cbo_ros.core.calibration import ServerProfile, TemperatureScaling

FORMAT = 'cbo-premodel-1'
FALLBACKS = ('cheapest', 'largest')


class PremodelError(ValueError):
    """A premodel file or training set that cannot be used."""


@dataclass
class PremodelConfig:
    """Hyper-parameters of the premodel."""

    kind: str = 'knn'              # 'knn' or 'tree'
    k: int = 9                     # kNN neighbours
    depth: int = 4                 # tree depth
    use_confidence: bool = False   # add the cheapest model's calibrated confidence as a feature
    fallback: str = 'cheapest'     # label of frames no candidate answers correctly

    def label(self):
        """Short readable name, e.g. 'knn k=9 +conf'."""
        core = f'knn k={self.k}' if self.kind == 'knn' else f'tree depth={self.depth}'
        return core + (' +conf' if self.use_confidence else '') + f' fallback={self.fallback}'


def selection_labels(correct, costs_s, budget_s=None, fallback='cheapest'):
    """Per frame: the first candidate in cost order that is correct (within the budget).

    ``correct``: (N, M) 0/1, candidates in cost order; ``costs_s``: (M,) mean time of each;
    candidates costing more than ``budget_s`` are never labels. Frames with no correct
    candidate get the cheapest (``fallback='cheapest'``) or the most capable allowed one.
    """
    correct = np.asarray(correct, dtype=bool)
    allowed = allowed_candidates(costs_s, budget_s)
    if fallback not in FALLBACKS:
        raise ValueError(f'fallback must be one of {FALLBACKS}, got {fallback!r}')
    masked = correct[:, allowed]
    first = np.argmax(masked, axis=1)
    labels = np.asarray(allowed)[first]
    none = ~masked.any(axis=1)
    labels[none] = allowed[0] if fallback == 'cheapest' else allowed[-1]
    return labels


def allowed_candidates(costs_s, budget_s=None):
    """Return the candidates whose cost fits the budget (the cheapest always does)."""
    costs = np.asarray(costs_s, dtype=np.float64)
    if costs.ndim != 1 or not len(costs):
        raise ValueError('costs_s must list one mean time per candidate')
    if np.any(np.diff(costs) < 0):
        raise ValueError(f'candidates must be ordered by cost, got times {list(costs)}')
    if budget_s is None:
        return list(range(len(costs)))
    return [0] + [i for i in range(1, len(costs)) if costs[i] <= budget_s]


class NearestNeighbours:
    """k-nearest-neighbour majority vote (ties: the cheaper candidate), numpy only."""

    def __init__(self, k):
        self.k = int(k)

    def fit(self, x, y):
        """Remember the standardised training set."""
        self.x, self.y = np.asarray(x, np.float64), np.asarray(y, np.int64)
        self.classes = int(self.y.max()) + 1
        return self

    def predict(self, rows, chunk=512):
        """Majority label of the ``k`` nearest training rows of each row (Euclidean)."""
        rows = np.asarray(rows, np.float64)
        k = min(self.k, len(self.x))
        out = np.empty(len(rows), dtype=np.int64)
        sq = (self.x ** 2).sum(axis=1)
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            dist = sq[None, :] - 2.0 * part @ self.x.T
            nearest = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < len(self.x) else \
                np.broadcast_to(np.arange(len(self.x)), (len(part), len(self.x)))
            votes = np.zeros((len(part), self.classes))
            np.add.at(votes, (np.repeat(np.arange(len(part)), nearest.shape[1]),
                              self.y[nearest].ravel()), 1.0)
            out[start:start + chunk] = votes.argmax(axis=1)
        return out


class SmallTree:
    """A depth-limited classification tree (Gini impurity, axis-aligned splits), numpy only."""

    def __init__(self, depth, min_leaf=20, thresholds=32):
        self.depth, self.min_leaf, self.thresholds = int(depth), int(min_leaf), int(thresholds)

    def fit(self, x, y):
        """Grow the tree greedily."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.int64)
        self.classes = int(y.max()) + 1
        self.root = self._grow(x, y, self.depth)
        return self

    def _gini(self, counts):
        total = counts.sum(axis=-1)
        share = counts / np.maximum(total, 1)[..., None]
        return total * (1.0 - (share ** 2).sum(axis=-1))

    def _grow(self, x, y, depth):
        counts = np.bincount(y, minlength=self.classes).astype(np.float64)
        leaf = int(counts.argmax())
        if depth == 0 or len(y) < 2 * self.min_leaf or counts.max() == len(y):
            return leaf
        best = (self._gini(counts), None, None)
        onehot = np.eye(self.classes)[y]
        for j in range(x.shape[1]):
            order = np.argsort(x[:, j], kind='stable')
            xs, cum = x[order, j], np.cumsum(onehot[order], axis=0)
            cuts = np.unique(np.linspace(self.min_leaf, len(y) - self.min_leaf,
                                         self.thresholds).astype(int))
            cuts = cuts[(cuts > 0) & (cuts < len(y))]
            cuts = cuts[xs[cuts - 1] < xs[cuts]]
            if not len(cuts):
                continue
            left = cum[cuts - 1]
            impurity = self._gini(left) + self._gini(counts - left)
            i = int(np.argmin(impurity))
            if impurity[i] < best[0] - 1e-12:
                best = (impurity[i], j, 0.5 * (xs[cuts[i] - 1] + xs[cuts[i]]))
        if best[1] is None:
            return leaf
        _, j, threshold = best
        mask = x[:, j] <= threshold
        return (j, threshold, self._grow(x[mask], y[mask], depth - 1),
                self._grow(x[~mask], y[~mask], depth - 1))

    def predict(self, rows):
        """Leaf label of each row."""
        out = []
        for row in np.asarray(rows, np.float64):
            node = self.root
            while isinstance(node, tuple):
                node = node[2] if row[node[0]] <= node[1] else node[3]
            out.append(node)
        return np.asarray(out, dtype=np.int64)


def _classifier(config):
    if config.kind == 'knn':
        return NearestNeighbours(config.k)
    if config.kind == 'tree':
        return SmallTree(config.depth)
    raise ValueError(f"premodel kind must be 'knn' or 'tree', got {config.kind!r}")


def group_folds(groups, folds):
    """Split frame indices into ``folds`` (train, test) pairs with whole groups per fold."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.random.default_rng(0).permutation(len(names))
    fold_of_group = np.empty(len(names), dtype=np.int64)
    fold_of_group[order] = np.arange(len(names)) % folds
    fold = fold_of_group[inverse]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(folds)]


@dataclass
class Premodel:
    """A trained premodel: features (+ confidence) -> index of the candidate to run."""

    candidates: List[str]                  # names, cost order
    costs_s: List[float]                   # mean inference time of each candidate
    feature_time_s: float                  # mean feature-extraction time
    config: PremodelConfig
    train_x: np.ndarray                    # (N, F) raw training features
    train_y: np.ndarray                    # (N,) candidate indices
    temperatures: List[float] = field(default_factory=list)
    profiles: list = field(default_factory=list)    # ServerProfile per candidate or None
    budget_s: Optional[float] = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.train_x = np.asarray(self.train_x, dtype=np.float64)
        self.train_y = np.asarray(self.train_y, dtype=np.int64)
        if self.train_x.ndim != 2 or len(self.train_x) != len(self.train_y):
            raise PremodelError('training features and labels do not match')
        if len(self.candidates) != len(self.costs_s):
            raise PremodelError('one cost per candidate is needed')
        if len(self.train_y) == 0:
            raise PremodelError('empty training set')
        if self.train_y.min() < 0 or self.train_y.max() >= len(self.candidates):
            raise PremodelError('training labels outside the candidates')
        self.mean = self.train_x.mean(axis=0)
        self.scale = self.train_x.std(axis=0)
        self.scale[self.scale < 1e-9] = 1.0
        classes = np.unique(self.train_y)
        if len(classes) == 1:
            self._constant = int(classes[0])
            self._model = None
        else:
            self._constant = None
            self._model = _classifier(self.config)
            self._model.fit((self.train_x - self.mean) / self.scale, self.train_y)

    @property
    def feature_count(self):
        """Number of inputs of ``select`` (image features, + 1 with the confidence)."""
        return self.train_x.shape[1]

    def inputs(self, features, confidence=None):
        """Build the premodel's input rows from image features (and the cheapest's confidence)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if self.config.use_confidence:
            if confidence is None:
                raise PremodelError('this premodel needs the cheapest model\'s confidence')
            features = np.column_stack([features, np.atleast_1d(confidence)])
        if features.shape[1] != self.feature_count:
            raise PremodelError(f'expected {self.feature_count} premodel inputs, got '
                                f'{features.shape[1]}')
        return features

    def select_rows(self, rows):
        """Candidate index for each input row (see ``inputs``)."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        if self._model is None:
            return np.full(len(rows), self._constant, dtype=np.int64)
        return self._model.predict((rows - self.mean) / self.scale).astype(np.int64)

    def select(self, features, confidence=None):
        """Candidate index for one frame's features (and the cheapest model's confidence)."""
        return int(self.select_rows(self.inputs(features, confidence))[0])

    def frame_cost_s(self, chosen):
        """Return the expected time of frames that chose ``chosen``: features + models."""
        chosen = np.asarray(chosen)
        costs = np.asarray(self.costs_s)
        total = self.feature_time_s + costs[chosen]
        if self.config.use_confidence:
            total = total + np.where(chosen == 0, 0.0, costs[0])
        return total

    def confidence(self, index, logits):
        """Calibrated top-1 confidence of candidate ``index`` from its logits (N, C) or (C,)."""
        temperature = self.temperatures[index] if self.temperatures else 1.0
        return TemperatureScaling(temperature).predict(np.atleast_2d(logits))

    def server_accuracy(self, index, resolution, confidence, fallback=None):
        """A_r(c) of candidate ``index``'s confidence; ``fallback(r, c)`` when not profiled."""
        profile = self.profiles[index] if self.profiles else None
        if profile is None:
            if fallback is None:
                raise PremodelError(f'no server profile for {self.candidates[index]}')
            return float(fallback(resolution, confidence))
        return profile.lookup(resolution, confidence)

    def save(self, path):
        """Write the premodel as ``.npz`` (arrays + JSON metadata, no pickles)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {'format': FORMAT, 'candidates': list(self.candidates),
                'costs_s': [float(c) for c in self.costs_s],
                'feature_time_s': float(self.feature_time_s), 'config': asdict(self.config),
                'temperatures': [float(t) for t in self.temperatures],
                'profiles': [None if p is None else p.to_dict() for p in self.profiles],
                'budget_s': self.budget_s, 'info': self.info}
        tmp = path.with_name(path.name + '.tmp.npz')
        np.savez(tmp, train_x=self.train_x, train_y=self.train_y,
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path):
        """Read a premodel written by ``save``; ``PremodelError`` says why it cannot be used."""
        path = Path(path)
        if not path.is_file():
            raise PremodelError(f'premodel file {path} not found (build it with '
                                '`python -m cbo_ros.tools.premodel build`)')
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data['meta']).decode())
                train_x, train_y = data['train_x'], data['train_y']
        except (OSError, ValueError, KeyError) as error:
            raise PremodelError(f'premodel file {path} is unreadable: {error}') from error
        if meta.get('format') != FORMAT:
            raise PremodelError(f'premodel file {path}: format {meta.get("format")!r}, '
                                f'expected {FORMAT!r}')
        profiles = [None if p is None else ServerProfile.from_dict(p)
                    for p in meta.get('profiles', [])]
        return cls(meta['candidates'], meta['costs_s'], meta['feature_time_s'],
                   PremodelConfig(**meta['config']), train_x, train_y,
                   meta.get('temperatures', []), profiles, meta.get('budget_s'),
                   meta.get('info', {}))


@dataclass
class SelectedAnswer:
    """One frame answered by the model the premodel picked."""

    index: int                 # candidate index (cost order)
    logits: np.ndarray         # (C,) logits of the chosen model
    confidence: float          # its calibrated top-1 confidence
    raw_confidence: float      # its max softmax


def answer_frame(premodel, features, run_candidate):
    """Pick the candidate for one frame and run it: ``run_candidate(index) -> (C,) logits``.

    With a confidence-feature premodel the cheapest candidate runs first; when it is also the
    one chosen its answer is reused. The live classifier node and the offline replay use this
    (the replay through ``select_rows`` on cached logits, same arithmetic).
    """
    logits0 = None
    confidence0 = None
    if premodel.config.use_confidence:
        logits0 = np.asarray(run_candidate(0), dtype=np.float64).ravel()
        confidence0 = float(premodel.confidence(0, logits0)[0])
    index = premodel.select(features, confidence0)
    logits = logits0 if index == 0 and logits0 is not None else \
        np.asarray(run_candidate(index), dtype=np.float64).ravel()
    return SelectedAnswer(index, logits, float(premodel.confidence(index, logits)[0]),
                          float(TemperatureScaling(1.0).predict(logits)[0]))


def training_inputs(features, confidences0, use_confidence):
    """Premodel inputs of a training set: features, plus the cheapest's confidence if used."""
    features = np.asarray(features, dtype=np.float64)
    if use_confidence:
        return np.column_stack([features, np.asarray(confidences0, dtype=np.float64)])
    return features


def fit_premodel(features, correct, costs_s, feature_time_s, config, candidates,
                 confidences0=None, budget_s=None, temperatures=(), profiles=(), info=None):
    """Train a premodel on a labelled set (``selection_labels`` gives its targets)."""
    correct = np.asarray(correct)
    if len(features) != len(correct):
        raise PremodelError('features and correctness have different frame counts')
    labels = selection_labels(correct, costs_s, budget_s, config.fallback)
    x = training_inputs(features, confidences0, config.use_confidence)
    return Premodel(list(candidates), [float(c) for c in costs_s], float(feature_time_s),
                    config, x, labels, list(temperatures), list(profiles), budget_s,
                    dict(info or {}))


def default_grid():
    """Hyper-parameter settings tried by cross-validation."""
    grid = []
    for use_confidence in (False, True):
        for fallback in FALLBACKS:
            for k in (1, 5, 15, 45):
                grid.append(PremodelConfig('knn', k=k, use_confidence=use_confidence,
                                           fallback=fallback))
            for depth in (2, 4, 8):
                grid.append(PremodelConfig('tree', depth=depth, use_confidence=use_confidence,
                                           fallback=fallback))
    return grid


def cross_validate(features, correct, costs_s, feature_time_s, groups, confidences0=None,
                   grid: Optional[Sequence[PremodelConfig]] = None, folds=5, budget_s=None,
                   tolerance=0.01):
    """Cross-validate each setting with grouped k folds; return ``(best, rows)``.

    Each row: the setting, the held-out accuracy of the selected answers and their mean time
    (features + models). ``best``: the fastest setting within ``tolerance`` of the most
    accurate one.
    """
    correct = np.asarray(correct, dtype=np.float64)
    groups = np.asarray(groups)
    n_folds = min(int(folds), len(np.unique(groups)))
    if n_folds < 2:
        raise PremodelError('cross-validation needs at least two groups (objects)')
    splits = group_folds(groups, n_folds)
    rows = []
    for config in grid or default_grid():
        if config.use_confidence and confidences0 is None:
            continue
        chosen = np.zeros(len(correct), dtype=np.int64)
        for train, test in splits:
            model = fit_premodel(features[train], correct[train], costs_s, feature_time_s,
                                 config, [str(i) for i in range(len(costs_s))],
                                 None if confidences0 is None else confidences0[train], budget_s)
            rows_test = training_inputs(features[test], None if confidences0 is None
                                        else confidences0[test], config.use_confidence)
            chosen[test] = model.select_rows(rows_test)
        accuracy = float(correct[np.arange(len(correct)), chosen].mean())
        time_s = float(model.frame_cost_s(chosen).mean())
        rows.append({'config': config, 'accuracy': accuracy, 'time_s': time_s,
                     'share': np.bincount(chosen, minlength=len(costs_s)) / len(chosen)})
    if not rows:
        raise PremodelError('no setting to cross-validate')
    top = max(r['accuracy'] for r in rows)
    near = [r for r in rows if r['accuracy'] >= top - tolerance]
    best = min(near, key=lambda r: (r['time_s'], -r['accuracy']))
    return best['config'], rows
