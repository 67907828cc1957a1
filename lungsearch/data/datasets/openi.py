"""OpenI / NLMCXR (IU X-ray) through torchxrayvision's ``Openi_Dataset``, with report text.

Layout: the PNG images under ``<root>`` named ``<image id>.png`` (e.g.
``CXR1_1_IM-0001-3001.png``); the reports as ``<root>/NLMCXR_reports.tgz`` (else the copy bundled
with torchxrayvision). Labels are torchxrayvision's (from the reports' MeSH terms) mapped to the
profile's targets; the report text is FINDINGS + IMPRESSION; groups are the report ids. PA views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, find_files, map_labels, require_root
from lungsearch.data.datasets._xrv import first_existing, positive_labels, xrv_datasets
from lungsearch.data.types import CaseRecord

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["OpeniAdapter"]


class OpeniAdapter(DatasetAdapter):
    name = "openi"
    description = (
        "OpenI / NLMCXR (IU X-ray): <root>/**/<image id>.png + NLMCXR_reports.tgz (torchxrayvision Openi_Dataset)"
    )

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        from lungsearch.data.phantoms._reports import iter_report_xml

        root = require_root(cfg, self.name)
        xds = xrv_datasets()
        tgz = first_existing(root, ["NLMCXR_reports.tgz"])
        ds = xds.Openi_Dataset(
            imgpath=str(root), xmlpath=str(tgz) if tgz else xds.USE_INCLUDED_FILE, views=["PA"], unique_patients=False
        )
        texts = {uid: text for uid, text, _, _ in iter_report_xml(str(tgz) if tgz else None)}
        files = {p.stem: p for p in find_files(root, {".png"})}
        records, dropped, missing = [], 0, 0
        for i, (imageid, uid) in enumerate(zip(ds.csv["imageid"], ds.csv["uid"])):
            path = files.get(str(imageid))
            if path is None:
                missing += 1
                continue
            labels = map_labels(positive_labels(ds.pathologies, ds.labels[i]) or ["No Finding"], cfg.targets)
            if labels is None:
                dropped += 1
                continue
            records.append(
                CaseRecord(
                    case_id=str(imageid),
                    image_paths=(str(path),),
                    labels=labels,
                    group=f"openi-{uid}",
                    report=texts.get(str(uid)) or None,
                    modality="cxr",
                    view="PA",
                )
            )
        return self._finish(records, dropped, missing)
