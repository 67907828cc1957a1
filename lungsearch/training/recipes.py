"""Per-profile training recipes: the stages a run goes through and the ablation variants the
papers' tables compare.

A profile's ``train.stages`` names its stages; each stage trains for ``train.epochs`` epochs with
early stopping on its own monitor and ends by restoring its best epoch:

============ ========================= ============================================ ==================
profile      stages                    loss per stage                               monitor (last)
============ ========================= ============================================ ==================
cxr-report   train                     CE (+ the SG-Bi-LSTM sparsity penalty)       val_accuracy
cxr-cnn      train                     CE                                           val_accuracy
ct-ild       train                     SupCon (radiomics scaler fitted on train)    val_loss
cxr-clip     pretrain, probe           subgraph total (eq. 12 + global); probe: CE  val_loss
cxr-hash     classifier, hash          BCE (eq. 5); weighted pairwise Bayes + tanh  val_map10
============ ========================= ============================================ ==================

Earlier stages monitor ``val_loss``; the last one ``train.monitor``. The hash stage follows
paper 5: Adam for the classifier stage, then ``train.optimizer`` (SGD with momentum 0.9 in the GPU
config) with a 10x learning rate on the hash layers, ``beta`` raised per epoch
(``model.on_epoch_start``). The probe stage of the CLIP profile trains only the linear probe on
frozen (cached) embeddings.

Variants (:func:`variants`) are config overrides used by ``ray_jobs/reproduce.py`` for the
papers' comparison tables (image-only vs fused, the CMA/SG ablation with both readings of paper 1's
eq. 4 and the gate learning rate, paper 2's torchvision baselines, bits 16-64, single-modality ILD
baselines, paper 4's matching and loss-term ablations and edge thresholds; the random-init probe is
fitted by the evaluation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from lungsearch.errors import ConfigError

if TYPE_CHECKING:
    from lungsearch.config import ProfileConfig

__all__ = ["CNN_BASELINES", "Stage", "Variant", "cnn_baselines", "stages_for", "variants", "STAGE_NAMES"]

STAGE_NAMES = ("train", "classifier", "hash", "pretrain", "probe")


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: ``train`` (single-stage), ``classifier``/``hash`` (cxr-hash), ``pretrain``/``probe`` (cxr-clip).
        epochs: epochs of this stage.
        monitor: metric for early stopping and the best epoch (``val_loss``, ``val_accuracy``, ...).
        mode: ``min`` or ``max``.
        lr: base learning rate.
        lr_mult: learning-rate multipliers by parameter-name prefix (paper 5: hash layers x10).
        uses_labels: the loss needs labels (False for the self-supervised pretraining).
        frozen_features: train on cached embeddings of the frozen model (linear probe).
        optimizer: ``adam`` / ``adamw`` / ``sgd`` (SGD uses momentum 0.9).
    """

    name: str
    epochs: int
    monitor: str
    mode: str
    lr: float
    lr_mult: dict[str, float] = field(default_factory=dict)
    uses_labels: bool = True
    frozen_features: bool = False
    optimizer: str = "adam"


def stages_for(cfg: "ProfileConfig") -> list[Stage]:
    """The ordered stages of ``cfg``'s recipe (see the module table)."""
    names = list(cfg.train.stages) or ["train"]
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"train.stages: unknown stage {unknown[0]!r}; known: {', '.join(STAGE_NAMES)}")
    if ("hash" in names or "classifier" in names) and cfg.model.hashing is None:
        raise ConfigError("train.stages 'classifier'/'hash' need model.hashing")
    if ("pretrain" in names or "probe" in names) and cfg.model.pretraining is None:
        raise ConfigError("train.stages 'pretrain'/'probe' need model.pretraining")
    out = []
    for k, name in enumerate(names):
        last = k == len(names) - 1
        monitor, mode = (cfg.train.monitor, cfg.train.monitor_mode) if last else ("val_loss", "min")
        out.append(
            Stage(
                name=name,
                epochs=cfg.train.epochs,
                monitor=monitor,
                mode=mode,
                lr=cfg.train.lr,
                lr_mult={"hasher.hash_global": 10.0, "hasher.hash_local": 10.0} if name == "hash" else {},
                uses_labels=name != "pretrain",
                frozen_features=name == "probe",
                # Paper 5 trains its classifier (FCN) with Adam and the hash network with SGD: the
                # classifier stage keeps Adam whatever train.optimizer says (which applies to the rest).
                optimizer="adam" if name == "classifier" else cfg.train.optimizer,
            )
        )
    return out


@dataclass(frozen=True)
class Variant:
    """A named config variant for a comparison table.

    Attributes:
        name: row label in the table ("CMA+SG-Bi-LSTM (ours)", "ResNet (image only)").
        overrides: ``dotted.key=value`` overrides applied to the profile config.
        table: which table the row belongs to.
        main: the row is the profile's own method.
        disable_attention: cxr-hash only: the local branch sees the whole image (no Grad-CAM/Otsu
            mask), paper 5's "-A" ablation; applied to the built model, not expressible in config.
    """

    name: str
    overrides: tuple[str, ...]
    table: str
    main: bool = False
    disable_attention: bool = False


def variants(cfg: "ProfileConfig", baseline_weights: Mapping[str, str] | None = None) -> list[Variant]:
    """Comparison rows of the profile's paper (the main method included, overrides empty).

    ``baseline_weights`` (cxr-cnn): local ImageNet state-dict files by architecture
    (``{"vgg16": "/models/vgg16-397923af.pth"}``); baselines without one train from scratch.
    """
    p = cfg.profile
    if p == "cxr-report":
        ablation = "Table 3: ablation (paper 1)"
        return [
            Variant("CMA+SG-Bi-LSTM (ours)", (), "Table 2: single modality vs fused (paper 1)", main=True),
            Variant(
                "ResNet (image only)",
                ("model.text_encoder=null", "model.fusion=null", "model.head={name: linear}"),
                "Table 2: single modality vs fused (paper 1)",
            ),
            # frozen report features standardised before the linear head: without it the row
            # stayed a majority-class predictor (LinearHead's docstring)
            Variant(
                "Report only",
                ("model.image_encoder=null", "model.fusion=null", "model.head={name: linear, params: {norm: true}}"),
                "Table 2: single modality vs fused (paper 1)",
            ),
            Variant(
                "Bi-LSTM",
                ("model.fusion={name: concat, params: {dim: 128}}", "model.head={name: bilstm, params: {hidden: 64}}"),
                ablation,
            ),
            Variant("SG+Bi-LSTM", ("model.fusion={name: concat, params: {dim: 128}}",), ablation),
            Variant("CMA+Bi-LSTM", ("model.head={name: bilstm, params: {hidden: 64}}",), ablation),
            # eq. 4's other reading (SparseGatedBiLSTM.gate_mode): the gate sparsifies the encoded
            # sequence, the cell keeps its state across a dropped step
            Variant("CMA+SG-Bi-LSTM, output gate", ("model.head.params.gate_mode=output",), ablation),
            Variant(
                "SG+Bi-LSTM, output gate",
                ("model.fusion={name: concat, params: {dim: 128}}", "model.head.params.gate_mode=output"),
                ablation,
            ),
            # the gate learning rate (gate_scale: Adam steps of the gates x gate_scale); 10 is the
            # default, 1 trains the gates at the base rate
            Variant("CMA+SG-Bi-LSTM, gate_scale 1", ("model.head.params.gate_scale=1",), ablation),
        ]
    if p == "cxr-cnn":
        return cnn_baselines(baseline_weights)
    if p == "ct-ild":
        t = "Tables 2-3: fused vs single modality (paper 3)"
        return [
            Variant("ILD-FFN+SCL (ours)", (), t, main=True),
            Variant("ResNet+SCL (image only)", ("model.radiomics=null", "model.fusion=null"), t),
            Variant("Radiomics only (Omic)", ("model.image_encoder=null", "model.fusion=null"), t),
        ]
    if p == "cxr-hash":
        bits = int(cfg.model.hashing.params.get("bits", 64)) if cfg.model.hashing else 64
        rows = []
        for b in (16, 32, 48, 64):
            ov = (
                ()
                if b == bits
                else (f"model.hashing.params.bits={b}", f"model.embedding_dim={b}", f"index.code_bits={b}")
            )
            rows.append(Variant(f"ours, {b} bits", ov, "Table 2: mAP@10 vs code length (paper 5)", main=b == bits))
        rows.append(
            Variant(
                f"ours-A (no attention), {bits} bits",
                (),
                "Tables 3-4: NDCG@ALL and attention ablation (paper 5)",
                disable_attention=True,
            )
        )
        return rows
    if p == "cxr-clip":
        # Every row is one pretraining run; the 1/10/100 % probes (and the random-init baseline)
        # are fitted on each run's frozen image embeddings. The ablations are taken on eq. 12 as
        # printed (L1 + L2 + L3, the paper's model), as the paper's tables 6 and 9-11 are; the
        # main row adds the global InfoNCE that retrieval uses (SubgraphTotalLoss.global_weight).
        t1, t6, tab = (
            "Table 1: linear probe (paper 4)",
            "Table 6: matching ablation (paper 4)",
            "Tables 9-11: ablations of eq. 12 (paper 4)",
        )
        eq12 = "model.loss={name: subgraph_total, params: {global_weight: 0}}"

        def eq12_with(**w: float) -> str:
            return "model.loss={name: subgraph_total, params: {" + ", ".join(f"{k}: {v:g}" for k, v in w.items()) + "}}"

        return [
            Variant("Subgraph CLIP (ours)", (), t1, main=True),
            Variant("Global CLIP only (InfoNCE)", ("model.pretraining={name: clip}", "model.loss={name: infonce}"), t6),
            Variant("Eq. 12 as printed (L1+L2+L3)", (eq12,), t6),
            Variant("Eq. 12 - L1 (no matching)", (eq12_with(global_weight=0, l1_weight=0),), t6),
            Variant("Eq. 12, global matching for L1", (eq12_with(global_weight=1, l1_weight=0),), t6),
            Variant("Eq. 12 - L2 (no fine alignment)", (eq12_with(global_weight=0, l2_weight=0),), tab),
            Variant("Eq. 12 - L3 (no clustering)", (eq12_with(global_weight=0, l3_weight=0),), tab),
            Variant("Eq. 12, 0 % edges removed", (eq12, "model.pretraining.params.threshold=0.0"), tab),
            Variant("Eq. 12, 50 % edges removed", (eq12, "model.pretraining.params.threshold=0.5"), tab),
        ]
    return [Variant(p, (), "main", main=True)]


#: Paper 2, Table 3: the row name -> registered image encoder (``lungsearch.models.baselines``;
#: ResNet50 is the ``resnet50`` encoder). InceptionV5 is left out (no such published network).
CNN_BASELINES: dict[str, str] = {
    "VGG16": "vgg16",
    "VGG19": "vgg19",
    "AlexNet": "alexnet",
    "ResNet50": "resnet50",
    "MobileNetV2": "mobilenet_v2",
}
CNN_TABLE = "Table 3 (validation split) / Table 5: LDC-Model vs baselines (paper 2)"


def cnn_baselines(weights: Mapping[str, str] | None = None) -> list[Variant]:
    """Paper 2's rows: LDC-Model and the torchvision baselines, each named with its initialisation
    ("ImageNet weights" when ``weights`` has a file for its architecture, else "from scratch"), so
    the table says which. The baselines take the profile's linear head, loss and recipe."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(CNN_BASELINES.values()))
    if unknown:
        raise ConfigError(
            f"baseline weights for unknown architecture {unknown[0]!r}; known: {', '.join(CNN_BASELINES.values())}"
        )
    rows = [Variant("LDC-Model (ours)", (), CNN_TABLE, main=True)]
    for name, arch in CNN_BASELINES.items():
        path = weights.get(arch)
        init = "ImageNet weights" if path else "from scratch"
        # JSON is YAML: the path is quoted whatever characters it has
        params = "{pretrained: %s}" % (json.dumps(str(path)) if path else "null")
        rows.append(
            Variant(f"{name} ({init})", (f"model.image_encoder={{name: {arch}, params: {params}}}",), CNN_TABLE)
        )
    return rows


def base_name(variant_name: str) -> str:
    """A row's name without its parenthesised qualifier ("VGG16 (from scratch)" -> "VGG16")."""
    return variant_name.split(" (")[0]
