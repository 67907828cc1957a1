"""CT phantoms for interstitial lung disease, in Hounsfield units, written as real DICOM series.

Anatomy per axial slice (apex to base): body with subcutaneous fat, two lungs whose size follows
the slice level (small at the apex, largest mid-chest, cut by the diaphragm domes at the base),
trachea (upper slices), heart (lower slices), aorta, vertebral body, vessels (brightest near the
hila), and a patient table. Parenchyma is ~ -860 HU.

The four classes of paper 3's task, drawn with a per-case severity:

* ``normal``: parenchyma and vessels only;
* ``ggo``: ground-glass, patchy hazy areas of ~ -550..-400 HU that leave the vessels visible,
  more peripheral and basal;
* ``reticular``: subpleural, basal-predominant reticulation (thin lines) and honeycombing
  (clustered air cysts with walls);
* ``consolidation``: dense (~ -50..40 HU) dependent (posterior) areas with air bronchograms.

Label-independent nuisance: noise level, a faint dependent density band, body size, lung shape.
"""

from __future__ import annotations

import io

import numpy as np
from scipy import ndimage as ndi

__all__ = ["CT_TARGETS", "render_ct", "write_ct_series"]

CT_TARGETS = ("normal", "ggo", "reticular", "consolidation")
FOV_MM = 360.0
SLICE_GAP_MM = 10.0  # paper 3: thin sections reconstructed at 10 mm intervals
SLICE_THICKNESS_MM = 1.25
#: Multiplies each case's disease severity (1 = the default phantoms, 0 = every class looks normal);
#: ``generate(signal=x)`` sets it.
SIGNAL = 1.0


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    s = float(n.std())
    return n / s if s > 0 else n


def _ellipse(yy, xx, cy, cx, ry, rx, wobble=None):
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return r <= (1.0 if wobble is None else 1.0 + wobble)


def render_ct(rng: np.random.Generator, size: int, slices: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One series: (HU int16 [slices, size, size], lung mask bool [slices, size, size]), apex first."""
    if label not in CT_TARGETS:
        raise ValueError(f"unknown CT phantom class {label!r}")
    S = size
    k = S / 128.0
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    cy, cx = S * 0.52, S * 0.5
    b_ry, b_rx = S * rng.uniform(0.28, 0.33), S * rng.uniform(0.40, 0.45)
    severity = float(rng.uniform(0.45, 1.0)) * SIGNAL
    noise_sd = float(rng.uniform(12.0, 35.0))
    shape_wobble = [_noise(rng, (S, S), 6.0 * k) * 0.06 for _ in range(2)]
    # one disease field per case, sampled per slice with a slow drift, so lesions are coherent
    lesion_field = _noise(rng, (S, S), 5.0 * k)
    vol = np.empty((slices, S, S), dtype=np.int16)
    masks = np.zeros((slices, S, S), dtype=bool)
    zs = np.linspace(0.1, 0.9, slices) if slices > 1 else np.array([0.55])
    for si, z in enumerate(zs):
        hu = np.full((S, S), -1000.0, dtype=np.float32)
        body = _ellipse(yy, xx, cy, cx, b_ry, b_rx)
        hu[body] = -100.0  # subcutaneous fat
        inner = _ellipse(yy, xx, cy, cx, b_ry - 4 * k, b_rx - 5 * k)
        hu[inner] = 40.0  # muscle / mediastinum / abdomen
        # table under the patient
        hu[(yy > cy + b_ry + 4 * k) & (yy < cy + b_ry + 6 * k) & (np.abs(xx - cx) < b_rx * 1.1)] = 200.0
        grow = float(np.clip(np.sin(np.pi * (0.12 + 0.85 * z)), 0.45, 1.0))
        lungs = np.zeros((S, S), dtype=bool)
        for j, sgn in enumerate((-1.0, 1.0)):  # image left = patient right
            l_cx = cx + sgn * b_rx * 0.47
            l_cy = cy - b_ry * 0.05
            lungs |= _ellipse(yy, xx, l_cy, l_cx, b_ry * 0.78 * grow, b_rx * 0.36 * grow, shape_wobble[j])
        lungs &= _ellipse(yy, xx, cy, cx, b_ry - 7 * k, b_rx - 8 * k)
        # mediastinum: heart (lower slices, anterior, towards the patient's left), aorta, spine
        if z > 0.45:
            heart = _ellipse(
                yy,
                xx,
                cy - b_ry * 0.25,
                cx + b_rx * 0.12,
                b_ry * 0.42 * min(1.0, (z - 0.35) * 2.5),
                b_rx * 0.3 * min(1.0, (z - 0.35) * 2.5),
            )
            lungs &= ~ndi.binary_dilation(heart, iterations=max(1, int(2 * k)))
            hu[heart] = 40.0
        spine = _ellipse(yy, xx, cy + b_ry * 0.62, cx, b_ry * 0.22, b_rx * 0.12)
        aorta = _ellipse(yy, xx, cy + b_ry * 0.3, cx + b_rx * 0.1, S * 0.045, S * 0.045)
        lungs &= ~ndi.binary_dilation(spine | aorta, iterations=max(1, int(2 * k)))
        # diaphragm domes cut the lung bases from the centre outwards
        if z > 0.75:
            dome = (z - 0.75) / 0.25
            lungs &= ~_ellipse(yy, xx, cy, cx, b_ry * 0.75 * dome, b_rx * 0.5 * dome)
        hu[lungs] = -860.0 + 15.0 * _noise(rng, (S, S), 1.5 * k)[lungs]
        # vessels: blobs, denser near the hila
        n_vessels = int(rng.poisson(40 * grow * k))
        ys, xs = np.nonzero(lungs)
        if ys.size and n_vessels:
            d_hilum = np.abs(xs - cx) / (b_rx * 0.8)
            p = np.exp(-2.0 * d_hilum)
            idx = rng.choice(ys.size, size=n_vessels, p=p / p.sum())
            dots = np.zeros((S, S), dtype=np.float32)
            dots[ys[idx], xs[idx]] = rng.uniform(0.6, 1.0, size=n_vessels)
            vessels = ndi.gaussian_filter(dots, 0.9 * k) * (2 * np.pi * (0.9 * k) ** 2)
            hu += 800.0 * vessels * lungs
        # spine and aorta drawn after the lungs
        hu[spine] = 250.0
        hu[spine ^ ndi.binary_erosion(spine, iterations=max(1, int(1.5 * k)))] = 700.0
        hu[aorta] = 45.0
        if z < 0.35:
            hu[_ellipse(yy, xx, cy - b_ry * 0.15, cx, S * 0.035, S * 0.035)] = -1000.0  # trachea
        field = np.roll(lesion_field, int(si * 2 * k), axis=0)
        hu = _draw_class(rng, hu, lungs, label, severity, z, field, yy, xx, cy, cx, b_ry, k)
        # nuisance: a faint dependent density band in any class
        if rng.random() < 0.4:
            dep = lungs & (yy > cy + b_ry * 0.35)
            hu += rng.uniform(50.0, 150.0) * ndi.gaussian_filter(dep.astype(np.float32), 2.0 * k)
        hu = ndi.gaussian_filter(hu, 0.5 * k) + noise_sd * rng.standard_normal((S, S)).astype(np.float32)
        vol[si] = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
        masks[si] = lungs
    return vol, masks


def _pleural_distance(lungs: np.ndarray) -> np.ndarray:
    return ndi.distance_transform_edt(lungs)


def _draw_class(rng, hu, lungs, label, severity, z, field, yy, xx, cy, cx, b_ry, k) -> np.ndarray:
    S = hu.shape[0]
    if label == "normal" or not lungs.any():
        return hu
    dist = _pleural_distance(lungs)
    basal = 0.4 + 0.6 * z
    if label == "ggo":
        periph = np.clip(1.0 - dist / (14.0 * k), 0.25, 1.0)
        patches = 1.0 / (1.0 + np.exp(-(field - (1.0 - 1.4 * severity * basal)) * 3.0))
        hu += lungs * patches * periph * rng.uniform(280.0, 420.0) * (0.5 + 0.5 * severity)
    elif label == "reticular":
        band = lungs & (dist < 9.0 * k * (0.6 + 0.6 * severity))
        w = band * basal
        net = _noise(rng, (S, S), 1.2 * k)
        lines = (np.abs(net) < 0.25).astype(np.float32)
        hu += 550.0 * lines * w * (0.5 + 0.5 * severity)
        # honeycombing: clusters of air cysts with walls, in the subpleural band
        n_cysts = int(rng.poisson(18 * severity * basal * k))
        ys, xs = np.nonzero(band)
        for _ in range(n_cysts if ys.size else 0):
            i = int(rng.integers(ys.size))
            r = rng.uniform(1.3, 2.8) * k
            d = np.hypot(yy - ys[i], xx - xs[i])
            hu = np.where(lungs & (d < r), -950.0, hu)
            hu = np.where(lungs & (d >= r) & (d < r + 0.9 * k), -250.0, hu)
    elif label == "consolidation":
        posterior = np.clip((yy - (cy - b_ry * 0.1)) / (b_ry * 0.9), 0.0, 1.0)
        region = lungs & ((field * 0.6 + posterior * 2.2 * severity * basal) > 1.25)
        # keep a rim of aerated lung on most of the pleura, as dependent consolidation spares it
        region &= dist > 1.5 * k * rng.uniform(0.5, 1.5)
        dense = rng.uniform(-40.0, 40.0)
        soft = ndi.gaussian_filter(region.astype(np.float32), 0.8 * k)
        hu = hu * (1.0 - soft) + (dense + 10.0 * _noise(rng, (S, S), 1.0 * k)) * soft
        # air bronchograms
        br = (np.abs(_noise(rng, (S, S), 2.5 * k)) < 0.08) & region
        hu[br] = -850.0
    return hu


def write_ct_series(
    out_dir,
    hu: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    sop_uids: list[str],
    size_mm: float = FOV_MM,
    accession: str = "",
    description: str = "lungsearch phantom CT (synthetic)",
) -> list[str]:
    """Write a [S, H, W] HU volume as a CT Image Storage series (one file per slice, apex first).

    Stored values are HU + 1024 (uint16, 12 bits stored) with RescaleIntercept -1024, slope 1.
    Returns the file names written (``slice_000.dcm``, ...).
    """
    from pathlib import Path

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, rows, cols = hu.shape
    spacing = size_mm / cols
    names = []
    frame_uid = UID(series_uid + ".1") if len(series_uid) < 62 else UID(series_uid)
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uids[i])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID("2.25.159270389342466226640262549829926330583")
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.Manufacturer = "lungsearch"
        ds.ManufacturerModelName = "phantom"
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = SLICE_THICKNESS_MM
        ds.KVP = 120
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = UID(study_uid)
        ds.SeriesInstanceUID = UID(series_uid)
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        # apex first: z decreases towards the feet (patient z points to the head)
        z = -SLICE_GAP_MM * i
        ds.ImagePositionPatient = [-size_mm / 2, -size_mm / 2, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [spacing, spacing]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = -500
        ds.WindowWidth = 1500
        ds.BurnedInAnnotation = "NO"
        stored = (hu[i].astype(np.int32) + 1024).clip(0, 4095).astype("<u2")
        ds.PixelData = stored.tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        name = f"slice_{i:03d}.dcm"
        (out / name).write_bytes(buf.getvalue())
        names.append(name)
    return names
