"""Real-data presets: one file per paper and dataset (``configs/paper/<n>-<dataset>.yaml``) holding
the paper's whole run, so that a user with the data runs one command::

    python ray_jobs/reproduce.py --preset paper/5-chestxray14 data.root=/data/chestxray14

A preset file is a profile config (:class:`lungsearch.config.ProfileConfig`: the dataset adapter
as ``data.source``, the label vocabulary as ``data.targets``, the split protocol, the recipe) plus
a ``preset:`` section for what a profile config has no place for (:class:`PresetSection`): the
split the paper reads its table on, local pretrained-weight files, paper 2's baseline weights,
a local BERT folder and paper 4's probe datasets. Overrides are ``KEY=VALUE`` words as for
profiles; ``preset.*`` keys reach the section (``preset.weights_dir=/models/torchvision``,
``preset.probes.chexpert.root=/data/CheXpert-v1.0-small``).

Nothing is downloaded. Weight files are looked up in ``preset.weights_dir`` only when it is set
(a missing file is then an error, not a silent fallback); without it every network starts from
scratch and the tables say so.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lungsearch.config import CONFIG_DIR, DataConfig, ProfileConfig, _set_dotted, _validate
from lungsearch.errors import ConfigError

__all__ = ["PRESET_DIR", "Preset", "PresetSection", "list_presets", "load_preset", "preset_path"]

#: Folder of the shipped presets (``paper/<name>`` resolves here).
PRESET_DIR = CONFIG_DIR / "paper"


class PresetSection(BaseModel):
    """The ``preset:`` section of a preset file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(description="The dataset's name as its publisher gives it.")
    root_hint: str = Field(description="What data.root must point at (shown when it is missing).")
    eval_split: Literal["test", "val"] = Field(
        default="test", description="Split the paper reads its comparison table on."
    )
    weights_dir: str | None = Field(
        default=None, description="Folder of local pretrained state dicts; null = from scratch."
    )
    weights: dict[str, str] = Field(default_factory=dict, description="Dotted config key -> file name in weights_dir.")
    baseline_weights: dict[str, str] = Field(
        default_factory=dict, description="Paper 2: architecture -> file name in weights_dir."
    )
    bert_dir: str | None = Field(
        default=None, description="A local Hugging Face BERT folder (BioClinicalBERT); null = bundled MiniLM."
    )
    probes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Paper 4: probe dataset name -> data fields (source, root, targets, split)."
    )
    notes: list[str] = Field(default_factory=list, description="Where the preset departs from or reads the paper.")


@dataclass(frozen=True)
class Preset:
    """A loaded preset: the validated profile config and what the section resolved to.

    Attributes:
        name: ``paper/<stem>``.
        path: the preset file.
        cfg: the profile config (overrides applied, weight paths filled in).
        section: the ``preset:`` section as written (overrides applied).
        baseline_weights: architecture -> weight file (absolute), empty without ``weights_dir``.
        probes: probe name -> its :class:`DataConfig` (the main data's preprocessing, the probe's
            source, root, targets and split), for the probes whose ``root`` is given.
        skipped_probes: probes without a ``root`` (left out of the run, and said so).
    """

    name: str
    path: Path
    cfg: ProfileConfig
    section: PresetSection
    baseline_weights: dict[str, str] = field(default_factory=dict)
    probes: dict[str, DataConfig] = field(default_factory=dict)
    skipped_probes: list[str] = field(default_factory=list)

    @property
    def eval_split(self) -> str:
        return self.section.eval_split


def list_presets(preset_dir: Path = PRESET_DIR) -> list[str]:
    """Shipped preset names (``paper/<stem>``)."""
    return sorted(f"paper/{p.stem}" for p in preset_dir.glob("*.yaml"))


def preset_path(name_or_path: str | Path, preset_dir: Path = PRESET_DIR) -> Path:
    """The file of a preset named ``paper/<stem>`` (or ``<stem>``), or an explicit YAML path.

    Raises:
        ConfigError: no such preset (the message lists close names).
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    stem = str(name_or_path).removeprefix("paper/").removesuffix(".yaml")
    cand = preset_dir / f"{stem}.yaml"
    if cand.is_file():
        return cand
    known = list_presets(preset_dir)
    close = difflib.get_close_matches(f"paper/{stem}", known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    raise ConfigError(f"unknown preset {name_or_path!r}{hint}")


def _weight_file(name: str, weights_dir: Path, key: str, fname: str) -> str:
    f = (weights_dir / fname).expanduser()
    if not f.is_file():
        raise ConfigError(
            f"preset {name}: {key}: weight file {fname!r} not in preset.weights_dir ({weights_dir}); "
            "put it there, or set preset.weights_dir=null to train from scratch"
        )
    return str(f)


def load_preset(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
    """Load a preset with ``KEY=VALUE`` overrides (``data.root=...`` at least).

    Raises:
        ConfigError: unknown preset, malformed file, an unknown key or a bad value, no
            ``data.root``, or a weight file named by the preset missing from ``weights_dir``.
    """
    path = preset_path(name_or_path)
    name = f"paper/{path.stem}" if path.parent == PRESET_DIR else str(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: cannot read the preset ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("preset"), dict):
        raise ConfigError(f"{source}: a preset needs a 'preset:' section beside the profile config")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r}: expected key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value), source)
    try:
        section = PresetSection.model_validate(raw.pop("preset"))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{source}: preset.{loc}: {msg}") from None
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    if not data.get("root"):
        raise ConfigError(f"preset {name} needs the dataset folder: data.root=<{section.root_hint}>")

    baseline: dict[str, str] = {}
    if section.weights_dir:
        wdir = Path(section.weights_dir).expanduser()
        if not wdir.is_dir():
            raise ConfigError(f"preset {name}: preset.weights_dir is not a folder: {wdir}")
        for key, fname in section.weights.items():
            _set_dotted(raw, key, _weight_file(name, wdir, key, fname), source)
        baseline = {
            arch: _weight_file(name, wdir, f"baseline {arch}", fname)
            for arch, fname in section.baseline_weights.items()
        }
    if section.bert_dir:
        te = (raw.get("model") or {}).get("text_encoder")
        if not isinstance(te, dict):
            raise ConfigError(f"preset {name}: preset.bert_dir is set but the model has no text encoder")
        if not Path(section.bert_dir).expanduser().is_dir():
            raise ConfigError(f"preset {name}: preset.bert_dir is not a folder: {section.bert_dir}")
        raw["model"]["text_encoder"] = {
            "name": "hf_bert",
            "params": {**(te.get("params") or {}), "path": section.bert_dir},
        }
    cfg = _validate(raw, source)

    probes: dict[str, DataConfig] = {}
    skipped: list[str] = []
    for pname, pdata in section.probes.items():
        if not pdata.get("root"):
            skipped.append(pname)
            continue
        # the probe sees the images as the pretraining did (size, window, preprocessing)
        merged = {**cfg.data.model_dump(mode="json"), "phantom": None, "folds": 1, **pdata}
        try:
            probes[pname] = DataConfig.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ConfigError(f"{source}: preset.probes.{pname}.{loc}: {first['msg']}") from None
    return Preset(
        name=name, path=path, cfg=cfg, section=section, baseline_weights=baseline, probes=probes, skipped_probes=skipped
    )
