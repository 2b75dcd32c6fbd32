"""Read NIH ChestX-ray14 as NIH ships it, from a folder or a bucket.

Expected layout (any store: a local folder or ``s3://bucket/prefix``)::

    Data_Entry_2017.csv or Data_Entry_2017_v2020.csv
    train_val_list.txt, test_list.txt
    images/*.png  or  images_001/images/*.png ... images_012/images/*.png

Two split protocols (:func:`assign_splits`), both by patient (no patient is in two splits) and by a
split seed that is not any training seed, so every run of a study sees the same split:

- ``official``: the test split is ``test_list.txt``; validation is carved from
  ``train_val_list.txt`` by patient id (``val_fraction`` of its patients).
- ``random``: the CheXNet reimplementations' protocol, whose numbers are not comparable with the
  official split's: the patients of both lists, shuffled, fill test, then validation, then train,
  each up to its fraction of the images, so each split's share of the images is its fraction to
  within one patient's images.

Either uses every listed image, present or not, so the split of an image does not change when more
archives are downloaded.

Listed images that are absent are counted and reported (a user often has only some archives).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from jobs.data.labels import NUM_CLASSES, encode_findings
from jobs.errors import ConfigError, DatasetError, StoreError
from jobs.store import Store

METADATA_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
SPLIT_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
SPLITS = ("train", "val", "test")
_IMAGE_KEY = re.compile(r"^(?:images|images_\d{3}/images)/([^/]+\.png)$", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    image: str  # "00000001_000.png"
    key: str  # where it lies in the dataset's store, e.g. "images_001/images/00000001_000.png"
    patient: int
    labels: tuple[int, ...]  # 14 zeros and ones, in CLASSES order


@dataclass
class NihDataset:
    """The images present, by split, and what is missing."""

    source: str
    metadata_file: str
    splits: dict[str, list[Record]]
    listed: dict[str, int]  # images named by each list file
    missing: dict[str, int]  # of those, how many are absent from the store
    unlisted: int  # images present but in neither list (ignored)
    fingerprint: str = field(default="")  # hash of metadata, lists, and the names + sizes of present images

    @property
    def missing_total(self) -> int:
        return sum(self.missing.values())

    def describe(self) -> str:
        counts = ", ".join(f"{s} {len(self.splits[s]):,}" for s in SPLITS)
        text = f"{self.source}: {counts} images"
        if self.missing_total:
            listed = sum(self.listed.values())
            text += (
                f"; {self.missing_total:,} of {listed:,} listed images are missing "
                f"(train_val {self.missing['train_val']:,}, test {self.missing['test']:,})"
            )
        return text


def _read_text(store: Store, name: str) -> bytes:
    try:
        return store.get_bytes(name)
    except StoreError:
        raise DatasetError(
            f"{store.url(name)} not found: a dataset needs NIH's {name} next to Data_Entry_2017.csv"
        ) from None


def find_metadata(store: Store) -> str:
    for name in METADATA_FILES:
        if store.exists(name):
            return name
    raise DatasetError(
        f"{store.uri}: no {' or '.join(METADATA_FILES)} found; point --dataset at the folder (or s3:// prefix) "
        "that holds NIH's metadata CSV, the two split lists and the images/ folders"
    )


def read_metadata(data: bytes, where: str) -> dict[str, tuple[int, np.ndarray]]:
    """``{image name: (patient id, 14-vector)}`` from a Data_Entry CSV."""
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {', '.join(map(repr, missing))}; is this NIH's Data_Entry CSV?")
    rows: dict[str, tuple[int, np.ndarray]] = {}
    for line, row in enumerate(reader, start=2):
        try:
            patient = int(row["Patient ID"])
        except (TypeError, ValueError):
            raise DatasetError(f"{where}, line {line}: 'Patient ID' is {row['Patient ID']!r}, not a number") from None
        rows[row["Image Index"]] = (patient, encode_findings(row["Finding Labels"] or "", f"{where}, line {line}"))
    if not rows:
        raise DatasetError(f"{where}: the metadata file has no rows")
    return rows


def carve_validation(patients: np.ndarray, fraction: float, split_seed: int) -> set[int]:
    """The patient ids that form the validation split: ``fraction`` of the patients, by seed."""
    unique = np.unique(patients)
    n_val = int(round(fraction * len(unique)))
    rng = np.random.default_rng(split_seed)
    return set(unique[rng.permutation(len(unique))[:n_val]].tolist())


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1 (got {val_fraction})")


def read_split_list(store: Store, list_name: str, metadata: dict, metadata_file: str) -> tuple[list[str], bytes]:
    """The image names of ``train_val`` or ``test`` (``train_val_list.txt`` / ``test_list.txt``), and the
    file's bytes; every name must be in the metadata."""
    name = SPLIT_FILES[list_name]
    data = _read_text(store, name)
    names = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    unknown = [n for n in names if n not in metadata]
    if unknown:
        raise DatasetError(
            f"{store.url(name)}: {len(unknown):,} image(s) are not in {metadata_file}, e.g. {unknown[0]}; "
            "the split lists and the metadata file must come from the same NIH release"
        )
    return names, data


def split_of(list_name: str, patient: int, val_patients: set[int]) -> str:
    """``test`` for the test list; ``val`` or ``train`` for train_val, by the patient's carving."""
    return "test" if list_name == "test" else ("val" if patient in val_patients else "train")


PROTOCOLS = ("official", "random")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test of a random split


def random_split(patients: np.ndarray, fractions: tuple[float, float, float], split_seed: int) -> dict[int, str]:
    """Each patient's split in a patient-wise random split of images ``patients`` (one entry per image):
    the patients, shuffled by ``split_seed``, fill test, then val, then train, a patient going to the
    split its first image would fall in, so each split's image count is within one patient's images
    of its fraction."""
    unique, counts = np.unique(patients, return_counts=True)
    order = np.random.default_rng(split_seed).permutation(len(unique))
    start = np.cumsum(counts[order]) - counts[order]  # images before each patient, in shuffled order
    n = counts.sum()
    _, val, test = fractions
    split = np.where(start < test * n, "test", np.where(start < (test + val) * n, "val", "train"))
    return dict(zip(unique[order].tolist(), split.tolist()))


def check_disjoint(lists: dict[str, list[str]], where: str) -> None:
    """No image in both split lists: it would be trained on and tested on."""
    if "train_val" in lists and "test" in lists:
        shared = set(lists["train_val"]) & set(lists["test"])
        if shared:
            raise DatasetError(
                f"{where}: {len(shared):,} image(s) are in both train_val_list.txt and test_list.txt, e.g. "
                f"{min(shared)}; an image belongs to one list (NIH's lists are disjoint)"
            )


def assign_splits(
    metadata: dict,
    lists: dict[str, list[str]],
    val_fraction: float,
    split_seed: int,
    protocol: str = "official",
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> dict[str, str]:
    """Each listed image's split (``train``, ``val`` or ``test``) under ``protocol``."""
    if protocol == "official":
        val_patients = carve_validation(
            np.array([metadata[n][0] for n in lists["train_val"]]), val_fraction, split_seed
        )
        return {
            n: split_of(list_name, metadata[n][0], val_patients) for list_name, names in lists.items() for n in names
        }
    if protocol != "random":
        raise ConfigError(f"unknown split protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    names = list(dict.fromkeys(n for listed in lists.values() for n in listed))
    of_patient = random_split(np.array([metadata[n][0] for n in names]), fractions, split_seed)
    return {n: of_patient[metadata[n][0]] for n in names}


def read_nih(
    store: Store,
    val_fraction: float = 0.1,
    split_seed: int = 20171,
    log: Callable[[str], None] | None = None,
    *,
    protocol: str = "official",
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> NihDataset:
    """Read metadata, split lists and the image index of an NIH-layout dataset, split by ``protocol``."""
    _check_val_fraction(val_fraction)
    metadata_file = find_metadata(store)
    metadata_bytes = _read_text(store, metadata_file)
    metadata = read_metadata(metadata_bytes, store.url(metadata_file))
    digest = hashlib.sha256(metadata_bytes)

    lists: dict[str, list[str]] = {}
    for list_name in SPLIT_FILES:
        lists[list_name], data = read_split_list(store, list_name, metadata, metadata_file)
        digest.update(data)

    present: dict[str, str] = {}
    for obj in store.list("images"):
        m = _IMAGE_KEY.match(obj.key)
        if m:
            present.setdefault(m.group(1), obj.key)
            digest.update(f"{obj.key}\0{obj.size}\n".encode())
    if log:
        log(f"dataset: {len(present):,} images found under {store.uri}")

    check_disjoint(lists, store.uri)
    split_of_image = assign_splits(metadata, lists, val_fraction, split_seed, protocol, fractions)
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    missing = {"train_val": 0, "test": 0}
    for list_name, names in lists.items():
        for name in names:
            if name not in present:
                missing[list_name] += 1
                continue
            patient, labels = metadata[name]
            splits[split_of_image[name]].append(Record(name, present[name], patient, tuple(int(v) for v in labels)))
    listed_names = set(lists["train_val"]) | set(lists["test"])
    dataset = NihDataset(
        source=store.uri,
        metadata_file=metadata_file,
        splits=splits,
        listed={k: len(v) for k, v in lists.items()},
        missing=missing,
        unlisted=sum(1 for n in present if n not in listed_names),
        fingerprint=digest.hexdigest(),
    )
    for split in SPLITS:
        if not splits[split]:
            raise DatasetError(
                f"{store.uri}: the {split} split has no images present ({dataset.describe()}); "
                "download more of the images_0NN archives, or give that split a larger share (val_fraction, or "
                "split_fractions with split: random) for a tiny dataset"
            )
    return dataset


def labelled_splits(
    store: Store,
    wanted: Iterable[str],
    val_fraction: float = 0.1,
    split_seed: int = 20171,
    *,
    protocol: str = "official",
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Names (sorted) and (n, 14) uint8 labels of each wanted split, from the metadata CSV and the two
    lists alone (no image is listed): the splits :func:`read_nih` gives when every image is present."""
    wanted = tuple(wanted)
    for split in wanted:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    _check_val_fraction(val_fraction)
    metadata_file = find_metadata(store)
    metadata = read_metadata(store.get_bytes(metadata_file), store.url(metadata_file))
    names: dict[str, list[str]] = {s: [] for s in SPLITS}
    if protocol == "official":  # a split's images come from one list: read only what is needed
        needed = sorted({"test" if s == "test" else "train_val" for s in wanted})
    else:
        needed = list(SPLIT_FILES)
    lists = {name: read_split_list(store, name, metadata, metadata_file)[0] for name in needed}
    check_disjoint(lists, store.uri)
    if protocol == "official" and "train_val" not in lists:
        lists["train_val"] = []  # the test split needs no carving
    for n, split in assign_splits(metadata, lists, val_fraction, split_seed, protocol, fractions).items():
        names[split].append(n)
    out = {}
    for split in wanted:
        ordered = sorted(dict.fromkeys(names[split]))
        labels = np.array([metadata[n][1] for n in ordered], dtype=np.uint8).reshape(len(ordered), NUM_CLASSES)
        out[split] = (ordered, labels)
    return out


def split_labels(
    store: Store, split: str, val_fraction: float = 0.1, split_seed: int = 20171
) -> tuple[list[str], np.ndarray]:
    """The image names (sorted) and (n, 14) uint8 labels of one split, without listing any image.

    Args:
        store: the dataset (NIH layout: metadata CSV, ``train_val_list.txt``, ``test_list.txt``).
        split: ``test`` (every image of ``test_list.txt``), ``val`` or ``train`` (the images of
            ``train_val_list.txt`` whose patient is, or is not, among the validation patients).
        val_fraction, split_seed: the validation carving, as in :func:`read_nih`.
    """
    names, labels = labelled_splits(store, (split,), val_fraction, split_seed)[split]
    require_images(store, split, names)
    return names, labels


def require_images(store: Store, split: str, names: list[str]) -> None:
    if not names:
        raise DatasetError(
            f"{store.uri}: the {split} split has no images; give it a larger share (val_fraction) for a tiny dataset"
        )
