"""Model registry: trained weights plus a model card, one folder per version.

Layout (a Triton-model-repository / MONAI-bundle style folder per version)::

    <root>/<profile>/<version>/weights.pt        torch state_dict (every fitted part is a buffer)
    <root>/<profile>/<version>/model_card.yaml   config, targets, metrics, provenance
    <root>/<profile>/LIVE                        the live version (else the newest is live)
    <root>/<profile>/STAGED                      the version a re-index is building (ingests go to both)

Versions are ``YYYYMMDD-HHMMSS-<config fingerprint[:6]>`` (UTC), so lexical order is creation
order. A version folder appears atomically: it is written under a hidden temporary name in the
same parent and renamed into place, so a reader never sees half a model. ``LIVE`` is replaced
atomically too, so a serving process switching versions reads either the old or the new name.

Example::

    >>> card = save_model(model, cfg, metrics={"test_accuracy": 0.91},
    ...                   data_fingerprint="3f2a...", synthetic_data=True)
    >>> model, card = load_model("cxr-report")            # the live (else newest) version
    >>> model, card = load_model(f"cxr-report@{card.version}")
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lungsearch import __version__, constants
from lungsearch.config import ProfileConfig
from lungsearch.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:  # torch is heavy; imported lazily by save_model/load_model
    from torch import nn

    from lungsearch.models.base import LungModel

__all__ = [
    "ModelCard",
    "save_model",
    "load_model",
    "list_cards",
    "resolve",
    "set_live",
    "live_version",
    "new_version",
    "parse_ref",
    "code_version",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "LIVE_FILE",
    "STAGED_FILE",
    "POINTER_REFRESH_S",
    "live_written_at",
    "stage",
    "staged_version",
    "unstage",
]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model_card.yaml"
LIVE_FILE = "LIVE"
#: The version a re-index is building (``stage``): ingests are written to it as well as to the live one.
STAGED_FILE = "STAGED"
#: How often a Gateway replica re-reads ``LIVE`` and ``STAGED`` (a stat and a small read per profile).
#: A request that starts this long after a pointer was written sees it on every replica: the
#: writers (``ActivateModel``, ``lungsearch.reindex``) wait it out before they answer.
POINTER_REFRESH_S = 2.0
_CARD_SCHEMA = 1


@dataclass
class ModelCard:
    """What a trained model is, how it was made and how well it did.

    Attributes:
        profile: profile name (``cfg.profile``).
        version: registry version, ``YYYYMMDD-HHMMSS-<cfg fingerprint[:6]>``.
        config: the full profile config the model was built and trained with; ``create_model``
            on it rebuilds the architecture exactly.
        targets: output label order of the classifier columns.
        metrics: evaluation numbers (``test_accuracy``, ``val_map10``, ...), floats.
        data_fingerprint: hash of the training data (case ids + labels), see
            ``lungsearch.training.data_fingerprint``.
        code_version: ``<package version>+<git describe>`` when built from a checkout.
        created_at: ISO-8601 UTC creation time.
        synthetic_data: True when trained on phantoms (every number must say so).
        input_size: image side the model expects.
        embedding_dim: size of the indexed float embedding.
        code_bits: bits of the binary code (0 when the profile does not hash).
        path: the version folder on disk (not stored in the YAML).
        extra: free-form provenance (seed, run name, evaluation report folder, K-fold summary).
    """

    profile: str
    version: str
    config: ProfileConfig
    targets: list[str]
    metrics: dict[str, float]
    data_fingerprint: str
    code_version: str
    created_at: str
    synthetic_data: bool
    input_size: int
    embedding_dim: int
    code_bits: int
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``profile@version``, the string :func:`load_model` takes."""
        return f"{self.profile}@{self.version}"

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    def to_dict(self) -> dict[str, Any]:
        """The YAML document (everything but ``path``)."""
        return {
            "schema": _CARD_SCHEMA,
            "profile": self.profile,
            "version": self.version,
            "created_at": self.created_at,
            "code_version": self.code_version,
            "synthetic_data": self.synthetic_data,
            "data_fingerprint": self.data_fingerprint,
            "config_fingerprint": self.config.fingerprint(),
            "targets": list(self.targets),
            "input_size": self.input_size,
            "embedding_dim": self.embedding_dim,
            "code_bits": self.code_bits,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "extra": _plain(self.extra),
            "config": self.config.model_dump(mode="json"),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], path: Path) -> "ModelCard":
        try:
            cfg = ProfileConfig.model_validate(doc["config"])
            return cls(
                profile=str(doc["profile"]),
                version=str(doc["version"]),
                config=cfg,
                targets=[str(t) for t in doc.get("targets", cfg.data.targets)],
                metrics={str(k): float(v) for k, v in (doc.get("metrics") or {}).items()},
                data_fingerprint=str(doc.get("data_fingerprint", "")),
                code_version=str(doc.get("code_version", "")),
                created_at=str(doc.get("created_at", "")),
                synthetic_data=bool(doc.get("synthetic_data", False)),
                input_size=int(doc.get("input_size", cfg.data.image_size)),
                embedding_dim=int(doc.get("embedding_dim", cfg.model.embedding_dim)),
                code_bits=int(doc.get("code_bits", 0)),
                path=path,
                extra=dict(doc.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise ModelNotFoundError(
                f"model card in {path.name} is unreadable ({type(exc).__name__})", code="corrupt_card"
            ) from None


def _plain(value: Any) -> Any:
    """YAML-safe copy (numpy scalars, tuples and Paths become plain Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        return value.item()
    return value


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<git describe --always --dirty>`` inside a checkout, else the version."""
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{out}" if out else __version__


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else Path(constants.ARTIFACTS_DIR)


def _check_name(kind: str, name: str) -> str:
    # Names become path components: refuse anything that could escape the registry folder.
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"invalid {kind} name {name!r}")
    return name


def _unwrap(model: "nn.Module") -> "nn.Module":
    # DDP (prepare_model) and torch.compile wrap the module; the registry stores the bare one.
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner


def new_version(cfg: ProfileConfig, root: str | Path | None = None) -> str:
    """The version name the next :func:`save_model` of ``cfg`` would get (``YYYYMMDD-HHMMSS-<fp[:6]>``).

    Lets a job name its report folder before the model is registered; pass it as ``version=``."""
    return _new_version(cfg, _root(root) / _check_name("profile", cfg.profile))


def _new_version(cfg: ProfileConfig, parent: Path) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    fp = cfg.fingerprint()[:6]
    # Two saves of one config within a second: step the clock so versions stay unique and ordered.
    while True:
        version = f"{now:%Y%m%d-%H%M%S}-{fp}"
        if not (parent / version).exists():
            return version
        now += _dt.timedelta(seconds=1)


def save_model(
    model: "nn.Module",
    cfg: ProfileConfig,
    *,
    metrics: dict[str, float],
    data_fingerprint: str,
    synthetic_data: bool,
    root: str | Path | None = None,
    version: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelCard:
    """Write ``model``'s weights and its card as a new registry version (atomically).

    Args:
        model: the trained model (a ``LungModel``; DDP/compile wrappers are unwrapped).
        cfg: the profile config it was built with.
        metrics: evaluation numbers to record (converted to float).
        data_fingerprint: hash of the training data.
        synthetic_data: True when trained on phantoms.
        root: registry root; defaults to ``LUNGSEARCH_ARTIFACTS_DIR`` (``artifacts``).
        version: explicit version name; default ``YYYYMMDD-HHMMSS-<fingerprint[:6]>``.
        extra: free-form provenance stored in the card.

    Returns:
        The card of the new version (``card.path`` is its folder).

    Raises:
        ConfigError: the version already exists or a name is not a safe path component.
    """
    import torch

    parent = _root(root) / _check_name("profile", cfg.profile)
    parent.mkdir(parents=True, exist_ok=True)
    version = _check_name("version", version) if version else _new_version(cfg, parent)
    final = parent / version
    if final.exists():
        raise ConfigError(f"model version {cfg.profile}@{version} already exists")
    bare = _unwrap(model)
    card = ModelCard(
        profile=cfg.profile,
        version=version,
        config=cfg,
        targets=list(getattr(bare, "targets", None) or cfg.data.targets),
        metrics={str(k): float(v) for k, v in metrics.items()},
        data_fingerprint=data_fingerprint,
        code_version=code_version(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        synthetic_data=bool(synthetic_data),
        input_size=int(getattr(bare, "input_size", None) or cfg.data.image_size),
        embedding_dim=int(getattr(bare, "embedding_dim", None) or cfg.model.embedding_dim),
        code_bits=int(getattr(bare, "code_bits", None) or (cfg.index.code_bits if cfg.index else 0)),
        path=final,
        extra=dict(extra or {}),
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=parent))
    try:
        state = {k: v.detach().cpu() for k, v in bare.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        (tmp / CARD_FILE).write_text(yaml.safe_dump(card.to_dict(), sort_keys=False, allow_unicode=True))
        for f in (tmp / WEIGHTS_FILE, tmp / CARD_FILE):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; serving may run as another user
        os.rename(tmp, final)  # atomic within one filesystem; fails if `final` appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "registered %s (metrics: %s)", card.ref, ", ".join(f"{k}={v:.4g}" for k, v in sorted(card.metrics.items()))
    )
    return card


def _read_card(path: Path) -> ModelCard:
    try:
        doc = yaml.safe_load((path / CARD_FILE).read_text())
    except OSError:
        raise ModelNotFoundError(f"no model card in version folder {path.name}", code="no_card") from None
    except yaml.YAMLError:
        raise ModelNotFoundError(f"model card in {path.name} is not valid YAML", code="corrupt_card") from None
    if not isinstance(doc, dict):
        raise ModelNotFoundError(f"model card in {path.name} is not a mapping", code="corrupt_card")
    return ModelCard.from_dict(doc, path)


def _versions(parent: Path) -> list[str]:
    if not parent.is_dir():
        return []
    return sorted(
        p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CARD_FILE).is_file()
    )


def list_cards(root: str | Path | None = None, profile: str | None = None) -> list[ModelCard]:
    """Cards of every registered version, ordered by (profile, version); unreadable ones are skipped.

    Args:
        root: registry root (default ``LUNGSEARCH_ARTIFACTS_DIR``).
        profile: only this profile's versions.
    """
    base = _root(root)
    if profile is not None:
        profiles = [_check_name("profile", profile)]
    elif base.is_dir():
        profiles = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        profiles = []
    cards = []
    for prof in profiles:
        for version in _versions(base / prof):
            try:
                cards.append(_read_card(base / prof / version))
            except ModelNotFoundError as exc:
                log.warning("skipping %s/%s: %s", prof, version, exc)
    return cards


def _read_pointer(profile: str, pointer: str, root: str | Path | None) -> tuple[Path, str, bool]:
    """(path, the version a pointer file names or "", whether that version is registered)."""
    path = _root(root) / _check_name("profile", profile) / pointer
    try:
        name = path.read_text().strip()
    except OSError:
        return path, "", False
    return path, name, bool(name) and (path.parent / name / CARD_FILE).is_file()


def live_version(profile: str, root: str | Path | None = None) -> str | None:
    """The version named in ``<profile>/LIVE`` if it exists on disk, else None."""
    path, name, registered = _read_pointer(profile, LIVE_FILE, root)
    if registered:
        return name
    if name:
        log.warning("%s names missing version %s; falling back to the newest", path, name)
    return None


def live_written_at(profile: str, root: str | Path | None = None) -> int:
    """When ``<profile>/LIVE`` was last written (``st_mtime_ns``; 0 when there is none): a cheap
    way for a server to notice another process's switch (``lungsearch.serving.pointers``)."""
    try:
        return (_root(root) / _check_name("profile", profile) / LIVE_FILE).stat().st_mtime_ns
    except OSError:
        return 0


def resolve(profile: str, version: str | None = None, root: str | Path | None = None) -> ModelCard:
    """The card of ``profile@version``.

    Args:
        profile: profile name.
        version: an exact version; ``None`` or ``"live"`` = the LIVE version, else the newest;
            ``"latest"`` = the newest regardless of LIVE.
        root: registry root.

    Raises:
        ModelNotFoundError: no such profile or version (or its card is unreadable).
    """
    base = _root(root)
    parent = base / _check_name("profile", profile)
    if version in (None, "", "live"):
        version = live_version(profile, root=base)
    if version in (None, "", "live", "latest"):
        versions = _versions(parent)
        if not versions:
            raise ModelNotFoundError(f"no trained model for profile {profile!r}", code="no_versions")
        version = versions[-1]
    _check_name("version", version)
    if not (parent / version).is_dir():
        raise ModelNotFoundError(f"model {profile}@{version} is not registered", code="unknown_version")
    return _read_card(parent / version)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"profile"`` or ``"profile@version"`` -> (profile, version or None)."""
    profile, sep, version = ref.partition("@")
    if not profile or (sep and not version):
        raise ModelNotFoundError(f"bad model reference {ref!r}; expected profile or profile@version", code="bad_ref")
    return profile, (version or None)


def load_model(ref: str, *, root: str | Path | None = None, map_location: Any = "cpu") -> tuple["LungModel", ModelCard]:
    """Rebuild a registered model: ``create_model(card.config)`` then ``load_state_dict``.

    Args:
        ref: ``"profile"`` (live, else newest) or ``"profile@version"``.
        root: registry root.
        map_location: passed to ``torch.load``.

    Returns:
        ``(model in eval mode, card)``.

    Raises:
        ModelNotFoundError: unknown profile/version, or weights missing or not matching the config.
    """
    import torch

    from lungsearch.models import create_model

    profile, version = parse_ref(ref)
    card = resolve(profile, version, root=root)
    try:
        state = torch.load(card.weights_path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ModelNotFoundError(f"model {card.ref} has no weights file", code="no_weights") from None
    model = create_model(card.config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelNotFoundError(
            f"weights of {card.ref} do not match its config ({str(exc).splitlines()[0][:200]})", code="weights_mismatch"
        ) from None
    model.eval()
    return model, card


def _write_pointer(path: Path, version: str) -> None:
    """Atomically replace a pointer file (``LIVE``, ``STAGED``) with ``version``: readers see the
    old name or the new one, never a partial write."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_live(profile: str, version: str, root: str | Path | None = None) -> ModelCard:
    """Make ``profile@version`` the live version (atomic replace of ``<profile>/LIVE``).

    Raises:
        ModelNotFoundError: the version is not registered.
    """
    card = resolve(profile, version, root=root)
    _write_pointer(card.path.parent / LIVE_FILE, card.version)
    log.info("live model of %s is now %s", profile, card.version)
    return card


def stage(profile: str, version: str, root: str | Path | None = None) -> ModelCard:
    """Mark ``profile@version`` as the version being re-indexed (``<profile>/STAGED``): while it is
    staged, every gateway writes each ingest into its collection too, so a re-index loses none of the
    cases that arrive during the rebuild (``lungsearch.reindex``).

    Raises:
        ModelNotFoundError: the version is not registered.
    """
    card = resolve(profile, version, root=root)
    _write_pointer(card.path.parent / STAGED_FILE, card.version)
    log.info("staged %s@%s for re-indexing", profile, card.version)
    return card


def staged_version(profile: str, root: str | Path | None = None) -> str | None:
    """The version named in ``<profile>/STAGED`` if it is registered, else None."""
    _, name, registered = _read_pointer(profile, STAGED_FILE, root)
    return name if registered else None


def unstage(profile: str, root: str | Path | None = None) -> None:
    """End a re-index: remove ``<profile>/STAGED`` (a no-op when nothing is staged)."""
    (_root(root) / _check_name("profile", profile) / STAGED_FILE).unlink(missing_ok=True)
