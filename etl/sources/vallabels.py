"""Val labels: which class (WNID) each ILSVRC2012 val image belongs to, read from any of the files users hold."""

from __future__ import annotations

import io
import os
import re
import tarfile
import zlib
from dataclasses import dataclass

import numpy as np

from etl.errors import UsageError
from etl.words import cut_at_word

DEVKIT_TAR_GZ = "devkit tar.gz"
DEVKIT_TAR = "devkit tar"
GROUND_TRUTH = "devkit ground truth + meta.mat"
KAGGLE = "Kaggle LOC_val_solution.csv"
VALPREP = "valprep.sh"
CAFFE = "Caffe val.txt"
MAPPING = "name-WNID mapping"
WNID_LINES = "WNID per line"

GROUND_TRUTH_MEMBER = "/data/ILSVRC2012_validation_ground_truth.txt"
META_MEMBER = "/data/meta.mat"
KAGGLE_HEADER = "imageid,predictionstring"
MAX_BYTES = 64 << 20  # the largest of these files (the devkit tar) is under 10 MB: more is some other file
ACCEPTED = ("the devkit ILSVRC2012_devkit_t12.tar.gz, its data/ILSVRC2012_validation_ground_truth.txt with meta.mat "
            "beside it, Kaggle's LOC_val_solution.csv, valprep.sh, Caffe's val.txt ('<image> <index>'), "
            "'<image> <WNID>' lines, or one WNID per line")
WNID = re.compile(r"n\d{8}", re.ASCII)
INTEGER = re.compile(r"-?\d+", re.ASCII)

Lines = list[tuple[int, str]]  # (1-based line number, the line stripped), blank lines left out


@dataclass(frozen=True)
class ValLabels:
    """The labels read from one file: its form, in words, and each image's WNID by the image's stem."""

    form: str
    wnid_of: dict[str, str]


def stem(name: str) -> str:
    """The image's file name without its directory and one extension: the key of ValLabels.wnid_of."""
    return os.path.splitext(os.path.basename(name))[0]


def load_val_labels(path: str, train_classes: list[str]) -> ValLabels:
    """train_classes: the train classes' names in sorted order (Caffe val.txt's index refers to it)."""
    data = _read(path)
    if not data.strip():
        raise _bad(path, "is empty: pass the file that gives each val image's class")
    if data[:2] == b"\x1f\x8b" or data[257:262] == b"ustar":
        gzipped = data[:2] == b"\x1f\x8b"
        form = DEVKIT_TAR_GZ if gzipped else DEVKIT_TAR
        ground_truth, meta = _devkit_members(path, data, "r:gz" if gzipped else "r:")
        wnid_of = _labels_by_id(path, _text_lines(path, ground_truth), _meta_ids(path, meta))
    else:
        lines = _text_lines(path, data)
        form = _detect(path, lines)
        if form == GROUND_TRUTH:
            wnid_of = _labels_by_id(path, lines, _meta_ids(path, _meta_beside(path)))
        else:
            wnid_of = PARSERS[form](path, lines, train_classes)
    if not wnid_of:
        raise _bad(path, f"holds no labels (read as {form}): pass the file that gives each val image's class")
    return ValLabels(form, wnid_of)


def _bad(path: str, what: str) -> UsageError:
    return UsageError(f"val labels file {path} {what}")


def _bad_line(path: str, number: int, line: str, what: str) -> UsageError:
    return UsageError(f"val labels file {path}, line {number} ({cut_at_word(line, 60)!r}): {what}")


def _read(path: str) -> bytes:
    """The file's bytes, or one line that says why they cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_BYTES:
                raise _bad(path, f"is {size / 1e6:,.0f} MB, too big to be one: pass the file that gives each val "
                                 f"image's class ({ACCEPTED})")
            return f.read()
    except IsADirectoryError:
        raise _bad(path, "is a folder: pass the file that gives each val image's class") from None
    except OSError as exc:
        raise UsageError(f"cannot read the val labels file {path}: {exc.strerror or exc}: check the path and that "
                         "it is readable") from None


def _text_lines(path: str, data: bytes) -> Lines:
    """The non-blank lines, numbered; a file that is not UTF-8 text is refused."""
    if data.startswith(b"MATLAB 5.0 MAT-file"):
        raise _bad(path, "is a MAT file: pass ILSVRC2012_validation_ground_truth.txt with this meta.mat beside it, "
                         "or the devkit ILSVRC2012_devkit_t12.tar.gz")
    try:
        text = None if b"\0" in data else data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    if text is None:
        raise _bad(path, f"is not a text file (nor a tar of the devkit): accepted are {ACCEPTED}")
    return [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _detect(path: str, lines: Lines) -> str:
    """The form, from the first line that is not a comment (a comment can open only valprep.sh)."""
    if not lines:
        raise _bad(path, "is empty: pass the file that gives each val image's class")
    first = next(((n, line) for n, line in lines if not line.startswith("#")), None)
    if first is None:
        raise _bad(path, "holds only comments: pass the file that gives each val image's class")
    number, line = first
    tokens = _tokens(line) or [line]
    if line.replace(" ", "").lower() == KAGGLE_HEADER:
        return KAGGLE
    if tokens[0] in ("mkdir", "mv"):
        return VALPREP
    if len(tokens) == 1 and (INTEGER.fullmatch(tokens[0]) or WNID.fullmatch(tokens[0])):
        return GROUND_TRUTH if INTEGER.fullmatch(tokens[0]) else WNID_LINES
    if len(tokens) == 2:
        return CAFFE if INTEGER.fullmatch(tokens[1]) else MAPPING
    raise _bad(path, f"is in no form etl knows (line {number}: {cut_at_word(line, 60)!r}): accepted are {ACCEPTED}")


def _tokens(line: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", line) if t]


class _Labels(dict[str, str]):
    """wnid_of being built: an image given two different classes is refused, the same class twice is not."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.line_of: dict[str, int] = {}

    def add(self, number: int, name: str, wnid: str) -> None:
        key = stem(name)
        if self.get(key, wnid) != wnid:
            raise _bad(self.path, f"gives {key} two classes, {self[key]} (line {self.line_of[key]}) and {wnid} "
                                  f"(line {number}): fix the file")
        self[key] = wnid
        self.line_of.setdefault(key, number)


def _positional(path: str, lines: Lines) -> Lines:
    """Lines of a file whose line i is image i: a blank line before the last would shift every image after it."""
    for i, (number, _) in enumerate(lines, 1):
        if number != i:
            raise _bad(path, f"has a blank line (line {i}) where line i gives val image i's class: remove it")
    return lines


def _val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}"


def _no_comment(path: str, number: int, line: str) -> None:
    if line.startswith("#"):
        raise _bad_line(path, number, line, "comments are allowed only in valprep.sh: remove it")


def _labels_by_id(path: str, lines: Lines, wnid_of_id: dict[int, str]) -> dict[str, str]:
    """The devkit's ground truth: line i is image i's ILSVRC2012_ID, which meta.mat maps to a WNID."""
    labels = _Labels(path)
    for number, line in _positional(path, lines):
        _no_comment(path, number, line)
        if not INTEGER.fullmatch(line):
            raise _bad_line(path, number, line, "expected one ILSVRC2012_ID (an integer) per line")
        if int(line) not in wnid_of_id:
            raise _bad_line(path, number, line, f"ILSVRC2012_ID {int(line)} is not in meta.mat: use the meta.mat "
                                                "of the same devkit")
        labels.add(number, _val_name(number), wnid_of_id[int(line)])
    return dict(labels)


def _devkit_members(path: str, data: bytes, mode: str) -> tuple[bytes, bytes]:
    """The ground truth and meta.mat of a devkit tar (gzipped or not), read in memory."""
    wanted: dict[str, bytes | None] = {GROUND_TRUTH_MEMBER: None, META_MEMBER: None}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
            for member in tar:
                suffix = next((s for s in wanted if ("/" + member.name).endswith(s)), None)
                if suffix and member.isfile() and wanted[suffix] is None:
                    wanted[suffix] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        reason = " ".join(str(exc).split())
        raise _bad(path, f"is not a readable tar ({reason}): pass the devkit ILSVRC2012_devkit_t12.tar.gz as "
                         "downloaded") from None
    missing = [s.lstrip("/") for s, got in wanted.items() if got is None]
    if missing:
        raise _bad(path, f"has no {' nor '.join('*/' + m for m in missing)}: pass the devkit "
                         "ILSVRC2012_devkit_t12.tar.gz, or the ground truth txt with meta.mat beside it")
    return wanted[GROUND_TRUTH_MEMBER] or b"", wanted[META_MEMBER] or b""


def _meta_beside(path: str) -> bytes:
    meta = os.path.join(os.path.dirname(path), "meta.mat")
    if not os.path.isfile(meta):
        raise _bad(path, f"holds ILSVRC2012_IDs, and there is no meta.mat beside it ({meta}) to map them to WNIDs: "
                         "put the devkit's data/meta.mat there, or pass the devkit ILSVRC2012_devkit_t12.tar.gz")
    return _read(meta)


def _meta_ids(path: str, meta: bytes) -> dict[int, str]:
    """meta.mat's synsets: ILSVRC2012_ID -> WNID (the IDs are not the WNIDs' sorted order)."""
    from scipy.io import loadmat  # here: 0.2 s of imports that only a meta.mat needs

    where = f"the meta.mat of {path}"
    try:
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True).get("synsets")
    except Exception as exc:  # scipy raises many kinds on a damaged or foreign file
        raise UsageError(f"{where} is not a readable MAT file ({cut_at_word(str(exc), 80)}): use the devkit's "
                         "meta.mat") from None
    names = getattr(getattr(synsets, "dtype", None), "names", None) or ()
    if "ILSVRC2012_ID" not in names or "WNID" not in names:
        raise UsageError(f"{where} has no synsets struct with ILSVRC2012_ID and WNID: use the devkit's meta.mat")
    try:
        pairs = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in np.atleast_1d(synsets)]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where} has a synset whose ILSVRC2012_ID or WNID is not one value ({exc}): use the "
                         "devkit's meta.mat") from None
    wnid_of_id: dict[int, str] = {}
    for wnid_id, wnid in pairs:  # one ID given two WNIDs: either choice mislabels that class's val images
        if wnid_of_id.setdefault(wnid_id, wnid) != wnid:
            raise UsageError(f"{where} gives ILSVRC2012_ID {wnid_id} two WNIDs, {wnid_of_id[wnid_id]} and {wnid}: "
                             "use the devkit's own meta.mat")
    id_of_wnid: dict[str, int] = {}
    for wnid_id, wnid in pairs:  # one WNID under two IDs: the images of the ID that lost its WNID get its class
        if id_of_wnid.setdefault(wnid, wnid_id) != wnid_id:
            raise UsageError(f"{where} gives {wnid} two ILSVRC2012_IDs, {id_of_wnid[wnid]} and {wnid_id}: use the "
                             "devkit's own meta.mat")
    return wnid_of_id


def _kaggle(path: str, lines: Lines, train_classes: list[str]) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: ImageId,PredictionString; the string's first token is the WNID."""
    labels = _Labels(path)
    for number, line in lines[1:]:
        image, _, boxes = line.partition(",")
        tokens = boxes.split()
        if not image.strip() or not tokens or not WNID.fullmatch(tokens[0]):
            raise _bad_line(path, number, line, "expected 'ImageId,WNID x1 y1 x2 y2 ...'")
        labels.add(number, image.strip(), tokens[0])
    return dict(labels)


def _valprep(path: str, lines: Lines, train_classes: list[str]) -> dict[str, str]:
    """valprep.sh: 'mv <image> <WNID>/' lines give the labels; mkdir lines, comments and a shebang are skipped."""
    labels = _Labels(path)
    for number, line in lines:
        tokens = line.split()
        if line.startswith("#") or tokens[0] == "mkdir":
            continue
        if tokens[0] != "mv" or len(tokens) != 3 or not tokens[2].rstrip("/"):
            raise _bad_line(path, number, line, "expected 'mkdir -p <WNID>' or 'mv <image> <WNID>/'")
        labels.add(number, tokens[1], os.path.basename(tokens[2].rstrip("/")))
    return dict(labels)


def _caffe(path: str, lines: Lines, train_classes: list[str]) -> dict[str, str]:
    """Caffe's val.txt: '<image> <index>', the index into the sorted train classes."""
    labels = _Labels(path)
    for number, line in lines:
        _no_comment(path, number, line)
        tokens = _tokens(line)
        if len(tokens) != 2 or not INTEGER.fullmatch(tokens[1]):
            raise _bad_line(path, number, line, "expected '<image> <class index>' as in Caffe's val.txt")
        index, count = int(tokens[1]), len(train_classes)
        if not 0 <= index < count:
            span = f" (0..{count - 1})" if count else ""
            raise _bad_line(path, number, line, f"class index {index} is outside the {count} train classes{span}: "
                                                "use the val.txt made for these train classes")
        labels.add(number, tokens[0], train_classes[index])
    return dict(labels)


def _mapping(path: str, lines: Lines, train_classes: list[str]) -> dict[str, str]:
    """'<image> <WNID>' per line, with or without the image's extension, whitespace or comma separated."""
    labels = _Labels(path)
    for number, line in lines:
        _no_comment(path, number, line)
        tokens = _tokens(line)
        if len(tokens) != 2:
            raise _bad_line(path, number, line, "expected '<image> <WNID>'")
        labels.add(number, tokens[0], tokens[1])
    return dict(labels)


def _wnid_lines(path: str, lines: Lines, train_classes: list[str]) -> dict[str, str]:
    """One WNID per line (TF-slim's imagenet_2012_validation_synset_labels.txt): line i is image i's."""
    labels = _Labels(path)
    for number, line in _positional(path, lines):
        _no_comment(path, number, line)
        if not WNID.fullmatch(line):
            raise _bad_line(path, number, line, "expected one WNID (like n01440764) per line")
        labels.add(number, _val_name(number), line)
    return dict(labels)


PARSERS = {KAGGLE: _kaggle, VALPREP: _valprep, CAFFE: _caffe, MAPPING: _mapping, WNID_LINES: _wnid_lines}
