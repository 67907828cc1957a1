"""The real-data presets (configs/paper/*.yaml) on tiny fixture trees laid out like each real
dataset: the preset loads with data.root, its adapter reads the tree, the labels land in the
paper's vocabulary, and the split protocol holds (patient-disjoint, the paper's fractions/folds)."""

from __future__ import annotations

import gzip
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_datasets import _jpg, _png  # the fixture-image helpers of the adapter tests

from lungsearch.data import kfold_records, load_records, load_study, split_records
from lungsearch.errors import ConfigError
from lungsearch.presets import list_presets, load_preset


def _split_holds(records, fractions, seed):
    """Patient-disjoint split; each stratum cut at the fractions (rounded)."""
    parts = split_records(records, tuple(fractions), seed=seed)
    groups = {k: {r.group for r in v} for k, v in parts.items()}
    assert (
        not (groups["train"] & groups["val"])
        and not (groups["train"] & groups["test"])
        and not (groups["val"] & groups["test"])
    )
    assert sum(len(v) for v in parts.values()) == len(records)
    return parts


def test_every_paper_has_one_preset():
    names = list_presets()
    assert names == [
        "paper/1-nlmcxr",
        "paper/2-covid19-radiography",
        "paper/3-ild-ct",
        "paper/4-mimic-cxr",
        "paper/5-chestxray14",
    ]
    papers = sorted(load_preset(n, ["data.root=/"]).cfg.paper for n in names)
    assert papers == [1, 2, 3, 4, 5]


def test_preset_needs_root_and_names_it():
    with pytest.raises(ConfigError, match=r"data.root=<the ChestX-ray14 folder"):
        load_preset("paper/5-chestxray14")
    with pytest.raises(ConfigError, match="did you mean paper/5-chestxray14"):
        load_preset("paper/5-chestxray")
    with pytest.raises(ConfigError, match="preset.weights_dri: unknown key"):
        load_preset("paper/5-chestxray14", ["data.root=/", "preset.weights_dri=/x"])


# ----------------------------------------------------------------- paper 5: ChestX-ray14 (NIH)

NIH14 = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]


def test_chestxray14_preset(tmp_path):
    rows = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    ]
    # 35 patients with one normal image each, 14 patients with one finding each (two images),
    # one multi-label image, one lateral view (left out)
    spec = [(f"{pid:08d}_000.png", "No Finding", pid, "PA") for pid in range(1, 36)]
    for i, lab in enumerate(NIH14):
        pid = 100 + i
        spec += [(f"{pid:08d}_000.png", lab, pid, "PA"), (f"{pid:08d}_001.png", lab, pid, "AP")]
    spec += [
        ("00000200_000.png", "Cardiomegaly|Effusion|Pleural_Thickening", 200, "PA"),
        ("00000201_000.png", "Mass", 201, "LL"),
    ]
    for name, lab, pid, view in spec:
        rows.append(f"{name},{lab},0,{pid},50,M,{view},100,100,0.1,0.1")
        _png(tmp_path / "images_001" / "images" / name)
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows) + "\n")

    preset = load_preset("paper/5-chestxray14", [f"data.root={tmp_path}"])
    cfg = preset.cfg
    assert cfg.profile == "cxr-hash" and cfg.data.source == "nih" and cfg.data.multilabel
    assert cfg.data.targets[0] == "No Finding" and sorted(cfg.data.targets[1:]) == sorted(
        NIH14
    )  # 14 labels + No Finding
    recs = load_records(cfg.data)
    by = {r.case_id: r for r in recs}
    assert len(recs) == 35 + 28 + 1  # the lateral is not a frontal view
    assert by["00000001_000"].labels == ("No Finding",)
    assert set(by["00000200_000"].labels) == {"Cardiomegaly", "Effusion", "Pleural_Thickening"}
    assert {lab for r in recs for lab in r.labels} == {"No Finding", *NIH14}  # each of the 14 kept as itself
    assert by["00000100_000"].group == by["00000100_001"].group
    # query / train / database 1 : 3 : 3 as test / train / val, by patient
    fr = cfg.data.split
    assert (
        fr[2] == pytest.approx(1 / 7, abs=1e-5)
        and fr[0] == pytest.approx(3 / 7, abs=1e-5)
        and fr[1] == pytest.approx(3 / 7, abs=1e-5)
    )
    parts = _split_holds(recs, fr, cfg.data.seed)
    normal_groups = {k: len({r.group for r in v if r.labels == ("No Finding",)}) for k, v in parts.items()}
    assert normal_groups == {"train": 15, "val": 15, "test": 5}
    assert preset.eval_split == "test"


# ----------------------------------------------------------------- paper 2: COVID-19 Radiography

COVID4 = ["COVID", "Lung_Opacity", "Viral_Pneumonia", "Normal"]


def _covid_tree(root: Path, n: int = 10) -> None:
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        for i in range(n):
            _png(root / cls / "images" / f"{cls}-{i + 1}.png")
            _png(root / cls / "masks" / f"{cls}-{i + 1}.png", value=255)  # the dataset's lung masks: not cases


def test_covid19_radiography_preset(tmp_path):
    _covid_tree(tmp_path)
    preset = load_preset("paper/2-covid19-radiography", [f"data.root={tmp_path}"])
    cfg = preset.cfg
    assert cfg.profile == "cxr-cnn" and cfg.data.targets == COVID4 and cfg.data.image_size == 299 and cfg.data.denoise
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.train.optimizer) == (1e-4, 16, 100, "adam")
    recs = load_records(cfg.data)
    assert len(recs) == 40 and Counter(r.labels[0] for r in recs) == {c: 10 for c in COVID4}
    parts = _split_holds(recs, cfg.data.split, cfg.data.seed)
    # stratified 60 / 20 / 20 in every class (the paper's Table 1)
    for k, want in (("train", 6), ("val", 2), ("test", 2)):
        assert Counter(r.labels[0] for r in parts[k]) == {c: want for c in COVID4}
    folds = kfold_records(recs, cfg.data.folds, seed=cfg.data.seed)
    assert cfg.data.folds == 4 and sorted(len(h) for _, h in folds) == [10, 10, 10, 10]
    # Table 3 on the validation split; baselines from scratch without weights_dir, said in the row names
    from lungsearch.training.recipes import variants

    assert preset.eval_split == "val" and preset.baseline_weights == {}
    names = [v.name for v in variants(cfg, preset.baseline_weights)]
    assert names == [
        "LDC-Model (ours)",
        "VGG16 (from scratch)",
        "VGG19 (from scratch)",
        "AlexNet (from scratch)",
        "ResNet50 (from scratch)",
        "MobileNetV2 (from scratch)",
    ]


def test_covid19_radiography_preset_weights_dir(tmp_path):
    _covid_tree(tmp_path / "data", n=1)
    wdir = tmp_path / "torchvision weights"
    wdir.mkdir()
    for f in ("vgg16-397923af.pth", "vgg19-dcbb9e9d.pth", "alexnet-owt-7be5be79.pth", "resnet50-0676ba61.pth"):
        (wdir / f).write_bytes(b"x")
    with pytest.raises(ConfigError, match="mobilenet_v2-b0353104.pth"):  # a named file missing is an error, not scratch
        load_preset("paper/2-covid19-radiography", [f"data.root={tmp_path / 'data'}", f"preset.weights_dir={wdir}"])
    (wdir / "mobilenet_v2-b0353104.pth").write_bytes(b"x")
    preset = load_preset(
        "paper/2-covid19-radiography", [f"data.root={tmp_path / 'data'}", f"preset.weights_dir={wdir}"]
    )
    from lungsearch.training.recipes import variants

    vs = {v.name: v for v in variants(preset.cfg, preset.baseline_weights)}
    assert "VGG16 (ImageNet weights)" in vs and "MobileNetV2 (ImageNet weights)" in vs
    vcfg = preset.cfg.with_overrides(list(vs["VGG16 (ImageNet weights)"].overrides))
    assert vcfg.model.image_encoder.name == "vgg16"
    assert vcfg.model.image_encoder.params["pretrained"] == str(
        wdir / "vgg16-397923af.pth"
    )  # a path with a space survives


# ----------------------------------------------------------------- paper 1: NLMCXR (IU X-ray)


def test_nlmcxr_preset(tmp_path):
    from lungsearch.data.phantoms._reports import iter_report_xml
    from lungsearch.data.phantoms._txv import txv_data_file

    # 40 real report XMLs from the bundled NLMCXR tarball, re-packed as the user's NLMCXR_reports.tgz
    with (
        tarfile.open(txv_data_file("NLMCXR_reports.tgz")) as src,
        tarfile.open(tmp_path / "NLMCXR_reports.tgz", "w:gz") as dst,
    ):
        kept = 0
        for m in src.getmembers():
            if m.isfile() and m.name.endswith(".xml"):
                dst.addfile(m, src.extractfile(m))
                kept += 1
                if kept == 40:
                    break
    for _, _, _, images in iter_report_xml(str(tmp_path / "NLMCXR_reports.tgz")):
        for im in images:
            _png(tmp_path / "images" / f"{im}.png")
    preset = load_preset("paper/1-nlmcxr", [f"data.root={tmp_path}"])
    cfg = preset.cfg
    assert cfg.profile == "cxr-report" and cfg.data.source == "openi" and cfg.model.image_encoder.name == "resnet50"
    recs = load_records(cfg.data)
    assert len(recs) >= 10 and all(r.report for r in recs)
    assert {r.labels[0] for r in recs} <= set(cfg.data.targets) and all(len(r.labels) >= 1 for r in recs)
    assert cfg.data.split == (0.7, 0.1, 0.2)  # 20 % test, as the paper
    parts = _split_holds(recs, cfg.data.split, cfg.data.seed)
    assert parts["test"] and parts["train"]


# ----------------------------------------------------------------- paper 3: ILD CT folders


def test_ild_ct_preset(tmp_path, dicom_factory):
    for c, cls in enumerate(("Normal", "ASS-ILD", "IPF-ILD", "DM_RP-ILD")):  # DM/RP-ILD written as a folder name
        for p in range(5):
            d = tmp_path / cls / f"patient {p}" / "series1"
            d.mkdir(parents=True)
            for z in range(2):
                (d / f"IM{z:04d}").write_bytes(
                    dicom_factory(
                        np.full((8, 8), 1024 + z, np.uint16),
                        position=float(z),
                        instance=z + 1,
                        series_uid=f"1.2.3.{c + 1}.{p + 1}",
                    )
                )
    preset = load_preset("paper/3-ild-ct", [f"data.root={tmp_path}"])
    cfg = preset.cfg
    assert cfg.profile == "ct-ild" and cfg.data.window == "lung" and cfg.data.image_size == 512
    assert cfg.model.loss.name == "contrastive" and cfg.model.loss.params["margin"] == 0.7
    recs = load_records(cfg.data)
    assert Counter(r.labels[0] for r in recs) == {"Normal": 5, "ASS-ILD": 5, "IPF-ILD": 5, "DM-RP-ILD": 5}
    assert all(len(r.image_paths) == 2 and r.modality == "ct" for r in recs)
    # 5-fold by case, 16 : 4 per class over 20 cases per class in the paper: here 4 : 1
    folds = kfold_records(recs, cfg.data.folds, seed=cfg.data.seed)
    assert cfg.data.folds == 5 and len(folds) == 5
    for train, held in folds:
        assert Counter(r.labels[0] for r in held) == {c: 1 for c in ("Normal", "ASS-ILD", "IPF-ILD", "DM-RP-ILD")}
        assert not {r.group for r in train} & {r.group for r in held}
    study = load_study(recs[0], hmac_key=b"k" * 16)
    assert len(study.images) == 2 and study.images[0].meta.hu


# ----------------------------------------------------------------- paper 4: MIMIC-CXR + probes

MIMIC_LABELS = (
    "Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,"
    "No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
)


def _mimic_tree(root: Path, n: int = 20) -> None:
    cols = MIMIC_LABELS.split(",")
    chex = ["subject_id,study_id," + MIMIC_LABELS]
    meta = [
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime"
    ]
    for i in range(n):
        subject, study = 10000000 + i, 50000000 + i
        lab = "No Finding" if i % 2 else "Cardiomegaly"
        chex.append(f"{subject},{study}," + ",".join("1.0" if c == lab else "" for c in cols))
        meta.append(f"d-{i},{subject},{study},CHEST,PA,10,10,21800506,213014")
        _jpg(root / f"files/p{str(subject)[:2]}/p{subject}/s{study}/d-{i}.jpg")
        (root / f"files/p{str(subject)[:2]}/p{subject}/s{study}.txt").write_text(
            "FINAL REPORT\n FINDINGS: "
            f"{'Heart is enlarged.' if lab == 'Cardiomegaly' else 'Lungs are clear.'}\n IMPRESSION: none.\n"
        )
    for name, text in (("mimic-cxr-2.0.0-chexpert.csv.gz", chex), ("mimic-cxr-2.0.0-metadata.csv.gz", meta)):
        with gzip.open(root / name, "wt") as fh:
            fh.write("\n".join(text) + "\n")


def _chexpert_tree(root: Path) -> None:
    header = (
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
        "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,"
        "Pleural Other,Fracture,Support Devices"
    )
    base = root / "CheXpert-v1.0-small"
    rows = [header]
    for i in range(12):
        rel = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
        if i % 3 == 0:
            rows.append(f"{rel},Female,60,Frontal,PA,1.0,,,,,,,,,,,,,")
        elif i % 3 == 1:
            rows.append(f"{rel},Female,60,Frontal,PA,,,,,,1.0,,,,,,,,")  # Edema
        else:
            rows.append(f"{rel},Female,60,Frontal,PA,,,,,,,,,,,1.0,,,")  # Pleural Effusion
        _jpg(base / rel.replace("CheXpert-v1.0-small/", ""))
    rows.append(
        "CheXpert-v1.0-small/train/patient00099/study1/view1_frontal.jpg,Male,40,Frontal,PA,,,,,,,,,,1.0,,,,"
    )  # Pneumothorax only
    _jpg(base / "train/patient00099/study1/view1_frontal.jpg")
    (base / "train.csv").write_text("\n".join(rows) + "\n")


def _rsna_tree(root: Path, dicom_factory) -> None:
    rows = ["patientId,x,y,width,height,Target"]
    for i in range(10):
        pid = f"00{i:02d}c0a6-aaaa-bbbb-cccc-{i:012d}"
        if i % 2:
            rows += [f"{pid},264.0,152.0,213.0,379.0,1", f"{pid},562.0,152.0,256.0,453.0,1"]  # two boxes, one image
        else:
            rows.append(f"{pid},,,,,0")
        d = root / "stage_2_train_images"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{pid}.dcm").write_bytes(dicom_factory(np.full((8, 8), 500 + i, np.uint16), modality="CR"))
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")


def _covidx_tree(root: Path) -> None:
    classes = ["COVID-19", "pneumonia", "normal"]
    for split, n in (("train", 12), ("test", 6)):
        lines = []
        for i in range(n):
            cls = classes[i % 3]
            name = f"{split}-img {i}.png" if i == 0 else f"{split}-img{i}.png"  # one file name with a space
            lines.append(f"p{split}{i // 2} {name} {cls} cohen")
            _png(root / split / name)
        if split == "train":
            lines.append(f"pneg {split}-neg.png negative bimcv")  # a binary-release row: no 3-class target
            _png(root / split / f"{split}-neg.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_mimic_cxr_preset_with_probe_datasets(tmp_path, dicom_factory):
    _mimic_tree(tmp_path / "mimic")
    _chexpert_tree(tmp_path / "chexpert")
    _rsna_tree(tmp_path / "rsna", dicom_factory)
    _covidx_tree(tmp_path / "covidx")
    bare = load_preset("paper/4-mimic-cxr", [f"data.root={tmp_path / 'mimic'}"])
    assert bare.probes == {} and bare.skipped_probes == ["chexpert", "rsna", "covidx"]
    preset = load_preset(
        "paper/4-mimic-cxr",
        [
            f"data.root={tmp_path / 'mimic'}",
            f"preset.probes.chexpert.root={tmp_path / 'chexpert'}",
            f"preset.probes.rsna.root={tmp_path / 'rsna'}",
            f"preset.probes.covidx.root={tmp_path / 'covidx'}",
        ],
    )
    cfg = preset.cfg
    assert (
        cfg.profile == "cxr-clip"
        and cfg.train.stages == ["pretrain", "probe"]
        and cfg.model.image_encoder.name == "vit_b_16"
    )
    recs = load_records(cfg.data)
    assert len(recs) == 20 and all(r.report and r.report.startswith("FINDINGS") for r in recs)
    assert Counter(r.labels[0] for r in recs) == {"Normal": 10, "Cardiomegaly": 10}
    _split_holds(recs, cfg.data.split, cfg.data.seed)

    assert set(preset.probes) == {"chexpert", "rsna", "covidx"}
    for p in preset.probes.values():  # the probes see the images as the pretraining did
        assert p.image_size == cfg.data.image_size and p.phantom is None
    chex = load_records(preset.probes["chexpert"])
    assert Counter(r.labels[0] for r in chex) == {
        "No Finding": 4,
        "Edema": 4,
        "Effusion": 4,
    }  # pneumothorax-only dropped
    by_patient = {r.group: r.labels for r in chex}
    assert by_patient["chexpert-00000"] == ("No Finding",) and by_patient["chexpert-00001"] == ("Edema",)
    assert by_patient["chexpert-00002"] == ("Effusion",)
    rsna = load_records(preset.probes["rsna"])
    assert Counter(r.labels[0] for r in rsna) == {"Pneumonia": 5, "No Pneumonia": 5}  # two boxes = one image
    by_id = {r.case_id: r.labels for r in rsna}
    assert by_id["0001c0a6-aaaa-bbbb-cccc-000000000001"] == ("Pneumonia",)  # Target 1 (boxes)
    assert by_id["0000c0a6-aaaa-bbbb-cccc-000000000000"] == ("No Pneumonia",)  # Target 0
    assert load_study(rsna[0], hmac_key=b"k" * 16).images[0].pixels.shape == (8, 8)
    cx = load_records(preset.probes["covidx"])
    assert len(cx) == 18 and Counter(r.labels[0] for r in cx) == {"COVID-19": 6, "Pneumonia": 6, "Normal": 6}
    assert {r.extra["split"] for r in cx} == {"train", "test"} and any(" " in Path(r.image_paths[0]).name for r in cx)
    by_name = {r.case_id: r.labels for r in cx}
    assert (
        by_name["train-img 0"] == ("COVID-19",)
        and by_name["train-img1"] == ("Pneumonia",)
        and by_name["train-img2"] == ("Normal",)
    )
    for name, recs_p in (("rsna", rsna), ("covidx", cx)):
        parts = _split_holds(recs_p, preset.probes[name].split, 0)
        assert parts["train"] and parts["test"]
    assert preset.probes["rsna"].split == (0.7, 0.15, 0.15)  # the paper's RSNA split
