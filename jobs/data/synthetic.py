"""A synthetic dataset in the exact NIH ChestX-ray14 layout, with a signal a CNN can learn.

Each image is a chest-like background (mediastinum, two darker lung fields, low-frequency
fog, grain, a random exposure). Each finding present in the label vector stamps its own
small shape (a disk, a ring, a cross, a grating...) at a random place inside a lung field,
with a random strength. The shape identifies the class; its position does not, so the
task is translation-invariant detection, as on real films. The strength varies from
faint to clear, so no model reaches AUROC 1.0 at once. All 14 shapes are drawn the same
way for every class: the data favours no architecture.

The layout is the one NIH ships: ``Data_Entry_2017.csv`` with the real header, patients
with follow-up studies, ``train_val_list.txt`` / ``test_list.txt`` split by patient, and
8-bit PNGs in ``images/`` (a few of them RGBA, as in the real set).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from jobs.data.labels import CLASSES, NUM_CLASSES, decode_findings
from jobs.errors import CxrStudyError

# Label prevalence of each finding in NIH ChestX-ray14 (fraction of all 112,120 images).
NIH_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.1031,
    "Cardiomegaly": 0.0248,
    "Consolidation": 0.0416,
    "Edema": 0.0205,
    "Effusion": 0.1188,
    "Emphysema": 0.0224,
    "Fibrosis": 0.0150,
    "Hernia": 0.0020,
    "Infiltration": 0.1774,
    "Mass": 0.0516,
    "Nodule": 0.0565,
    "Pleural_Thickening": 0.0302,
    "Pneumonia": 0.0128,
    "Pneumothorax": 0.0473,
}
NO_FINDING_FRACTION = 0.538  # 60,361 of 112,120 images
TEST_PATIENT_FRACTION = 0.25  # the official split holds out about a quarter of the patients
METADATA_HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]
SHAPES = (
    "disk",
    "ring",
    "square",
    "frame",
    "cross",
    "saltire",
    "hbar",
    "vbar",
    "hgrating",
    "vgrating",
    "checker",
    "twin",
    "triangle",
    "diamond",
)


def _shape_mask(shape: str, p: int) -> np.ndarray:
    """A float mask in [0, 1] of side ``p`` for one of the 14 class shapes."""
    yy, xx = np.mgrid[0:p, 0:p].astype(np.float32)
    c = (p - 1) / 2.0
    dy, dx = yy - c, xx - c
    r = np.hypot(dx, dy)
    w = max(2.0, p / 6.0)  # stroke width: survives a 2x downsampling
    half = p / 2.0 - 0.5
    masks = {
        "disk": r <= half * 0.8,
        "ring": (r <= half * 0.9) & (r >= half * 0.9 - w),
        "square": (abs(dx) <= half * 0.7) & (abs(dy) <= half * 0.7),
        "frame": (np.maximum(abs(dx), abs(dy)) <= half * 0.85) & (np.maximum(abs(dx), abs(dy)) >= half * 0.85 - w),
        "cross": (abs(dx) <= w / 2) | (abs(dy) <= w / 2),
        "saltire": (abs(dx - dy) <= w * 0.7) | (abs(dx + dy) <= w * 0.7),
        "hbar": (abs(dy) <= w * 0.75) & (abs(dx) <= half),
        "vbar": (abs(dx) <= w * 0.75) & (abs(dy) <= half),
        "hgrating": (np.floor(yy / w) % 2 == 0),
        "vgrating": (np.floor(xx / w) % 2 == 0),
        "checker": ((np.floor(yy / w) + np.floor(xx / w)) % 2 == 0),
        "twin": (np.hypot(dx - half / 2, dy) <= half / 3) | (np.hypot(dx + half / 2, dy) <= half / 3),
        "triangle": (dy >= -half * 0.8) & (dy <= half * 0.8) & (abs(dx) <= (dy + half * 0.8) * 0.55),
        "diamond": (abs(dx) + abs(dy)) <= half * 0.85,
    }
    return masks[shape].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A chest-like film: bright mediastinum and ribs' fog, two darker lung fields, grain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.55 + 0.25 * np.exp(-((xx - 0.5) ** 2) / 0.02)  # mediastinum
    for cx in (0.3, 0.7):
        cx += rng.normal(0, 0.02)
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1.0
        img = np.where(lung, img - 0.25, img)
    img = cv2.GaussianBlur(img, (0, 0), size / 40)
    fog = cv2.resize(rng.normal(0, 0.05, (6, 6)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return img + fog + rng.normal(0, 0.03, (size, size)).astype(np.float32)


def render_image(labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """An 8-bit grayscale image of side ``size`` carrying the shapes of the findings in ``labels``."""
    img = _background(rng, size)
    p = max(8, int(round(size * 0.14)))
    for k in np.flatnonzero(labels):
        mask = _shape_mask(SHAPES[k], p)
        strength = rng.uniform(0.06, 0.3)  # faint to clear, against grain of 0.03
        cx = rng.choice([0.3, 0.7]) + rng.uniform(-0.08, 0.08)
        cy = rng.uniform(0.3, 0.7)
        x0 = int(np.clip(cx * size - p / 2, 0, size - p))
        y0 = int(np.clip(cy * size - p / 2, 0, size - p))
        img[y0 : y0 + p, x0 : x0 + p] += strength * mask
    gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)  # exposure differs film to film
    return np.clip((img * gain + offset) * 255.0, 0, 255).astype(np.uint8)


def sample_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Label vectors with NIH's prevalences: 'No Finding' the majority, Hernia rare.

    An abnormal image draws each finding with probability prevalence / (1 - no-finding
    fraction), redrawn until it has at least one.
    """
    p = np.array([NIH_PREVALENCE[c] for c in CLASSES]) / (1.0 - NO_FINDING_FRACTION)
    labels = np.zeros((n, NUM_CLASSES), dtype=np.uint8)
    for i in np.flatnonzero(rng.random(n) >= NO_FINDING_FRACTION):
        row = np.zeros(NUM_CLASSES, dtype=bool)
        while not row.any():
            row = rng.random(NUM_CLASSES) < np.minimum(p, 0.95)
        labels[i] = row
    return labels


def _ensure_positives(labels: np.ndarray, rows: np.ndarray, minimum: int, rng: np.random.Generator) -> None:
    """Give every class at least ``minimum`` positives among ``rows`` so each split can be scored."""
    for k in range(NUM_CLASSES):
        short = minimum - int(labels[rows, k].sum())
        if short > 0:
            candidates = rows[labels[rows, k] == 0]
            labels[rng.choice(candidates, size=min(short, len(candidates)), replace=False), k] = 1


def make_synthetic(
    out_dir: str | os.PathLike,
    images: int = 2000,
    size: int = 128,
    seed: int = 0,
    min_positives: int = 5,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a synthetic NIH-format dataset to ``out_dir`` and return its path.

    Args:
        out_dir: folder to create (must be empty or absent).
        images: number of images.
        size: side of each square PNG, in pixels (the "native" resolution that CLAHE sees).
        seed: fixes everything: patients, labels, pixels.
        min_positives: each class gets at least this many positive images in the test list
            and in the train_val list, so that small sets can still be scored on every class.
    """
    out = Path(out_dir)
    if images < 50:
        raise CxrStudyError(f"make-synthetic: --images must be at least 50 (got {images})")
    if size < 32:
        raise CxrStudyError(f"make-synthetic: --size must be at least 32 pixels (got {size})")
    if out.exists() and any(out.iterdir()):
        raise CxrStudyError(f"make-synthetic: {out} is not empty; choose a new folder or remove it")
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    patient_of, follow_up = _patients(rng, images)
    test_patients = rng.random(patient_of[-1] + 1) < TEST_PATIENT_FRACTION
    in_test = test_patients[patient_of]

    labels = sample_labels(rng, images)
    for rows in (np.flatnonzero(in_test), np.flatnonzero(~in_test)):
        _ensure_positives(labels, rows, min_positives, rng)

    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(patient_of, follow_up)]
    _write_metadata(out / "Data_Entry_2017.csv", names, labels, patient_of, follow_up, size, rng)
    for fname, mask in (("train_val_list.txt", ~in_test), ("test_list.txt", in_test)):
        (out / fname).write_text("\n".join(n for n, m in zip(names, mask) if m) + "\n")

    for i, name in enumerate(names):
        gray = render_image(labels[i], rng, size)
        if rng.random() < 0.005:  # NIH has a few RGBA PNGs (519 of 112,120); so do we
            gray = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
        cv2.imwrite(str(out / "images" / name), gray)
        if progress and ((i + 1) % 500 == 0 or i + 1 == images):
            progress(f"make-synthetic: {i + 1}/{images} images")
    return out


def _patients(rng: np.random.Generator, images: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's patient and follow-up number: 1 + geometric studies a patient, about 3.6 as in NIH."""
    patient_of, follow_up = [], []
    patient = 0
    while len(patient_of) < images:
        patient += 1
        for f in range(min(rng.geometric(1 / 3.6), images - len(patient_of))):
            patient_of.append(patient)
            follow_up.append(f)
    return np.array(patient_of), np.array(follow_up)


def _write_metadata(path: Path, names, labels, patient_of, follow_up, size: int, rng: np.random.Generator) -> None:
    """``Data_Entry_2017.csv`` with NIH's header; age, sex and view drawn from ``rng``."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(METADATA_HEADER)
        for i, name in enumerate(names):
            writer.writerow(
                [
                    name,
                    decode_findings(labels[i]),
                    follow_up[i],
                    patient_of[i],
                    int(rng.integers(18, 90)),
                    "MF"[int(rng.integers(2))],
                    ["PA", "AP"][int(rng.random() < 0.4)],
                    size,
                    size,
                    0.143,
                    0.143,
                ]
            )
