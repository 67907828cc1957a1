"""lungsearch's PS3.15 subset checked against a reference de-identifier, dicognito 0.19.

Every attribute dicognito removes or replaces must be removed or changed by
:func:`lungsearch.data.deid.deidentify` too, or be listed in :data:`ALLOWED` with the reason (SECURITY.md
repeats them). Two inputs: pydicom's own test corpus plus lungsearch's CT phantoms (synthetic), and a
probe dataset holding one element of every dictionary keyword whose VR can carry identity (PN, LO, SH,
LT, ST, UT, DA, DT, TM, UI, AS, AE; sequences with one item), so attributes the corpus happens not to
contain are checked as well.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")
dicognito_anonymizer = pytest.importorskip("dicognito.anonymizer")

from lungsearch.data.deid import deidentify  # noqa: E402

KEY = b"0123456789abcdef-secret"

#: keyword -> (why lungsearch does not do what dicognito does, when it applies).
ALLOWED: dict[str, tuple[str, object]] = {
    "PatientID": (
        "an empty PatientID identifies nobody; lungsearch leaves it empty, dicognito invents one",
        lambda value: not str(value).strip(),
    ),
}


def _leaves(ds, prefix=()):
    for el in ds:
        if el.VR == "SQ" and el.value:
            for i, item in enumerate(el.value):
                yield from _leaves(item, prefix + ((el.tag, i),))
        else:
            yield prefix + ((el.tag, None),), el


def _lookup(ds, path):
    cur = ds
    for tag, i in path[:-1]:
        if tag not in cur or i >= len(cur[tag].value or []):
            return None
        cur = cur[tag].value[i]
    return cur.get(path[-1][0])


def _action(orig, new) -> str:
    if new is None:
        return "removed"
    return "kept" if str(orig.value) == str(new.value) else "replaced"


def _gaps(ds) -> list[tuple[str, str]]:
    """(keyword, what dicognito did) for each element dicognito changes and lungsearch keeps as it was."""
    ref = copy.deepcopy(ds)
    dicognito_anonymizer.Anonymizer(seed="lungsearch-reference").anonymize(ref)
    ours = deidentify(ds, KEY)
    out = []
    for path, el in _leaves(ds):
        if el.tag.is_private:  # lungsearch drops every private tag
            continue
        ref_action = _action(el, _lookup(ref, path))
        if ref_action == "kept" or _action(el, _lookup(ours, path)) != "kept":
            continue
        why = ALLOWED.get(el.keyword)
        if why is not None and why[1](el.value):
            continue
        out.append((el.keyword or str(el.tag), ref_action))
    for el in getattr(ds, "file_meta", []) or []:
        if _action(el, ref.file_meta.get(el.tag)) != "kept" and _action(el, ours.file_meta.get(el.tag)) == "kept":
            out.append(("file_meta." + el.keyword, "replaced"))
    return out


def _corpus(tmp_path_factory) -> list[Path]:
    from lungsearch.data import phantoms

    files = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))
    root = phantoms.generate("ct", 2, tmp_path_factory.mktemp("ct-phantoms"), seed=0, size=32, slices=2, workers=1)
    return files + sorted(Path(root).rglob("*.dcm"))


def test_everything_dicognito_changes_in_the_corpus_lungsearch_handles(tmp_path_factory):
    warnings.simplefilter("ignore")
    files = _corpus(tmp_path_factory)
    assert len(files) >= 60
    gaps, checked, touched = {}, 0, set()
    logging.disable(logging.WARNING)  # pydicom complains about the corpus' deliberately odd files
    try:
        for f in files:
            try:
                ds = pydicom.dcmread(f, force=True)
                list(ds)
            except Exception:  # noqa: BLE001 - truncated/odd corpus files that pydicom itself cannot read
                continue
            checked += 1
            for kw, _action in _gaps(ds):
                gaps.setdefault(kw, set()).add(f.name)
            touched |= {el.keyword for _, el in _leaves(ds)}
    finally:
        logging.disable(logging.NOTSET)
    assert checked >= 60
    assert {"PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate"} <= touched
    assert gaps == {}


def test_every_identity_bearing_dictionary_attribute_dicognito_changes_lungsearch_handles():
    from pydicom.datadict import DicomDictionary
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    values = {
        "PN": "Doe^Jane",
        "LO": "X1234567",
        "SH": "X1234567",
        "LT": "free text",
        "ST": "free text",
        "UT": "free text",
        "DA": "20190412",
        "DT": "20190412101530",
        "TM": "101530",
        "UI": "1.2.826.0.1.3680043.99.7",
        "AS": "045Y",
        "AE": "AETITLE",
    }
    ds = Dataset()
    for tag, (vr, _vm, _name, _retired, keyword) in DicomDictionary.items():
        if not keyword or tag >> 16 == 0x0002 or tag > 0x7FE00000:
            continue
        if vr in values:
            ds.add_new(tag, vr, values[vr])
        elif vr == "SQ":
            item = Dataset()
            item.PatientName, item.CodeValue = "Doe^Jane", "X1"
            ds.add_new(tag, vr, Sequence([item]))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.99.8"
    assert len(ds) > 1000
    assert _gaps(ds) == []
