"""Typed profile configuration: one YAML file (``configs/<profile>.yaml``) parsed once into a
frozen :class:`ProfileConfig` that flows to training, evaluation, index building and serving.

Unknown keys and wrong types fail with one line naming the file, the key and the expectation::

    >>> cfg = load_profile("configs/ct-ild.yaml", overrides=["train.epochs=2"])
    >>> cfg.train.epochs
    2

Model parts are chosen by registered name (``model.image_encoder.name``); each registered
part validates its own ``params`` when it is built (see ``lungsearch.models``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lungsearch.errors import ConfigError

__all__ = [
    "Component",
    "DataConfig",
    "DeploymentConfig",
    "IndexConfig",
    "LimitsConfig",
    "ModelConfig",
    "PhantomConfig",
    "ProfileConfig",
    "ServeConfig",
    "TrainConfig",
    "load_profile",
    "list_profiles",
    "CONFIG_DIR",
    "PROFILES",
]

#: Repository folder of the shipped profile YAMLs.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: The five profiles of the architecture, one per seed paper.
PROFILES = ("cxr-report", "cxr-cnn", "ct-ild", "cxr-clip", "cxr-hash")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(_Strict):
    """A registered model part chosen by name, with its own parameters."""

    name: str = Field(description="Registered name, e.g. 'resnet50', 'minilm', 'cma'.")
    params: dict[str, Any] = Field(default_factory=dict, description="Validated by the part itself.")


class PhantomConfig(_Strict):
    """The built-in synthetic dataset (see docs/phantoms.md)."""

    kind: Literal["cxr", "cxr4", "ct"] = Field(
        description=(
            "cxr: CXR + real IU X-ray report; cxr4: 4-class COVID/opacity/viral/normal; ct: ILD CT DICOM series."
        )
    )
    n: int = Field(ge=4, description="Number of cases (studies) to generate.")
    size: int = Field(default=224, ge=32, le=1024, description="Generated image side in pixels.")
    slices: int = Field(default=8, ge=1, le=256, description="CT slices per series (ct only).")
    seed: int = Field(default=0, description="Generator seed; the same seed gives the same files.")
    signal: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description=(
            "Signal strength: how strongly each finding marks the image (1 = the calibrated default; "
            "higher is easier, lower is harder; docs/phantoms.md). The reproduction harness's oracle "
            "and calibration rows use it."
        ),
    )


class DataConfig(_Strict):
    """Where the cases come from and how they are split."""

    source: Literal[
        "phantom",
        "nih",
        "openi",
        "covid19-radiography",
        "chexpert",
        "mimic-cxr",
        "ild-ct",
        "rsna-pneumonia",
        "covidx",
        "folder",
    ] = "phantom"
    root: str | None = Field(
        default=None, description="Dataset root on disk (real datasets); phantoms go under data/phantoms/<kind>."
    )
    phantom: PhantomConfig | None = None
    image_size: int = Field(default=224, ge=32, le=1024, description="Model input side after resize/pad.")
    window: Literal["lung", "mediastinum", "none"] = Field(
        default="none", description="CT HU window applied before the CNN."
    )
    equalize: bool = Field(default=False, description="Histogram equalisation in preprocessing.")
    denoise: bool = Field(default=False, description="3x3 Gaussian denoise (paper 2).")
    augment: bool = Field(default=True, description="Train-time rotation/scale/flip.")
    targets: list[str] = Field(default_factory=list, description="Output label order of the model.")
    multilabel: bool = Field(
        default=False, description="Labels are independent (sigmoid) rather than one class (softmax)."
    )
    split: tuple[float, float, float] = Field(
        default=(0.6, 0.2, 0.2), description="Patient-level train/val/test fractions."
    )
    folds: int = Field(default=1, ge=1, le=20, description="K for K-fold cross-validation (1 = a single split).")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError("split must be three non-negative fractions summing to 1")
        if self.source == "phantom" and self.phantom is None:
            raise ValueError("source 'phantom' needs a 'phantom' section")
        if self.source not in ("phantom",) and not self.root:
            raise ValueError(f"source {self.source!r} needs 'root' (the dataset folder)")
        return self


class ModelConfig(_Strict):
    """Which registered parts make the pipeline. Absent parts are not used by the profile."""

    image_encoder: Component | None = None
    text_encoder: Component | None = None
    radiomics: Component | None = None
    fusion: Component | None = None
    head: Component | None = None
    hashing: Component | None = None
    pretraining: Component | None = None
    loss: Component = Field(description="Training objective, e.g. 'ce', 'bce', 'supcon', 'pairwise_bayes'.")
    embedding_dim: int = Field(default=128, ge=8, le=4096, description="Dimension of the indexed float embedding.")


class TrainConfig(_Strict):
    """Ray Train settings and the optimisation recipe."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    scheduler: Literal["none", "cosine", "step"] = "none"
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers (DDP ranks).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="How the workers are placed over the cluster's nodes (Ray's placement-group strategy).",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    amp: bool = Field(default=True, description="Mixed precision when on GPU (ignored on CPU).")
    early_stopping_patience: int = Field(
        default=0, ge=0, description="Epochs without improvement before stopping (0 = off)."
    )
    monitor: str = Field(default="val_loss", description="Metric for early stopping and best checkpoint.")
    monitor_mode: Literal["min", "max"] = "min"
    storage_path: str = Field(
        default="artifacts/runs", description="Checkpoint root: a local path or an object-store URI."
    )
    stages: list[str] = Field(
        default_factory=list, description="Ordered training stages for two-stage recipes (e.g. ['classifier', 'hash'])."
    )
    torch_threads: int = Field(default=0, ge=0, description="torch intra-op threads per worker (0 = leave as is).")
    seed: int = 0


class IndexConfig(_Strict):
    """How cases are indexed and searched."""

    kind: Literal["float", "hamming", "lsh"] = Field(
        description="float: ANN on embeddings; hamming: learned codes; lsh: random-hyperplane codes over embeddings."
    )
    metric: Literal["COSINE", "IP", "L2"] = "COSINE"
    code_bits: int = Field(default=0, ge=0, le=1024, description="Bits of the binary code (hamming/lsh).")
    candidates: int = Field(default=100, ge=1, description="Hamming candidates re-ranked by cosine.")
    milvus_index: Literal["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"] = "HNSW"
    hnsw_m: int = Field(default=16, ge=4)
    hnsw_ef_construction: int = Field(default=100, ge=8)
    hnsw_ef: int = Field(default=64, ge=8)

    @model_validator(mode="after")
    def _check(self) -> "IndexConfig":
        if self.kind in ("hamming", "lsh") and (self.code_bits <= 0 or self.code_bits % 8):
            raise ValueError(f"index kind {self.kind!r} needs code_bits, a positive multiple of 8")
        return self


class DeploymentConfig(_Strict):
    """One Ray Serve deployment's knobs."""

    num_replicas: int | Literal["auto"] = 1
    max_ongoing_requests: int = Field(default=8, ge=1)
    max_queued_requests: int = Field(
        default=64, ge=-1, description="-1 = unbounded; otherwise extra calls fail fast (RESOURCE_EXHAUSTED)."
    )
    num_cpus: float = Field(
        default=0.25, ge=0, description="Logical CPUs per replica (fractional so the whole graph fits on 2 cores)."
    )
    num_gpus: float = Field(default=0.0, ge=0)
    max_batch_size: int = Field(default=16, ge=1, description="@serve.batch size (encoders).")
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=4.0, gt=0)


class LimitsConfig(_Strict):
    """Request limits enforced by the gateway (Serve's own limit is 2 GB)."""

    max_message_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_image_side: int = Field(default=16384, ge=64)
    max_decoded_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_series_images: int = Field(default=1024, ge=1)
    max_report_chars: int = Field(default=20000, ge=1)
    max_top_k: int = Field(default=200, ge=1)


def _default_deployments() -> dict[str, DeploymentConfig]:
    return {name: DeploymentConfig() for name in ("encoding", "fusion", "hashing", "ranking", "gateway")}


class ServeConfig(_Strict):
    deployments: dict[Literal["encoding", "fusion", "hashing", "ranking", "gateway"], DeploymentConfig] = Field(
        default_factory=_default_deployments
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)


class ProfileConfig(_Strict):
    """One trained pipeline end to end (a row of ARCHITECTURE.md's profile table)."""

    profile: str = Field(description="Profile name; equals the file's stem.")
    description: str = ""
    paper: int = Field(ge=1, le=5, description="Seed paper implemented (shared/papers index).")
    modality: Literal["cxr", "ct"]
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    index: IndexConfig | None = None
    serve: ServeConfig = Field(default_factory=ServeConfig)

    def fingerprint(self) -> str:
        """Short stable hash of what decides the model (provenance of every output file).

        Where it runs is left out: the ``serve`` section (replicas, batch waits, limits) and the
        workers' placement. Changing a replica count must not make ``make demo`` retrain."""
        data = self.model_dump(mode="json", exclude={"serve": True, "train": {"placement_strategy"}})
        phantom = (data.get("data") or {}).get("phantom")
        if phantom and phantom.get("signal") == 1.0:
            del phantom["signal"]  # the default: models registered before the knob keep their fingerprint
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: list[str] | tuple[str, ...], *, source: str = "<overrides>") -> "ProfileConfig":
        """A copy with ``dotted.key=yaml-value`` overrides applied and re-validated."""
        data = self.model_dump(mode="json")
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"{source}: override {item!r}: expected key=value")
            _set_dotted(data, key.strip(), yaml.safe_load(raw), source)
        return _validate(data, source)


def _set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) is None else node[part]
            if not isinstance(node[part], dict):
                raise ConfigError(f"{source}: {key}: {part!r} is not a section")
        node = node[part]
    node[parts[-1]] = value


def _validate(data: Any, source: str) -> ProfileConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ProfileConfig.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in first and first["type"] not in ("missing",):
            got = repr(first["input"])
            msg = f"{msg} (got {got[:60]})"
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        raise ConfigError(f"{source}: {loc}: {msg}{more}") from None


def load_profile(path_or_name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ProfileConfig:
    """Load and validate a profile by file path or by name (``"ct-ild"`` → ``configs/ct-ild.yaml``).

    Args:
        path_or_name: A YAML path, or a profile name looked up in :data:`CONFIG_DIR`.
        overrides: ``dotted.key=value`` strings (values parsed as YAML), applied after the file.

    Raises:
        ConfigError: unreadable file, malformed YAML, unknown key or bad value (one line).
    """
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    cfg = _validate(data, source)
    if overrides:
        cfg = cfg.with_overrides(overrides, source=source)
    return cfg


def list_profiles(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Profile names with a YAML file in ``config_dir``."""
    return sorted(p.stem for p in config_dir.glob("*.yaml"))
