import shutil

import numpy as np
import pytest

from jobs.data.labels import CLASSES, encode_findings
from jobs.data.nih import labelled_splits, read_metadata, read_nih
from jobs.errors import DatasetError
from jobs.store import LocalStore


def test_labels_in_reference_order_and_no_finding_is_zeros():
    assert CLASSES[0] == "Atelectasis" and CLASSES[-1] == "Pneumothorax" and len(CLASSES) == 14
    assert encode_findings("No Finding").sum() == 0
    assert encode_findings("Mass|Effusion").tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    with pytest.raises(DatasetError, match="unknown finding 'Masss'"):
        encode_findings("Masss", "x.csv, line 3")


def test_real_sample_metadata_split_and_missing_images(nih_sample):
    ds = read_nih(LocalStore(nih_sample))
    assert ds.metadata_file == "Data_Entry_2017_v2020.csv"
    assert ds.listed == {"train_val": 86_524, "test": 25_596}
    assert ds.missing == {"train_val": 86_424, "test": 25_566}
    assert ds.missing_total == 111_990
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 100 and len(ds.splits["test"]) == 30
    assert "111,990 of 112,120 listed images are missing" in ds.describe()


def test_validation_is_carved_by_patient_with_the_split_seed(synthetic):
    ds = read_nih(LocalStore(synthetic), val_fraction=0.2, split_seed=1)
    patients = {s: {r.patient for r in ds.splits[s]} for s in ds.splits}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    train_val_patients = len(patients["train"] | patients["val"])
    assert len(patients["val"]) == pytest.approx(0.2 * train_val_patients, abs=1)
    again = read_nih(LocalStore(synthetic), val_fraction=0.2, split_seed=1)
    other = read_nih(LocalStore(synthetic), val_fraction=0.2, split_seed=2)
    assert [r.image for r in again.splits["val"]] == [r.image for r in ds.splits["val"]]
    assert {r.patient for r in other.splits["val"]} != patients["val"]


def test_archive_layout_missing_images_and_rgba(synthetic, tmp_path):
    # images_0NN/images/ as the twelve archives extract, with one archive's worth absent.
    root = tmp_path / "nih"
    shutil.copytree(synthetic, root, ignore=shutil.ignore_patterns("images"))
    names = sorted(p.name for p in (synthetic / "images").iterdir())
    for i, name in enumerate(names[:-10]):
        folder = root / f"images_{1 + i % 3:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic / "images" / name, folder / name)
    ds = read_nih(LocalStore(root))
    assert ds.missing_total == 10
    assert sum(len(v) for v in ds.splits.values()) == len(names) - 10
    assert {r.key.split("/")[0] for r in ds.splits["train"]} == {"images_001", "images_002", "images_003"}


def test_dataset_without_metadata_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv found"):
        read_nih(LocalStore(tmp_path))


def test_empty_split_is_a_clear_error(synthetic, tmp_path):
    root = tmp_path / "nih"
    shutil.copytree(synthetic, root)
    for name in (root / "test_list.txt").read_text().split():
        (root / "images" / name).unlink()
    with pytest.raises(DatasetError, match="the test split has no images present"):
        read_nih(LocalStore(root))


def test_bad_metadata_names_file_and_line(synthetic, tmp_path):
    root = tmp_path / "nih"
    shutil.copytree(synthetic, root)
    csv_path = root / "Data_Entry_2017.csv"
    lines = csv_path.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "Pneumonitis", 1)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"Data_Entry_2017.csv, line 4: unknown finding 'Pneumonitis'"):
        read_nih(LocalStore(root))


def test_synthetic_prevalences_are_realistic(synthetic):
    ds = read_nih(LocalStore(synthetic))
    labels = np.array([r.labels for s in ds.splits.values() for r in s])
    no_finding = (labels.sum(axis=1) == 0).mean()
    assert 0.45 < no_finding < 0.65  # the majority class, as in NIH (53.8%)
    prevalence = labels.mean(axis=0)
    assert prevalence[CLASSES.index("Infiltration")] == prevalence.max()
    assert (labels[:, CLASSES.index("Hernia")].sum()) >= 10  # rare, but floored: 5 per list


def test_the_random_split_of_the_real_metadata_is_by_patient_and_its_fractions_hold(nih_sample):
    """NIH's 112,120 listed images (metadata and lists only), 70/10/20 by patient: no patient in two splits,
    and each split's image count within one patient's images of its fraction."""
    store = LocalStore(nih_sample)
    splits = labelled_splits(
        store, ("train", "val", "test"), split_seed=5, protocol="random", fractions=(0.7, 0.1, 0.2)
    )
    metadata = read_metadata((nih_sample / "Data_Entry_2017_v2020.csv").read_bytes(), "metadata")
    patients = {s: {metadata[n][0] for n in splits[s][0]} for s in splits}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    total = sum(len(names) for names, _ in splits.values())
    assert total == 112_120
    per_patient: dict[int, int] = {}
    for patient, _ in metadata.values():
        per_patient[patient] = per_patient.get(patient, 0) + 1
    largest = max(per_patient.values())  # 184 films of one patient
    for split, fraction in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert abs(len(splits[split][0]) - fraction * total) <= largest, split
    again = labelled_splits(store, ("test",), split_seed=5, protocol="random", fractions=(0.7, 0.1, 0.2))
    assert again["test"][0] == splits["test"][0]  # the split seed fixes it
    other = labelled_splits(store, ("test",), split_seed=6, protocol="random", fractions=(0.7, 0.1, 0.2))
    assert other["test"][0] != splits["test"][0]
    official = labelled_splits(store, ("test",))["test"][0]
    assert len(official) == 25_596 and official != splits["test"][0]


def test_read_nih_splits_the_present_images_by_the_same_random_protocol(synthetic):
    ds = read_nih(LocalStore(synthetic), split_seed=3, protocol="random", fractions=(0.6, 0.2, 0.2))
    expected = labelled_splits(LocalStore(synthetic), ("train", "val", "test"), split_seed=3, protocol="random",
                               fractions=(0.6, 0.2, 0.2))  # fmt: skip
    for split in ("train", "val", "test"):
        assert sorted(r.image for r in ds.splits[split]) == expected[split][0]


def test_lists_that_share_an_image_are_refused(synthetic, tmp_path):
    root = tmp_path / "nih"
    shutil.copytree(synthetic, root)
    test_names = (root / "test_list.txt").read_text().split()
    with open(root / "train_val_list.txt", "a") as fh:
        fh.write(test_names[0] + "\n")
    with pytest.raises(
        DatasetError, match=rf"1 image\(s\) are in both train_val_list.txt and test_list.txt, e.g. {test_names[0]}"
    ):
        read_nih(LocalStore(root))
    with pytest.raises(DatasetError, match="are in both"):
        labelled_splits(LocalStore(root), ("train", "test"))
    assert len(labelled_splits(LocalStore(root), ("test",))["test"][0]) == len(test_names)  # one list read: no clash
