"""The 14 NIH ChestX-ray14 findings, in the order of the reference tables."""

import numpy as np

from jobs.errors import DatasetError

CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NUM_CLASSES = len(CLASSES)
NO_FINDING = "No Finding"
_INDEX = {name: i for i, name in enumerate(CLASSES)}


def encode_findings(findings: str, where: str = "") -> np.ndarray:
    """Turn a ``Finding Labels`` cell (``"Effusion|Mass"``, ``"No Finding"``) into a 0/1 vector of 14."""
    vector = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for name in findings.split("|"):
        name = name.strip()
        if name == NO_FINDING:
            continue
        if name not in _INDEX:
            raise DatasetError(
                f"{where}: unknown finding {name!r} in 'Finding Labels'; "
                f"expected '{NO_FINDING}' or one of: {', '.join(CLASSES)}"
            )
        vector[_INDEX[name]] = 1
    return vector


def decode_findings(vector) -> str:
    """The inverse of :func:`encode_findings`: ``"Effusion|Mass"`` or ``"No Finding"``."""
    names = [CLASSES[i] for i, v in enumerate(vector) if v]
    return "|".join(names) if names else NO_FINDING
