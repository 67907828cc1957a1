"""Dataset adapters on tiny fixture trees that mimic each real layout, the phantom source cache,
and load_study."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lungsearch.config import DataConfig, PhantomConfig
from lungsearch.data import load_records, load_study
from lungsearch.data.datasets import get_adapter, list_adapters, map_labels
from lungsearch.errors import ConfigError, InvalidImageError

CXR = ["Normal", "Opacity", "Cardiomegaly", "Effusion", "Nodule", "Atelectasis"]


def _png(path: Path, value: int = 100, size: int = 16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _jpg(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(path, format="JPEG")


def _cfg(source: str, root: Path, targets=CXR, **kw) -> DataConfig:
    return DataConfig(source=source, root=str(root), targets=list(targets), **kw)


def test_registry_names_match_the_config_sources():
    from typing import get_args

    from lungsearch.config import DataConfig as DC

    sources = set(get_args(DC.model_fields["source"].annotation))
    assert sources == set(list_adapters())
    with pytest.raises(ConfigError, match="did you mean"):
        get_adapter("chexpart")


@pytest.mark.parametrize(
    "raw,want",
    [
        (["No Finding"], ("Normal",)),
        (["Cardiomegaly", "Effusion"], ("Effusion", "Cardiomegaly")),
        (["Lung Opacity", "Mass"], ("Nodule", "Opacity")),
        (["Hernia"], None),
        ([], ("Normal",)),
    ],
)
def test_map_labels(raw, want):
    assert map_labels(raw, CXR) == want


def test_map_labels_other_vocabularies():
    assert map_labels(["Viral Pneumonia"], ["COVID", "Lung_Opacity", "Viral_Pneumonia", "Normal"]) == (
        "Viral_Pneumonia",
    )
    assert map_labels(["lung opacity"], ["COVID", "Lung_Opacity", "Viral_Pneumonia", "Normal"]) == ("Lung_Opacity",)
    assert map_labels(["Hernia"], []) == ("Hernia",)


def test_nih(tmp_path):
    rows = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    ]
    spec = [
        ("00000001_000.png", "Cardiomegaly", 1, "PA"),
        ("00000001_001.png", "Cardiomegaly|Effusion", 1, "PA"),
        ("00000002_000.png", "No Finding", 2, "AP"),
        ("00000003_000.png", "Hernia", 3, "PA"),
        ("00000004_000.png", "Mass", 4, "LL"),
        ("00000005_000.png", "No Finding", 5, "PA"),
    ]
    for name, lab, pid, view in spec:
        rows.append(f"{name},{lab},0,{pid},50,M,{view},100,100,0.1,0.1")
        if pid != 5:  # one listed image missing on disk
            _png(tmp_path / "images_001" / "images" / name)
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows) + "\n")
    recs = load_records(_cfg("nih", tmp_path))
    by = {r.case_id: r for r in recs}
    # Hernia has no target, the lateral view is left out, the missing file is skipped
    assert set(by) == {"00000001_000", "00000001_001", "00000002_000"}
    assert by["00000001_001"].labels == ("Effusion", "Cardiomegaly") and by["00000002_000"].labels == ("Normal",)
    assert by["00000001_000"].group == by["00000001_001"].group == "nih-1" and by["00000002_000"].view == "AP"


def test_chexpert(tmp_path):
    header = (
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
        "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,"
        "Pleural Other,Fracture,Support Devices"
    )
    rows = [
        header,
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,40,Frontal,PA,,,1.0,-1.0,,,,,,,1.0,,,",
        "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Male,40,Lateral,,,,1.0,,,,,,,,,,,",
        "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,40,Frontal,PA,,,,-1.0,,,,,,,,,,",
    ]
    base = tmp_path / "CheXpert-v1.0-small"
    base.mkdir()
    (base / "train.csv").write_text("\n".join(rows) + "\n")
    for r in rows[1:]:
        _jpg(base / r.split(",")[0].replace("CheXpert-v1.0-small/", ""))
    recs = load_records(_cfg("chexpert", tmp_path))
    labels = {r.group: r.labels for r in recs}
    assert labels["chexpert-00001"] == ("Normal",)
    assert labels["chexpert-00002"] == ("Effusion", "Cardiomegaly")  # uncertain opacity (-1) is not positive
    assert labels["chexpert-00003"] == ("Normal",)  # only an uncertain finding: U-zeros
    assert len(recs) == 3 and all(Path(r.image_paths[0]).is_file() for r in recs)


def test_mimic_cxr_with_reports(tmp_path):
    chex = (
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
        "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n"
    )
    chex += "10000032,50414267,,,,,,,,,1.0,,,,,\n10000033,50414268,1.0,,,,,,,,,,,,,\n"
    meta = (
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime\n"
    )
    meta += (
        "aaa-1,10000032,50414267,CHEST,PA,10,10,21800506,213014\n"
        "bbb-2,10000033,50414268,CHEST,AP,10,10,21800507,213014\n"
    )
    for name, text in (("mimic-cxr-2.0.0-chexpert.csv.gz", chex), ("mimic-cxr-2.0.0-metadata.csv.gz", meta)):
        with gzip.open(tmp_path / name, "wt") as fh:
            fh.write(text)
    _jpg(tmp_path / "files/p10/p10000032/s50414267/aaa-1.jpg")
    _jpg(tmp_path / "files/p10/p10000033/s50414268/bbb-2.jpg")
    (tmp_path / "files/p10/p10000032/s50414267.txt").write_text(
        "FINAL REPORT\n EXAMINATION: CHEST\n FINDINGS: Lungs are clear.\n IMPRESSION: No acute process.\n"
    )
    recs = {r.case_id: r for r in load_records(_cfg("mimic-cxr", tmp_path))}
    assert recs["aaa-1"].labels == ("Normal",) and recs["bbb-2"].labels == ("Atelectasis",)
    assert recs["aaa-1"].report == "FINDINGS: Lungs are clear. IMPRESSION: No acute process."
    assert recs["bbb-2"].report is None and recs["aaa-1"].group == "mimic-10000032"


def test_openi_with_report_text(tmp_path):
    from lungsearch.data.phantoms._txv import txv_data_file

    # two real report XMLs from the bundled tarball, re-packed as the user's NLMCXR_reports.tgz
    keep = {"ecgen-radiology/1.xml", "ecgen-radiology/10.xml"}
    with (
        tarfile.open(txv_data_file("NLMCXR_reports.tgz")) as src,
        tarfile.open(tmp_path / "NLMCXR_reports.tgz", "w:gz") as dst,
    ):
        for m in src.getmembers():
            if m.name in keep:
                dst.addfile(m, src.extractfile(m))
    from lungsearch.data.phantoms._reports import iter_report_xml

    items = list(iter_report_xml(str(tmp_path / "NLMCXR_reports.tgz")))
    for _, _, _, images in items:
        for im in images:
            _png(tmp_path / "images" / f"{im}.png")
    recs = load_records(_cfg("openi", tmp_path))
    assert recs and all(r.report and r.report.startswith(("FINDINGS", "IMPRESSION")) for r in recs)
    assert all(r.group.startswith("openi-CXR") and set(r.labels) <= set(CXR) for r in recs)


def test_covid19_radiography_class_folders(tmp_path):
    for cls, n in (("COVID", 2), ("Lung_Opacity", 1), ("Normal", 2), ("Viral Pneumonia", 1)):
        for i in range(n):
            _png(tmp_path / cls / "images" / f"{cls}-{i + 1}.png")
            _png(tmp_path / cls / "masks" / f"{cls}-{i + 1}.png", value=255)  # must be ignored
    targets = ["COVID", "Lung_Opacity", "Viral_Pneumonia", "Normal"]
    recs = load_records(_cfg("covid19-radiography", tmp_path, targets))
    assert len(recs) == 6 and {r.labels[0] for r in recs} == set(targets)
    assert {r.case_id for r in recs} >= {"COVID-1", "Viral Pneumonia-1"}
    assert len({r.group for r in recs}) == 6  # no patient ids: one group per image


def test_ild_ct_and_load_study(tmp_path, dicom_factory):
    # <class>/<patient>/*.dcm, with DICOM files without a suffix too
    for cls, patient, series in (("normal", "Jane Doe", "1.2.3.1"), ("reticular", "John Roe", "1.2.3.2")):
        d = tmp_path / cls / patient
        d.mkdir(parents=True)
        for z in range(3):
            name = f"IM{z:04d}" + (".dcm" if z else "")
            (d / name).write_bytes(
                dicom_factory(
                    np.full((8, 8), 1024 + z, np.uint16), position=float(z), instance=z + 1, series_uid=series
                )
            )
        (d / "notes.txt").write_text("not an image")
    recs = load_records(_cfg("ild-ct", tmp_path, ["normal", "ggo", "reticular", "consolidation"], window="lung"))
    assert sorted(r.labels[0] for r in recs) == ["normal", "reticular"]
    for r in recs:
        assert len(r.image_paths) == 3 and r.modality == "ct"
        assert "Doe" not in r.case_id + r.group and "Roe" not in r.case_id + r.group  # hashed ids
        study = load_study(r, hmac_key=b"k" * 16)
        assert [float(im.pixels[0, 0]) for im in study.images] == [0.0, 1.0, 2.0]
    bad = type(recs[0])(case_id="x", image_paths=(str(tmp_path / "missing.dcm"),), labels=("normal",), group="g")
    with pytest.raises(InvalidImageError) as e:
        load_study(bad)
    assert e.value.code == "missing_file"


def test_folder_groups_by_patient(tmp_path):
    _png(tmp_path / "Normal" / "p1" / "a.png")
    _png(tmp_path / "Normal" / "p1" / "b.png")
    _png(tmp_path / "Effusion" / "c.png")
    recs = load_records(_cfg("folder", tmp_path))
    groups = {Path(r.image_paths[0]).name: r.group for r in recs}
    assert groups["a.png"] == groups["b.png"] != groups["c.png"]


def test_missing_root_and_empty_dataset(tmp_path):
    with pytest.raises(ConfigError):
        load_records(_cfg("folder", tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no usable cases"):
        load_records(_cfg("folder", tmp_path / "empty"))


def test_phantom_source_generates_once_and_caches(tmp_path, monkeypatch):
    cfg = DataConfig(
        source="phantom",
        root=str(tmp_path),
        phantom=PhantomConfig(kind="cxr4", n=6, size=32, seed=2),
        targets=["COVID", "Lung_Opacity", "Viral_Pneumonia", "Normal"],
    )
    recs = load_records(cfg)
    assert len(recs) == 6 and all(r.synthetic for r in recs)
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("cxr4-")
    import lungsearch.data.phantoms as ph

    monkeypatch.setattr(ph, "generate", lambda *a, **k: pytest.fail("regenerated a cached dataset"))
    assert [r.case_id for r in load_records(cfg)] == [r.case_id for r in recs]
    study = load_study(recs[0], hmac_key=b"k" * 16)
    assert study.images[0].pixels.shape == (32, 32) and len(study.study_key) == 32
