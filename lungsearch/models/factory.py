"""``create_model(cfg)``: one :class:`ComposedModel` assembled from the registered parts a
profile names. Profiles differ only in which parts are present:

========== ======================= ============== ============== =====================================
profile    encoders                fusion         head           embedding / codes
========== ======================= ============== ============== =====================================
cxr-report image + text tokens     cma            sg_bilstm      proj(head hidden)
cxr-cnn    ldc                     (pooled)       linear         proj(128-d dense)
ct-ild     image (GeM) + radiomics outer_product  (none)         ILD-FFN output F; LSH codes
cxr-clip   image + text            (pretraining)  probe (linear) image (or text) projection
cxr-hash   image (global + local)  (none)         CAM clf, L_cls tanh(beta z) / sign(z) codes
========== ======================= ============== ============== =====================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lungsearch.config import ProfileConfig
from lungsearch.errors import ConfigError, InvalidRequestError

# importing the part modules registers their builders
from lungsearch.models import baselines as _baselines  # noqa: F401  (paper 2's torchvision baselines)
from lungsearch.models import encoders as _encoders  # noqa: F401
from lungsearch.models import fusion as _fusion  # noqa: F401
from lungsearch.models import heads as _heads  # noqa: F401
from lungsearch.models import pretraining as _pretraining  # noqa: F401
from lungsearch.models import radiomics as _radiomics  # noqa: F401
from lungsearch.models.base import LungModel
from lungsearch.models.hashing import LSH, AttentionHash
from lungsearch.models.registry import (
    FUSIONS,
    HASHING,
    HEADS,
    IMAGE_ENCODERS,
    PRETRAINING,
    RADIOMICS,
    REGISTRIES,
    TEXT_ENCODERS,
    BuildContext,
)

__all__ = ["ComposedModel", "create_model", "list_models"]


class ComposedModel(LungModel):
    """A profile's pipeline built from registered parts (see the module table).

    Beyond :class:`LungModel` it offers ``regularization()`` (sparsity penalties to add to the
    training loss), ``on_epoch_start(epoch)`` (hash continuation), ``set_stage(stage)``
    (two-stage recipes), ``standardise_radiomics(raw)`` and ``fit_radiomics(raw)``.
    """

    def __init__(self, cfg: ProfileConfig) -> None:
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.targets = list(cfg.data.targets)
        self.input_size = cfg.data.image_size
        self.multilabel = cfg.data.multilabel
        ctx = BuildContext(
            input_size=cfg.data.image_size,
            num_classes=max(len(self.targets), 1),
            multilabel=cfg.data.multilabel,
            embedding_dim=m.embedding_dim,
            modality=cfg.modality,
        )
        self.stage = "train"

        self.image_encoder = (
            IMAGE_ENCODERS.build(m.image_encoder.name, m.image_encoder.params, ctx) if m.image_encoder else None
        )
        if self.image_encoder is not None:
            ctx.dims["image"] = self.image_encoder.out_dim
        self.text_encoder = (
            TEXT_ENCODERS.build(m.text_encoder.name, m.text_encoder.params, ctx) if m.text_encoder else None
        )
        if self.text_encoder is not None:
            ctx.dims["text"] = self.text_encoder.out_dim
        self.radiomics = RADIOMICS.build(m.radiomics.name, m.radiomics.params, ctx) if m.radiomics else None
        if self.radiomics is not None:
            ctx.dims["radiomics"] = self.radiomics.out_dim

        # hashing (paper 5) wires a second (local) encoder and the Grad-CAM classifier
        self.hasher: AttentionHash | None = None
        self.lsh: LSH | None = None
        self.code_bits = 0
        if m.hashing is not None:
            built = HASHING.build(m.hashing.name, m.hashing.params, ctx)
            if isinstance(built, LSH):
                self.lsh = built
                self.code_bits = built.bits
            else:
                if self.image_encoder is None:
                    raise ConfigError(f"hashing {m.hashing.name!r} needs an image_encoder")
                local = built.pop("local_encoder") or m.image_encoder.model_dump()
                local_enc = IMAGE_ENCODERS.build(local["name"], local.get("params", {}), ctx)
                self.hasher = AttentionHash(
                    self.image_encoder,
                    local_enc,
                    ctx.num_classes,
                    built["bits"],
                    built["beta_schedule"],
                    built["crop"],
                    built["otsu_bins"],
                    cam=built["cam"],
                )
                self.code_bits = built["bits"]
                if m.embedding_dim != self.code_bits:
                    raise ConfigError(
                        f"{cfg.profile}: model.embedding_dim must equal the hash bits ({self.code_bits}): "
                        "the embedding is the continuous code tanh(beta z)"
                    )
        elif cfg.index is not None and cfg.index.kind == "lsh":
            self.lsh = LSH(m.embedding_dim, cfg.index.code_bits, seed=cfg.train.seed)
            self.code_bits = cfg.index.code_bits
        if cfg.index is not None and cfg.index.kind in ("hamming", "lsh") and cfg.index.code_bits != self.code_bits:
            raise ConfigError(
                f"{cfg.profile}: index.code_bits ({cfg.index.code_bits}) "
                f"differs from the model's code bits ({self.code_bits})"
            )

        self.pretraining = PRETRAINING.build(m.pretraining.name, m.pretraining.params, ctx) if m.pretraining else None

        self.fusion: nn.Module | None = None
        if m.fusion is not None:
            self.fusion = FUSIONS.build(m.fusion.name, m.fusion.params, ctx)
        elif self.pretraining is None and self.hasher is None:
            self.fusion = FUSIONS.build("pooled", {}, ctx)
        if self.fusion is not None:
            ctx.dims["fused"] = self.fusion.out_dim
            if getattr(self.fusion, "seq_dim", None):
                ctx.dims["sequence"] = self.fusion.seq_dim

        self.head = HEADS.build(m.head.name, m.head.params, ctx) if m.head else None
        self.probe: nn.Linear | None = None
        if self.pretraining is not None:
            self.probe = nn.Linear(m.embedding_dim, ctx.num_classes)  # linear probe (1/10/100% labels)

        if self.head is not None:
            src = self.head.hidden_dim
        elif self.fusion is not None:
            src = self.fusion.out_dim
        else:
            src = m.embedding_dim
        self.embed = nn.Identity() if src == m.embedding_dim else nn.Linear(src, m.embedding_dim)
        self.embedding_dim = m.embedding_dim

    # ------------------------------------------------------------------ encode
    def encode(
        self, images: torch.Tensor | None = None, texts: list[str] | None = None, radiomics: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        if images is not None:
            if self.image_encoder is None:
                raise InvalidRequestError(f"profile {self.cfg.profile} takes no images")
            if images.ndim != 4 or images.shape[1] != 1:
                raise InvalidRequestError(f"images must be [B, 1, H, W], got {tuple(images.shape)}")
            if self.hasher is not None and self.stage == "classifier":
                # Stage 1 trains only the CAM classifier: the hash network's branches (frozen now)
                # are not run at all (saves their forward pass in every step of the stage).
                c = self.hasher.cam(images)
                feats["cam_pooled"], feats["logits"] = c["pooled"], c["logits"]
                return feats
            g = self.image_encoder(images)
            feats["image_pooled"], feats["image_tokens"] = g["pooled"], g["tokens"]
            if self.hasher is not None:
                h = self.hasher(images, glob=g)
                feats["hash_logits"] = h["hash_logits"]
                feats["logits"] = h["logits"]  # the hash network's L_cls head (the total loss of stage 2)
        if texts is not None:
            if self.text_encoder is None:
                raise InvalidRequestError(f"profile {self.cfg.profile} takes no report text")
            t = self.text_encoder(list(texts))
            feats["report_pooled"], feats["report_tokens"] = t["pooled"], t["tokens"]
        if radiomics is not None:
            if self.radiomics is None:
                raise InvalidRequestError(f"profile {self.cfg.profile} takes no radiomics")
            feats["radiomics"] = radiomics.to(torch.float32)
        if not feats:
            raise InvalidRequestError("nothing to encode: give images, texts or radiomics")
        return feats

    # ------------------------------------------------------------------ fuse
    def fuse(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.pretraining is not None:
            p = self.pretraining(features)
            out.update(p)
            emb = p.get("image_embedding", p.get("text_embedding"))
            if emb is None:
                raise InvalidRequestError("fusion needs image or report features")
            out["embedding"] = emb
            # probe training must not move the encoders; explain() (eval mode) needs the graph
            out["logits"] = self.probe(emb.detach() if self.stage == "probe" and self.training else emb)
            return out
        if self.hasher is not None:
            z = features.get("hash_logits")
            if z is None and "cam_pooled" in features:
                # classifier stage: validation ranks by the CAM classifier's pooled features (cosine)
                return {"embedding": F.normalize(features["cam_pooled"], dim=-1), "logits": features["logits"]}
            if z is None:
                raise InvalidRequestError("fusion needs hash_logits (encode images first)")
            out["hash_logits"] = z
            relaxed = torch.tanh(self.hasher.beta * z)
            out["hash_relaxed"] = relaxed
            out["embedding"] = F.normalize(relaxed, dim=-1)
            if "logits" in features:
                out["logits"] = features["logits"]
            return out
        f = self.fusion(features)
        hidden = f["fused"]
        if self.head is not None:
            h = self.head(f)
            out["logits"] = h["logits"]
            hidden = h["hidden"]
        emb = F.normalize(self.embed(hidden), dim=-1)
        out["embedding"] = emb
        if self.lsh is not None:
            out["hash_logits"] = self.lsh(emb)
        return out

    # ------------------------------------------------------------------ explain
    def explain(self, images: torch.Tensor, target: int | None = None, texts: list[str] | None = None) -> torch.Tensor:
        """Grad-CAM (paper 5, eq. 1-2) of class ``target`` (None = top class) w.r.t. the image
        encoder's last feature map, upsampled to the image and scaled to [0, 1] per image.
        For profiles without a classifier (ct-ild) the score is the embedding's norm-free
        projection on the image's own embedding (what drives retrieval)."""
        if self.image_encoder is None:
            raise InvalidRequestError(f"profile {self.cfg.profile} has no image encoder to explain")
        was_training = self.training
        self.eval()
        try:
            if self.hasher is not None:
                return self.hasher.heatmap(images, target)  # the separately trained CAM classifier
            with torch.enable_grad():
                fmap = self.image_encoder.features(images).detach().requires_grad_(True)
                pooled = self.image_encoder.pool(fmap)
                feats = {"image_pooled": pooled, "image_tokens": fmap.flatten(2).transpose(1, 2)}
                if texts is not None and self.text_encoder is not None:
                    t = self.text_encoder(list(texts))
                    feats["report_pooled"], feats["report_tokens"] = t["pooled"], t["tokens"]
                elif self.text_encoder is not None:
                    t = self.text_encoder([""] * images.shape[0])
                    feats["report_pooled"], feats["report_tokens"] = t["pooled"], t["tokens"]
                if self.radiomics is not None:
                    feats["radiomics"] = torch.zeros(images.shape[0], self.radiomics.out_dim, device=images.device)
                out = self.fuse(feats)  # grad enabled: a sparse-gated head takes its differentiable path
                if "logits" in out:
                    logits = out["logits"]
                    tgt = (
                        logits.argmax(1)
                        if target is None
                        else torch.full((images.shape[0],), int(target), device=logits.device)
                    )
                    score = logits.gather(1, tgt[:, None]).squeeze(1)
                else:
                    emb = out["embedding"]
                    score = (emb * emb.detach()).sum(1)
                from lungsearch.models.hashing import grad_cam

                cam = grad_cam(fmap, score).detach()
        finally:
            self.train(was_training)
        cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        from lungsearch.models.hashing import normalise_heatmap

        return normalise_heatmap(cam)

    # ------------------------------------------------------------------ training hooks
    def regularization(self) -> torch.Tensor:
        """Auxiliary penalties of the last training forward (the SG-Bi-LSTM sparsity term)."""
        reg = getattr(self.head, "regularization", None)
        if reg is not None:
            return reg()
        return torch.zeros((), device=next(self.parameters()).device)

    def reset_gate_stats(self) -> None:
        """Restart the sparse gate's kept-step / kept-unit counts (a no-op without one)."""
        reset = getattr(self.head, "reset_gate_stats", None)
        if reset is not None:
            reset()

    def gate_stats(self) -> dict[str, float]:
        """``kept_steps`` / ``kept_units`` of the SG-Bi-LSTM over the forwards since
        :meth:`reset_gate_stats` (paper 1 Table 3's sparsity); ``{}`` for other heads."""
        stats = getattr(self.head, "gate_stats", None)
        return stats() if stats is not None else {}

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch schedule: the hash continuation ``beta`` (paper 5, eq. 12)."""
        if self.hasher is not None:
            self.hasher.set_epoch(epoch)

    def set_stage(self, stage: str) -> None:
        """Select what trains in a two-stage recipe (``cfg.train.stages``).

        * ``classifier`` (cxr-hash): the CAM classifier (its own backbone) only; the hash network
          is frozen and not run.
        * ``hash`` (cxr-hash): both branches, their L_cls head and the hash layers; the CAM
          classifier is frozen (no gradient, BatchNorm in eval mode), so the attention maps stay
          those of the trained classifier and a hash step cannot change it.
        * ``pretrain`` (cxr-clip): everything except the probe.
        * ``probe`` (cxr-clip): only the linear probe (encoders frozen).
        * anything else: every part whose parameters are not frozen by config.
        """
        self.stage = stage
        frozen_by_cfg = {id(p) for p in self._config_frozen()}
        for p in self.parameters():
            if id(p) not in frozen_by_cfg:
                p.requires_grad_(True)
        if self.hasher is not None:
            self.hasher.freeze_cam(stage == "hash")
        if stage == "classifier" and self.hasher is not None:
            for name, mod in self.hasher.named_children():
                if name != "cam":
                    mod.requires_grad_(False)
        elif stage == "pretrain" and self.probe is not None:
            self.probe.requires_grad_(False)
        elif stage == "probe" and self.probe is not None:
            for name, mod in self.named_children():
                if name != "probe":
                    mod.requires_grad_(False)

    def _config_frozen(self) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        te = self.text_encoder
        if te is not None and getattr(te, "frozen", False):
            out += list(te.parameters())
        for enc in (self.image_encoder, getattr(self.hasher, "local_encoder", None)):
            if enc is not None and self.cfg.model.image_encoder and self.cfg.model.image_encoder.params.get("freeze"):
                out += list(enc.parameters())
        return out

    # ------------------------------------------------------------------ radiomics
    def standardise_radiomics(self, raw) -> torch.Tensor:
        """Raw radiomics ``[N, F]`` (NaN allowed) -> the standardised input of :meth:`encode`."""
        if self.radiomics is None:
            raise InvalidRequestError(f"profile {self.cfg.profile} has no radiomics")
        return self.radiomics(raw)

    def fit_radiomics(self, raw) -> None:
        """Fit the radiomics scaler on training features ``[N, F]`` (stored in ``state_dict``)."""
        if self.radiomics is None:
            raise InvalidRequestError(f"profile {self.cfg.profile} has no radiomics")
        self.radiomics.fit(raw)


def create_model(cfg: ProfileConfig) -> LungModel:
    """Build the profile's model from its registered parts (random init unless a part's params
    name local weights). Everything fitted later (radiomics scaler, LSH planes, hash beta) is a
    buffer, so ``torch.save(model.state_dict())`` plus the config rebuild it exactly.

    Raises:
        ConfigError: an unknown part name or param (with close matches), or parts that do not fit.
    """
    return ComposedModel(cfg)


def list_models() -> dict[str, list[str]]:
    """Registered names per part kind (``image_encoder``, ``text_encoder``, ``radiomics``,
    ``fusion``, ``head``, ``hashing``, ``pretraining``, ``loss``)."""
    import lungsearch.losses  # noqa: F401  (registers the losses)

    return {kind: reg.names() for kind, reg in REGISTRIES.items()}
