"""Plan: from the sources' classes to the job: labels, train/val split, per-class limits, write order."""

from __future__ import annotations

import numpy as np

from etl.messages import Item
from etl.settings import Settings, UsageError
from etl.sources.base import Plan, Reader, Split
from etl.sources.registry import open_source
from etl.words import plural

SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "split": 2}

Pairs = list[tuple[str, int]]  # (item path, label)


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_SEED_OFFSET[purpose]])


def _limit_classes(classes: dict[str, list[str]], s: Settings, notes: list[str]) -> dict[str, list[str]]:
    kept: dict[str, list[str]] = {}
    for name, files in classes.items():
        if len(files) < s.min_per_class:
            notes.append(f"class '{name}' dropped: {len(files)} images, fewer than --min-per-class {s.min_per_class}")
            continue
        if s.max_per_class is not None and len(files) > s.max_per_class:
            picked = _rng(s.seed, "split").permutation(len(files))[: s.max_per_class]
            files = [files[i] for i in sorted(picked)]
        kept[name] = files
    return kept


def _split_by_pct(classes: dict[str, list[str]], s: Settings) -> tuple[Pairs, Pairs]:
    train: Pairs = []
    val: Pairs = []
    rng = _rng(s.seed, "split")
    for label, files in enumerate(classes.values()):
        n_val = int(len(files) * s.effective_val_pct / 100 + 0.5)
        n_val = min(n_val, len(files) - 1)
        order = rng.permutation(len(files))
        val.extend((files[i], label) for i in sorted(order[:n_val]))
        train.extend((files[i], label) for i in sorted(order[n_val:]))
    return train, val


def _val_source(path: str, labels: list[str], dropped: set[str], notes: list[str]) -> tuple[Pairs, Reader]:
    source = open_source(path)
    val_classes = source.classes()
    _refuse_line_breaks(val_classes, path)
    notes.extend(f"val: {note}" for note in source.notes())
    if not any(val_classes.values()):
        raise UsageError(f"no images found in class sub-folders of the val folder {path}: it needs one sub-folder "
                         "per class, named as in the train folder")
    unknown = [name for name in val_classes if name not in labels and name not in dropped]
    if unknown:
        raise UsageError(f"val folder has classes the train folder lacks: {', '.join(unknown[:5])}")
    left_out = [name for name in val_classes if name in dropped and val_classes[name]]
    if left_out:
        notes.append(f"val images of {plural(len(left_out), 'dropped class')} left out, e.g. '{left_out[0]}'")
        val_classes = {name: files for name, files in val_classes.items() if name not in dropped}
    missing = [name for name in labels if not val_classes.get(name)]
    if missing:
        notes.append(f"{plural(len(missing), 'class')} {'has' if len(missing) == 1 else 'have'} no val images, "
                     f"e.g. '{missing[0]}'")
    label_of = {name: i for i, name in enumerate(labels)}
    return [(path, label_of[name]) for name, files in val_classes.items() for path in files], source.reader()


LINE_BREAKS = ("\n", "\r")


def _refuse_line_breaks(classes: dict[str, list[str]], where: str) -> None:
    """labels.txt has one class per line: a name with a line break would shift every later label."""
    bad = [name for name in classes if any(c in name for c in LINE_BREAKS)]
    if bad:
        raise UsageError(f"the class folder {bad[0]!r} in {where} has a line break in its name, which labels.txt "
                         "cannot hold: rename it")


def _unlistable_names(items: list[Item]) -> dict[int, str]:
    """Items whose path has a line break, which train.txt/val.txt cannot hold: skipped, with the reason."""
    return {it.index: "its name has a line break, which the list file cannot hold: rename it"
            for it in items if any(c in it.path for c in LINE_BREAKS)}


def _ordered(name: str, reader: Reader, pairs: Pairs, s: Settings) -> Split:
    if s.shuffle:
        order = _rng(s.seed, name).permutation(len(pairs))  # type: ignore[arg-type]
        pairs = [pairs[i] for i in order]
    items = [Item(i, path, label) for i, (path, label) in enumerate(pairs)]
    return Split(name, reader, items, _unlistable_names(items))


def plan(s: Settings) -> Plan:
    """Scan the inputs and decide every database's content and order."""
    notes: list[str] = []
    source = open_source(s.train_dir)
    found = source.classes()
    _refuse_line_breaks(found, s.train_dir)
    notes.extend(source.notes())
    classes = _limit_classes(found, s, notes)
    if any(found.values()) and not classes:
        raise UsageError(f"every class has fewer than --min-per-class {s.min_per_class} images (the largest has "
                         f"{max(len(f) for f in found.values())}): lower --min-per-class")
    if not any(classes.values()):
        raise UsageError(f"no images found in class sub-folders of {s.train_dir}")
    labels = list(classes)
    if s.val_dir is not None:
        train = [(path, label) for label, files in enumerate(classes.values()) for path in files]
        val, val_reader = _val_source(s.val_dir, labels, set(found) - set(classes), notes)
    else:
        train, val = _split_by_pct(classes, s)
        val_reader = source.reader()
    splits = [_ordered("train", source.reader(), train, s)]
    if val:
        splits.append(_ordered("val", val_reader, val, s))
    return Plan(labels, splits, notes)
