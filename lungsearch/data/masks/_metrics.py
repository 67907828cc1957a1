"""Prometheus counters of the lung-mask outcomes and of the radiomics whole-thorax fallback.

Process-wide counters in ``prometheus_client``'s default registry (the mask runs in library code
that has no deployment's :class:`~lungsearch.serving.metrics.ServingMetrics` at hand), mirrored
into ``ray.util.metrics`` when Ray is initialised so Ray's metrics port carries them (as
``ray_lungsearch_data_*``). Labels are bounded: modality (ct, cxr, mr, other), outcome (ok,
empty, implausible) and reason (one of :data:`~lungsearch.data.masks._checks.REASONS`).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

__all__ = ["LUNG_MASKS", "ROI_FALLBACKS", "count_mask", "count_fallback"]

log = logging.getLogger(__name__)

LUNG_MASKS = Counter(
    "lungsearch_data_lung_masks", "Lung masks computed, by modality and plausibility outcome.", ("modality", "outcome")
)
ROI_FALLBACKS = Counter(
    "lungsearch_data_radiomics_roi_fallbacks",
    "Cases whose radiomics ran on the whole thorax because the lung mask failed its checks.",
    ("modality", "reason"),
)

_MODALITIES = {"ct", "cxr", "mr"}
_ray: dict[str, object] = {}


def _modality(m: str) -> str:
    return m if m in _MODALITIES else "other"


def _ray_counter(name: str, help_: str, keys: tuple[str, ...]):
    if name in _ray:
        return _ray[name]
    try:
        import ray
        from ray.util import metrics as rm
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    try:
        _ray[name] = rm.Counter(name, description=help_, tag_keys=keys)
    except Exception:  # noqa: BLE001 - Ray's exporter is optional
        log.debug("ray metric %s not registered", name, exc_info=True)
        _ray[name] = None
    return _ray[name]


def _inc(counter: Counter, name: str, **labels: str) -> None:
    counter.labels(**labels).inc()
    rc = _ray_counter(name, counter._documentation, tuple(labels))
    if rc is not None:
        try:
            rc.inc(1.0, tags=labels)
        except Exception:  # noqa: BLE001
            log.debug("ray metric %s not recorded", name, exc_info=True)


def count_mask(modality: str, outcome: str) -> None:
    _inc(LUNG_MASKS, "lungsearch_data_lung_masks_total", modality=_modality(modality), outcome=outcome)


def count_fallback(modality: str, reason: str) -> None:
    _inc(ROI_FALLBACKS, "lungsearch_data_radiomics_roi_fallbacks_total", modality=_modality(modality), reason=reason)
