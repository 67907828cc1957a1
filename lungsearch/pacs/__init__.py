"""lungsearch's hospital side: DICOM in (C-STORE SCP, DICOMweb pull), results out (SR + Secondary
Capture by C-STORE or STOW-RS), and the audit log.

It is a client of the platform, like MONAI Deploy's Informatics Gateway: studies reach lungsearch
through the SDK's ``Ingest`` (so the gateway's de-identification and limits apply), and results
are computed through the SDK's ``Search``/``Classify``/``Explain``. Needs the ``pynetdicom``,
``dicomweb-client`` and ``highdicom`` packages (imported lazily by each module). See docs/pacs.md.

Modules: :mod:`~lungsearch.pacs.config` (the receiver's YAML), :mod:`~lungsearch.pacs.scp` (the
receiver), :mod:`~lungsearch.pacs.spool` (crash-safe instance store), :mod:`~lungsearch.pacs.dicomweb`
(QIDO-RS/WADO-RS pull), :mod:`~lungsearch.pacs.stow` (STOW-RS receive),
:mod:`~lungsearch.pacs.results` (SR + SC, send back), :mod:`~lungsearch.pacs.audit`,
:mod:`~lungsearch.pacs.metrics`; ``python -m lungsearch.pacs`` runs the receiver as its own process.
"""

from __future__ import annotations

__all__ = ["ReceiverConfig", "load_receiver_config", "Receiver", "AuditLog", "run_receiver", "start_receiver_process"]

from lungsearch.pacs.audit import AuditLog
from lungsearch.pacs.config import ReceiverConfig, load_receiver_config


def __getattr__(name: str):  # the receiver pulls in pynetdicom: import it only when asked for
    if name == "Receiver":
        from lungsearch.pacs.scp import Receiver

        return Receiver
    if name in ("run_receiver", "start_receiver_process"):
        from lungsearch.pacs import __main__ as entry

        return getattr(entry, name)
    raise AttributeError(name)
