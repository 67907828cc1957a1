"""Name -> builder registries for every model part (open_clip/timm style).

A profile YAML names its parts (``model.image_encoder.name: resnet18``); :func:`create_model`
looks each name up in the registry of its kind. A new method is one registered builder::

    >>> from lungsearch.models.registry import HEADS
    >>> @HEADS.register("my_head")
    ... def _build(params, ctx):
    ...     return MyHead(ctx.fused_dim, ctx.num_classes, **params)

Builders take ``(params: dict, ctx: BuildContext)`` and validate their own params with
:func:`take_params` (unknown keys fail with close matches, like every unknown name).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from lungsearch.errors import ConfigError

__all__ = [
    "Registry",
    "BuildContext",
    "take_params",
    "IMAGE_ENCODERS",
    "TEXT_ENCODERS",
    "RADIOMICS",
    "FUSIONS",
    "HEADS",
    "HASHING",
    "PRETRAINING",
    "LOSSES",
    "REGISTRIES",
]


@dataclass
class BuildContext:
    """What a builder may need to know about the rest of the model.

    Attributes:
        input_size: image side the model expects.
        num_classes: classifier outputs (``len(cfg.data.targets)``).
        multilabel: labels are independent (sigmoid) rather than one class.
        embedding_dim: dimension of the indexed embedding.
        modality: ``"cxr"`` or ``"ct"``.
        dims: output dimensions of the parts built so far (``image``, ``text``, ``radiomics``,
            ``fused``, ``sequence``, ``hidden``).
    """

    input_size: int = 224
    num_classes: int = 2
    multilabel: bool = False
    embedding_dim: int = 128
    modality: str = "cxr"
    dims: dict[str, int] = field(default_factory=dict)


class Registry:
    """A named collection of builders for one kind of part."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``fn`` under ``name`` (a duplicate name is a programming error)."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        """The builder for ``name``; unknown names raise ConfigError listing close matches."""
        try:
            return self._builders[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._builders), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(self._builders))}"
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}") from None

    def build(self, name: str, params: dict[str, Any], ctx: BuildContext) -> Any:
        return self.get(name)(dict(params), ctx)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders


def take_params(kind: str, params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``params``; unknown keys raise ConfigError with close matches."""
    unknown = [k for k in params if k not in defaults]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(close)}?" if close else f"; allowed: {', '.join(sorted(defaults)) or '(none)'}"
        )
        raise ConfigError(f"{kind}: unknown param {key!r}{hint}")
    out = dict(defaults)
    out.update(params)
    return out


IMAGE_ENCODERS = Registry("image encoder")
TEXT_ENCODERS = Registry("text encoder")
RADIOMICS = Registry("radiomics extractor")
FUSIONS = Registry("fusion")
HEADS = Registry("head")
HASHING = Registry("hashing")
PRETRAINING = Registry("pretraining")
LOSSES = Registry("loss")

#: Registry per ``ModelConfig`` field (``loss`` included), as listed by ``list_models()``.
REGISTRIES: dict[str, Registry] = {
    "image_encoder": IMAGE_ENCODERS,
    "text_encoder": TEXT_ENCODERS,
    "radiomics": RADIOMICS,
    "fusion": FUSIONS,
    "head": HEADS,
    "hashing": HASHING,
    "pretraining": PRETRAINING,
    "loss": LOSSES,
}
