"""Real radiographs are often MONOCHROME1 (high stored value = dark) with 12-16 stored bits and a VOI
LUT. Whichever way they arrive (pushed to the SCP, through Orthanc, pulled over DICOMweb), the bytes
the platform receives must decode (lungsearch.data.io, unchanged here) with the lungs dark."""

from __future__ import annotations

import _pacs
import numpy as np
import pytest

from lungsearch.client import LungSearchClient
from lungsearch.data.io import read_image
from lungsearch.pacs import dicomweb

SIZE = 64


def _regions() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    lungs = np.zeros((SIZE, SIZE), bool)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2 <= 1  # well inside the drawn lungs
    mediastinum = (np.abs(xx - 0.5) < 0.05) & (np.abs(yy - 0.5) < 0.2)
    return lungs, mediastinum


def _lungs_dark(data: bytes) -> np.ndarray:
    px = read_image(data, fmt="dicom").pixels
    lungs, mid = _regions()
    assert px.shape == (SIZE, SIZE)
    assert px[lungs].mean() + 0.3 < px[mid].mean(), "lungs are not dark: the radiograph decoded inverted"
    return px


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("voi", ["window", "lut", "none"])
def test_monochrome1_decodes_like_monochrome2(bits, voi):
    m1 = _lungs_dark(_pacs.cxr_dicom(photometric="MONOCHROME1", bits=bits, voi=voi))
    m2 = _lungs_dark(_pacs.cxr_dicom(photometric="MONOCHROME2", bits=bits, voi=voi))
    assert np.abs(m1 - m2).max() < 0.05


def test_monochrome1_through_the_scp_through_orthanc_and_over_dicomweb(
    clean_orthanc_for_cxr, make_receiver, fresh_platform
):
    orthanc = clean_orthanc_for_cxr
    r = make_receiver(settle_s=0.3)
    direct = _pacs.cxr_dicom(photometric="MONOCHROME1", bits=12, voi="window", seed=1)
    assert _pacs.scu_store(r.port, [direct]) == [0]
    pushed = _pacs.cxr_dicom(photometric="MONOCHROME1", bits=16, voi="lut", seed=2)
    orthanc.push([orthanc.upload(pushed)["ParentStudy"]])
    _pacs.wait_for(lambda: len(fresh_platform.servicer.store) == 2, 30)
    pulled = _pacs.cxr_dicom(photometric="MONOCHROME1", bits=14, voi="window", seed=3)
    orthanc.upload(pulled)
    with LungSearchClient(fresh_platform.target, timeout=30) as client:
        dicomweb.ingest_study(
            client, orthanc.dicomweb_url, str(_pacs.dataset(pulled).StudyInstanceUID), profiles={"cxr": "cxr-report"}
        )
    stored = [s.images[0] for s in fresh_platform.servicer.store.values()]
    assert len(stored) == 3
    for data in stored:
        ds = _pacs.dataset(data)
        assert ds.PhotometricInterpretation == "MONOCHROME1"  # arrived as sent: nobody re-encoded it
        _lungs_dark(data)


@pytest.fixture
def clean_orthanc_for_cxr(orthanc):
    orthanc.clear()
    return orthanc
