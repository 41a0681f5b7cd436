"""Split the benchmark's objects: calibration, evaluation and a held-out category.

- ``heldout_category``: every object whose label synsets lie under WordNet's *musical
  instrument* (n03800933). None of them is in calibration or evaluation, so a calibration
  fitted on the other objects can be checked on a kind of object it never saw.
- ``calibration`` / ``evaluation``: the remaining objects, split by object (stamp) and
  stratified by the stamp folder (animals, food, vehicles, ...): within each folder the
  objects are ordered by a hash of their id and dealt alternately. Mirrored copies of one
  photo (``x`` and ``x_mirror``) are one object group and stay together.

The split depends only on the object ids (not on the generation seed), so it is stable.
"""

import hashlib
import re
from collections import defaultdict

HELDOUT_SYNSET = 'n03800933'      # musical instrument
HELDOUT_NAME = 'musical_instrument'
SPLITS = ('calibration', 'evaluation', 'heldout_category')


def group_of(stamp):
    """Objects that are one photo (mirrored copies) share a group."""
    stem = stamp.rsplit('.', 1)[0]
    return re.sub(r'[-_]mirror$', '', stem)


def _order_key(text):
    return hashlib.sha256(text.encode()).hexdigest()


def category_of(obj, wordnet):
    """Return the held-out category name of an object, or its stamp folder."""
    for wnid in obj.labels.synsets:
        seen, stack = set(), [wnid]
        while stack:
            current = stack.pop()
            if current == HELDOUT_SYNSET:
                return HELDOUT_NAME
            for parent in wordnet.hypernyms.get(current, ()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
    return obj.stamp.split('/')[0]


def split_objects(objects, wordnet):
    """Return {split: [object, ...]} (object-disjoint; see the module docstring)."""
    result = {name: [] for name in SPLITS}
    groups = defaultdict(list)
    for obj in objects:
        groups[group_of(obj.stamp)].append(obj)
    by_folder = defaultdict(list)
    for key, members in groups.items():
        categories = {category_of(o, wordnet) for o in members}
        if HELDOUT_NAME in categories:
            result['heldout_category'].extend(members)
        else:
            by_folder[members[0].stamp.split('/')[0]].append(key)
    turn = 0
    for folder in sorted(by_folder):
        for key in sorted(by_folder[folder], key=_order_key):
            result[('calibration', 'evaluation')[turn % 2]].extend(groups[key])
            turn += 1
    for name in SPLITS:
        result[name].sort(key=lambda o: o.object_id)
    return result
