"""The built-in phantom source: generated on first use, cached under
``<LUNGSEARCH_DATA_DIR>/phantoms/<kind>-<hash>/`` (or ``<data.root>/<kind>-<hash>/``), where the
hash covers the phantom settings and the generator version, so a changed setting never reuses
stale files. Concurrent first uses (several Ray workers) generate once: a file lock serialises
them and the folder appears atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, map_labels
from lungsearch.data.types import CaseRecord

if TYPE_CHECKING:
    from lungsearch.config import DataConfig, PhantomConfig

__all__ = ["PhantomAdapter", "phantom_dir"]


def phantom_dir(pc: "PhantomConfig", base: str | os.PathLike | None = None) -> Path:
    """Cache folder of a phantom configuration."""
    from lungsearch import constants
    from lungsearch.data.phantoms import GENERATOR_VERSION

    key = {"kind": pc.kind, "n": pc.n, "size": pc.size, "seed": pc.seed, "v": GENERATOR_VERSION}
    if pc.kind == "ct":
        key["slices"] = pc.slices
    if pc.signal != 1.0:  # the default stays out: folders generated before the knob stay valid
        key["signal"] = pc.signal
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(base) if base else Path(constants.DATA_DIR) / "phantoms"
    return root / f"{pc.kind}-{digest}"


class PhantomAdapter(DatasetAdapter):
    name = "phantom"
    description = "built-in synthetic phantoms (cxr + real IU X-ray reports, cxr4, ct DICOM); generated and cached"

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        from lungsearch.data import phantoms

        pc = cfg.phantom
        folder = phantom_dir(pc, cfg.root)
        if not (folder / "manifest.jsonl").exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            with open(folder.parent / f".{folder.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if not (folder / "manifest.jsonl").exists():
                        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
                        shutil.rmtree(tmp, ignore_errors=True)
                        phantoms.generate(
                            pc.kind, pc.n, tmp, seed=pc.seed, size=pc.size, slices=pc.slices, signal=pc.signal
                        )
                        shutil.rmtree(folder, ignore_errors=True)
                        os.replace(tmp, folder)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        records = phantoms.read_manifest(folder)
        if not cfg.targets:
            return records
        out, dropped = [], 0
        for r in records:
            labels = map_labels(r.labels, cfg.targets)
            if labels is None:
                dropped += 1
                continue
            out.append(
                r
                if labels == r.labels
                else CaseRecord(
                    case_id=r.case_id,
                    image_paths=r.image_paths,
                    labels=labels,
                    group=r.group,
                    report=r.report,
                    modality=r.modality,
                    view=r.view,
                    synthetic=r.synthetic,
                    extra=r.extra,
                )
            )
        return self._finish(out, dropped)
