"""The models a deployment serves, loaded from the registry by ``profile`` or ``profile@version``.

Several profiles are served at once; per profile one version is *live* (the registry's LIVE file,
else the newest, or the version pinned in the app args) and others load on demand when a request
names them. The gateway resolves the live version once per request and passes it explicitly to
every stage, so a request never mixes versions while :meth:`ModelSet.activate` switches the live
one (a single dict assignment after the new version is loaded).

Example::

    models = ModelSet(["cxr-hash", "ct-ild@20261124-101500-ab12cd"], root="artifacts")
    models.load()                        # errors are kept per profile for check_health
    served = models.get("cxr-hash", "")  # live version
    served.model, served.card
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lungsearch.errors import InvalidRequestError, LungsearchError, ModelNotFoundError, ModelNotReadyError

__all__ = ["ServedModel", "ModelSet", "parse_profiles", "check_version"]

# Registry versions are generated ("20261124-204151-b5ded8") or chosen by an operator; a request
# naming anything else (path tricks, control characters, a megabyte of text that the file system
# answers with ENAMETOOLONG) is refused before it reaches the registry.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_version(version: str, *, field: str = "model.version") -> str:
    """A request's model version ("" = the live one) or INVALID_ARGUMENT (the value is not echoed).

    Raises:
        InvalidRequestError: not 1-128 letters, digits, '.', '_', '+' or '-' (starting with a
            letter or digit).
    """
    if version and not _VERSION_RE.match(version):
        raise InvalidRequestError(
            "model version must be 1-128 letters, digits, '.', '_', '+' or '-'", code="bad_version", field=field
        )
    return version


log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One loaded version: the card (always) and the torch model (when weights are loaded)."""

    card: Any  # lungsearch.registry.ModelCard
    model: Any = None  # lungsearch.models.LungModel

    @property
    def profile(self) -> str:
        return self.card.profile

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def cfg(self):
        return self.card.config


def parse_profiles(profiles: Sequence[str] | str) -> list[tuple[str, str | None]]:
    """``["cxr-hash", "ct-ild@v1"]`` (or one comma-separated string) -> [(profile, version|None)]."""
    from lungsearch.registry import parse_ref

    if isinstance(profiles, str):
        profiles = [p.strip() for p in profiles.split(",") if p.strip()]
    out = [parse_ref(p) for p in profiles]
    if not out:
        raise ModelNotFoundError("no profile to serve", code="no_profiles")
    names = [p for p, _ in out]
    if len(set(names)) != len(names):
        raise ModelNotFoundError("a profile is listed twice", code="duplicate_profile")
    return out


class ModelSet:
    """Registry-backed models of one deployment.

    Args:
        profiles: what to serve ("profile" = live/newest, "profile@version" = pinned).
        root: registry root (``artifacts``).
        load_weights: False for deployments that need the cards only (gateway, ranking).
        max_versions: loaded versions kept per profile (the live one is never evicted).
        torch_threads: intra-op threads for torch (0 = leave as is).
    """

    def __init__(
        self,
        profiles: Sequence[str] | str,
        *,
        root: str | Path | None = None,
        load_weights: bool = True,
        max_versions: int = 2,
        torch_threads: int = 0,
    ) -> None:
        self.requested = parse_profiles(profiles)
        self.profiles = [p for p, _ in self.requested]
        self.root = Path(root) if root is not None else None
        self.load_weights = load_weights
        self.max_versions = max(1, int(max_versions))
        self.torch_threads = int(torch_threads)
        self.live: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self._loaded: dict[str, OrderedDict[str, ServedModel]] = {p: OrderedDict() for p in self.profiles}
        self._lock = threading.RLock()

    @property
    def default_profile(self) -> str:
        return self.profiles[0]

    def load(self) -> None:
        """Load the live (or pinned) version of every profile; failures are kept in ``errors``."""
        if self.load_weights and self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        for profile, version in self.requested:
            try:
                served = self._load(profile, version)
                self.live[profile] = served.version
                self.errors.pop(profile, None)
            except LungsearchError as exc:
                self.errors[profile] = exc.message
                log.error("cannot load profile %s: %s", profile, exc.message)

    def _load(self, profile: str, version: str | None) -> ServedModel:
        from lungsearch import registry

        with self._lock:
            if version and version in self._loaded[profile]:
                self._loaded[profile].move_to_end(version)
                return self._loaded[profile][version]
            if self.load_weights:
                model, card = registry.load_model(f"{profile}@{version}" if version else profile, root=self.root)
            else:
                card, model = registry.resolve(profile, version, root=self.root), None
            served = ServedModel(card=card, model=model)
            cache = self._loaded[profile]
            cache[card.version] = served
            cache.move_to_end(card.version)
            keep = {self.live.get(profile), card.version}
            while len(cache) > self.max_versions:
                victim = next((v for v in cache if v not in keep), None)
                if victim is None:
                    break
                cache.pop(victim)
            log.info("loaded %s@%s", profile, card.version)
            return served

    def check_profile(self, profile: str) -> str:
        profile = profile or self.default_profile
        if profile not in self._loaded:
            # The requested name is not echoed: callers sometimes paste identifiers into any field.
            raise ModelNotFoundError(
                f"profile is not served here (served: {', '.join(self.profiles)})",
                code="profile_not_served",
                field="model.profile",
            )
        return profile

    def get(self, profile: str, version: str = "") -> ServedModel:
        """The model for a request's ``ModelRef`` (empty profile = the first served, empty version = live).

        Raises:
            InvalidRequestError: a malformed version (:func:`check_version`).
            ModelNotFoundError: a profile not served here, or an unknown version.
            ModelNotReadyError: the profile failed to load (the reason is in the message).
        """
        check_version(version)
        profile = self.check_profile(profile)
        if not version:
            if profile in self.errors:
                raise ModelNotReadyError(
                    f"model for {profile} is not loaded: {self.errors[profile]}", code="load_failed"
                )
            version = self.live.get(profile, "")
            if not version:
                raise ModelNotReadyError(f"model for {profile} is still loading", code="loading")
        with self._lock:
            served = self._loaded[profile].get(version)
        return served if served is not None else self._load(profile, version)

    def activate(self, profile: str, version: str) -> tuple[str, str]:
        """Load ``version`` if needed, then make it live (atomic for readers). Returns (previous, new)."""
        profile = self.check_profile(profile)
        served = self._load(profile, version)
        with self._lock:
            previous = self.live.get(profile, "")
            self.live[profile] = served.version
            self.errors.pop(profile, None)
        return previous, served.version

    def loaded(self) -> list[ServedModel]:
        with self._lock:
            return [m for cache in self._loaded.values() for m in cache.values()]

    def health(self) -> None:
        """Raise ModelNotReadyError naming every profile that failed to load (Serve's check_health)."""
        if self.errors:
            reasons = "; ".join(f"{p}: {m}" for p, m in sorted(self.errors.items()))
            raise ModelNotReadyError(f"models not loaded: {reasons}", code="load_failed")
