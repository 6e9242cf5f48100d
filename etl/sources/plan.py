"""Plan: from the sources' classes to the job: labels, train/val split, per-class limits, write order."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from etl.layout import CHECKPOINT_DIR
from etl.messages import Item
from etl.settings import Settings, UsageError
from etl.sources.archive import INCOMPLETE, stops_under_fail
from etl.sources.base import Plan, Source, Split, byte_order
from etl.sources.listfile import Listed, ListSource, check_files, check_range, positions_by_label, read_label_names
from etl.sources.registry import open_source
from etl.sources.vallabels import load_val_labels, stem
from etl.words import plural

SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "split": 2}

Pairs = list[tuple[str, int]]  # (item path, label)
K = TypeVar("K")
T = TypeVar("T")


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_SEED_OFFSET[purpose]])


def _limit_classes(classes: dict[K, list[T]], s: Settings, notes: list[str],
                   name: Callable[[K], str] = str) -> dict[K, list[T]]:
    kept: dict[K, list[T]] = {}
    for key, files in classes.items():
        if len(files) < s.min_per_class:
            notes.append(f"class '{name(key)}' dropped: {len(files)} images, fewer than --min-per-class "
                         f"{s.min_per_class}")
            continue
        if s.max_per_class is not None and len(files) > s.max_per_class:
            picked = _rng(s.seed, "split").permutation(len(files))[: s.max_per_class]
            files = [files[i] for i in sorted(picked)]
        kept[key] = files
    return kept


def _split_by_pct(groups: Iterable[tuple[int, list[T]]], s: Settings, notes: list[str],
                  name: Callable[[int], str]) -> tuple[list[tuple[T, int]], list[tuple[T, int]]]:
    """Hold out --val-pct of each class (label, its items), at random but seeded; items keep their order.
    A class too small to give one val image is named in the notes, as --val names a class its folder lacks."""
    train: list[tuple[T, int]] = []
    val: list[tuple[T, int]] = []
    rng = _rng(s.seed, "split")
    none_held: list[tuple[int, int]] = []  # (label, images) of the classes that give no val image
    for label, files in groups:
        n_val = int(len(files) * s.effective_val_pct / 100 + 0.5)
        n_val = min(n_val, len(files) - 1)
        if n_val == 0 and s.effective_val_pct > 0:
            none_held.append((label, len(files)))
        order = rng.permutation(len(files))
        val.extend((files[i], label) for i in sorted(order[:n_val]))
        train.extend((files[i], label) for i in sorted(order[n_val:]))
    if none_held:
        notes.append(_no_val_note(none_held, s, name, any_val=bool(val)))
    return train, val


def _no_val_note(none_held: list[tuple[int, int]], s: Settings, name: Callable[[int], str], any_val: bool) -> str:
    label, count = none_held[0]
    pct = f"--val-pct {s.effective_val_pct:g}" + (" (the default)" if s.val_pct is None else "")
    return (f"{plural(len(none_held), 'class')} {'has' if len(none_held) == 1 else 'have'} no val images: {pct} of "
            f"so few images rounds to none, e.g. '{name(label)}' ({plural(count, 'image')})"
            + ("" if any_val else "; no val_db is written: give a larger --val-pct, or --val with a val set"))


def _val_classes(s: Settings, source: Source, train: list[str], notes: list[str]) -> dict[str, list[str]]:
    """The val set's classes: its class folders, or (--val-labels) its images grouped by the labels file."""
    path = s.val_dir
    if s.val_labels:
        return _labelled(source, s.val_labels, train, notes)
    val_classes = source.classes()
    _refuse_line_breaks(val_classes, str(path))
    if not any(val_classes.values()):
        raise UsageError(f"no images found in class sub-folders of the val folder {path}: it needs one sub-folder "
                         "per class, named as in the train folder, or --val-labels naming each image's class")
    unknown = [name for name in val_classes if name not in train]
    if unknown:
        raise UsageError(f"val folder has classes the train folder lacks: {', '.join(unknown[:5])}")
    return val_classes


def _labelled(source: Source, labels_file: str, train: list[str], notes: list[str]) -> dict[str, list[str]]:
    """Flat val images by the class the labels file gives each; an image without a label, or of a class
    train lacks, is left out and named in the notes (never guessed)."""
    wnid_of = load_val_labels(labels_file, train).wnid_of
    images = source.images()
    if not images:
        raise UsageError(f"no images found in the val input {source_name(source)}")
    classes: dict[str, list[str]] = {}
    unlabelled, foreign = [], []
    known = set(train)
    for path in images:
        wnid = wnid_of.get(stem(path))
        if wnid is None:
            unlabelled.append(path)
        elif wnid not in known:
            foreign.append(f"{path} ({wnid})")
        else:
            classes.setdefault(wnid, []).append(path)
    if not classes:
        raise UsageError(f"none of the {plural(len(images), 'val image')} has a class in {labels_file} that the "
                         "train set has: is it the labels file of this val set?")
    unused = len(set(wnid_of) - {stem(p) for p in images})
    _label_notes(notes, labels_file, unlabelled, foreign, unused)
    return {name: classes[name] for name in byte_order(list(classes))}


NAMED = 50  # images a note names one by one


def _named(names: list[str]) -> str:
    more = f" and {len(names) - NAMED} more" if len(names) > NAMED else ""
    return ", ".join(names[:NAMED]) + more


def _label_notes(notes: list[str], labels_file: str, unlabelled: list[str], foreign: list[str], unused: int) -> None:
    if unlabelled:
        notes.append(f"val: {plural(len(unlabelled), 'image')} with no label in {labels_file} left out: "
                     + _named(unlabelled))
    if foreign:
        notes.append(f"val: {plural(len(foreign), 'image')} of classes the train set lacks left out: "
                     + _named(foreign))
    if unused:
        notes.append(f"val: {labels_file} names {plural(unused, 'image')} the val input does not hold")


def _val_source(s: Settings, labels: list[str], train: list[str], notes: list[str],
                progress: bool) -> tuple[Pairs, Source]:
    assert s.val_dir is not None
    source = open_source(s.val_dir, progress, _saved(s))
    val_classes = _val_classes(s, source, train, notes)
    notes.extend(f"val: {note}" for note in source.notes())
    dropped = set(train) - set(labels)
    left_out = [name for name in val_classes if name in dropped and val_classes[name]]
    if left_out:
        notes.append(f"val images of {plural(len(left_out), 'dropped class')} left out, e.g. '{left_out[0]}'")
        val_classes = {name: files for name, files in val_classes.items() if name not in dropped}
    missing = [name for name in labels if not val_classes.get(name)]
    if missing:
        notes.append(f"{plural(len(missing), 'class')} {'has' if len(missing) == 1 else 'have'} no val images, "
                     f"e.g. '{missing[0]}'")
    label_of = {name: i for i, name in enumerate(labels)}
    return [(path, label_of[name]) for name, files in val_classes.items() for path in files], source


LINE_BREAKS = ("\n", "\r")


def _refuse_line_breaks(classes: dict[str, list[str]], where: str) -> None:
    """labels.txt has one class per line: a name with a line break would shift every later label."""
    bad = [name for name in classes if any(c in name for c in LINE_BREAKS)]
    if bad:
        raise UsageError(f"the class folder {bad[0]!r} in {where} has a line break in its name, which labels.txt "
                         "cannot hold: rename it")


BLANK_LINE = "a blank line of the list (convert_imageset counts it as a line, and so does etl imageset)"


def _unlistable_names(items: list[Item]) -> dict[int, str]:
    """Items whose path has a line break, which train.txt/val.txt cannot hold, and the blank lines etl imageset
    keeps: skipped, with the reason."""
    return {it.index: "its name has a line break, which the list file cannot hold: rename it" if it.path
            else BLANK_LINE for it in items if not it.path or "\n" in it.path or "\r" in it.path}


def _ordered(name: str, source: Source, pairs: Pairs, s: Settings) -> Split:
    if s.shuffle:
        order = _rng(s.seed, name).permutation(len(pairs))  # type: ignore[arg-type]
        pairs = [pairs[i] for i in order]
    locate, make = source.locate, Item._make  # _make: a third of Item()'s cost, for a million items
    items = [make((i, path, label, *locate(path))) for i, (path, label) in enumerate(pairs)]
    return Split(name, source.reader(), items, _unlistable_names(items))


def _stop_at_damage(notes: list[str], s: Settings) -> None:
    """--on-error fail stops at a cut or damaged archive as it would at a bad image: before anything is
    written, rather than make a dataset that silently lacks the rest of the archive."""
    damaged = [n for n in notes if stops_under_fail(n)]
    if damaged and s.on_error == "fail" and damaged[0].removeprefix("val: ").startswith(INCOMPLETE):
        raise UsageError(f"--on-error fail stops at a damaged archive: {damaged[0]}. Download it again, or give "
                         "--on-error skip to convert what it holds")
    if damaged and s.on_error == "fail":
        raise UsageError(f"--on-error fail stops at what etl would leave out: {damaged[0]}; or give --on-error "
                         "skip to convert without it")


def source_name(source: Source) -> str:
    return getattr(source, "path", None) or getattr(source, "root", "")


@contextmanager
def collector_paused() -> Iterator[None]:
    """A plan makes millions of small tuples, none of them garbage: the cyclic collector would walk the
    growing lists again and again (40% of a 1M-line list's plan)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def plan(s: Settings, progress: bool = False) -> Plan:
    """Scan the inputs and decide every database's content and order; progress: show the archive scans."""
    with collector_paused():
        return _plan(s, progress)


def _plan(s: Settings, progress: bool) -> Plan:
    notes: list[str] = []
    source = open_source(s.train_dir, progress, _saved(s), s.root, keep_blank=s.caffe_imageset)
    if isinstance(source, ListSource):
        return _plan_list(s, source, progress)
    found = source.classes()
    _refuse_line_breaks(found, s.train_dir)
    notes.extend(source.notes())
    classes = _limit_classes(found, s, notes)
    if any(found.values()) and not classes:
        raise UsageError(f"every class has fewer than --min-per-class {s.min_per_class} images (the largest has "
                         f"{max(len(f) for f in found.values())}): lower --min-per-class")
    if not any(classes.values()):
        cut = next((f": {n}" for n in notes if n.startswith(INCOMPLETE)), "")  # a tar cut before its first class
        raise UsageError(f"no images found in class sub-folders of {s.train_dir}{cut}")
    labels = list(classes)
    if s.val_dir is not None:
        train = [(path, label) for label, files in enumerate(classes.values()) for path in files]
        val, val_source = _val_source(s, labels, list(found), notes, progress)
    else:
        train, val = _split_by_pct(enumerate(classes.values()), s, notes, labels.__getitem__)
        val_source = source
    _stop_at_damage(notes, s)
    splits = [_ordered("train", source, train, s)]
    if val:
        splits.append(_ordered("val", val_source, val, s))
    return Plan(labels, splits, notes, [source] if val_source is source else [source, val_source])


def _saved(s: Settings) -> Path | None:
    """Where the run being resumed kept its scans."""
    return Path(s.out_dir) / CHECKPOINT_DIR if s.resume else None


def _plan_list(s: Settings, source: ListSource, progress: bool) -> Plan:
    """A list's job: its labels are the list's numbers (never renumbered), its order the list's order."""
    notes: list[str] = []
    lists = [(s.train_dir, source)]
    if s.val_dir is not None:
        val_source = open_source(s.val_dir, progress, _saved(s), s.val_root)
        if not isinstance(val_source, ListSource):
            raise UsageError(f"with a list file as TRAIN, --val takes a list file too: {s.val_dir} is not one")
        if s.val_labels is not None:
            raise UsageError("--val-labels names the classes of a flat val folder; a --val list gives its labels")
        lists.append((s.val_dir, val_source))
    labels = _list_labels(s, [(where, src.pairs()) for where, src in lists])
    if s.caffe_imageset:
        _check_key_lengths(source.pairs(), s.train_dir)
    if s.strict_list:
        for where, src in lists:
            check_files(src.pairs(), where, src.reader())
    train = _listed_kept(source.pairs(), labels, s, notes)
    if s.val_dir is not None:
        dropped = {label for _, label in source.pairs()} - {label for _, label in train}
        val = [pair for pair in lists[1][1].pairs() if pair[1] not in dropped]
        _note_dropped_val(len(lists[1][1].pairs()) - len(val), notes)
    else:
        train, val = _split_listed(train, s, notes, lambda label: labels[label] if label < len(labels) else str(label))
    splits = [_ordered("train", source, train, s)]
    if val:
        splits.append(_ordered("val", lists[-1][1], val, s))
    return Plan(labels, splits, notes, [src for _, src in lists])


NUMBERED_MAX = 1_000_000  # labels.txt lines that label numbers alone may ask for (ImageNet-21k has 21,841)


def _list_labels(s: Settings, lists: list[tuple[str, Listed]]) -> list[str]:
    """labels.txt: the labels file's names, checked against every listed label, or the numbers themselves
    (none for etl imageset, which writes no labels.txt)."""
    if s.labels is None:
        if s.caffe_imageset:
            return []
        top, where, line = max((label, where, n) for where, listed in lists
                               for (_, label), n in zip(listed, listed.lines, strict=True))
        if top >= NUMBERED_MAX:
            raise UsageError(f"{where} line {line}: label {top} would make labels.txt {top + 1:,d} lines long: number "
                             "the classes from 0, or give --labels naming them")
        return [str(n) for n in range(top + 1)]
    names = read_label_names(s.labels)
    for where, listed in lists:
        check_range(listed, where, len(names), s.labels)
    return names


def _listed_kept(listed: Listed, labels: list[str], s: Settings, notes: list[str]) -> Pairs:
    """--min/--max-per-class on a list: classes dropped keep their number (the others are not renumbered)."""
    kept = _limit_classes(positions_by_label(listed), s, notes,
                          name=lambda label: labels[label] if label < len(labels) else str(label))
    if not kept:
        raise UsageError(f"every class of {s.train_dir} has fewer than --min-per-class {s.min_per_class} images: "
                         "lower --min-per-class")
    return [listed[p] for p in sorted(p for positions in kept.values() for p in positions)]


KEY_MAX = 511  # LMDB's longest key


def _check_key_lengths(listed: Listed, where: str) -> None:
    """convert_imageset's keys hold the path: one longer than LMDB takes would fail the run at its commit."""
    for (path, _), number in zip(listed, listed.lines, strict=True):
        if len(os.fsencode(path)) + 9 > KEY_MAX:
            raise UsageError(f"{where} line {number}: the path is {len(os.fsencode(path))} bytes long, and a key of "
                             f"'%08d_' and the path may be at most {KEY_MAX} bytes in LMDB: shorten it")


def _split_listed(pairs: Pairs, s: Settings, notes: list[str], name: Callable[[int], str]) -> tuple[Pairs, Pairs]:
    """--val-pct of each label held out; both parts keep the list's order."""
    train, val = _split_by_pct(positions_by_label(pairs).items(), s, notes, name)
    return ([pairs[p] for p, _ in sorted(train)], [pairs[p] for p, _ in sorted(val)])


def _note_dropped_val(count: int, notes: list[str]) -> None:
    if count:
        notes.append(f"val: {plural(count, 'image')} of classes dropped from train left out")
