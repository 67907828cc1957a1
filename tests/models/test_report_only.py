"""cxr-report's "Report only" row (paper 1 Table 2's single-modality comparison; issue 15): the
shipped variant has to learn from the report, not settle on the majority class.

The row trains a linear head on frozen MiniLM report vectors with the profile's Adam at 1e-3;
before the head standardised its input it stayed a majority-class predictor on the phantoms
(accuracy 50.8 %, recall 1/6 = one class, AUC 0.76). Here: a tiny, imbalanced set (half Normal)
of reports that share their findings text and differ in a short impression naming the label,
trained for as many steps as ``reproduce --quick`` gives the row (2 epochs of 360 training cases
at batch 32 = 24 steps). Without the standardisation the same run predicts Normal for all 24."""

from __future__ import annotations

import torch

from lungsearch.config import load_profile
from lungsearch.models import create_model
from lungsearch.training.recipes import variants

#: What every report of a set shares (IU X-ray reports repeat such sentences) dominates a mean-
#: pooled report vector; the label lives in one short impression.
PREAMBLE = (
    "FINDINGS: Frontal and lateral views of the chest. The cardiomediastinal silhouette and pulmonary vasculature "
    "are within normal limits. There is no pneumothorax. The visualized osseous structures are intact. Degenerative "
    "changes of the spine. IMPRESSION: "
)
IMPRESSIONS = {
    "Normal": [
        "No acute cardiopulmonary abnormality.",
        "No acute disease.",
        "Normal chest.",
        "Lungs are clear.",
        "No active disease.",
        "Clear lungs.",
        "No acute findings.",
        "Unremarkable chest.",
        "No abnormality.",
        "Normal heart and lungs.",
        "No acute process.",
        "Stable normal chest.",
    ],
    "Effusion": ["Small left pleural effusion.", "Right pleural effusion.", "Bilateral pleural effusions."],
    "Cardiomegaly": ["Cardiomegaly.", "The heart is enlarged.", "Mild cardiomegaly."],
    "Nodule": ["Right upper lobe nodule.", "Calcified granuloma.", "Pulmonary nodule in the left lung."],
    "Atelectasis": ["Bibasilar atelectasis.", "Left basilar atelectasis.", "Subsegmental atelectasis."],
}


def _report_only_model():
    cfg = load_profile("cxr-report")
    row = next(v for v in variants(cfg) if v.name == "Report only")
    torch.manual_seed(0)
    return create_model(cfg.with_overrides(list(row.overrides))), cfg


def test_report_only_row_learns_a_tiny_separable_set():
    model, cfg = _report_only_model()
    assert model.image_encoder is None and model.text_encoder is not None
    targets = list(cfg.data.targets)
    texts = [PREAMBLE + imp for imps in IMPRESSIONS.values() for imp in imps]
    y = torch.tensor([targets.index(lab) for lab, imps in IMPRESSIONS.items() for _ in imps])  # half Normal
    with torch.no_grad():
        feats = model.encode(texts=texts)  # the frozen encoder, as the training loop's text cache gives it
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(24):
        idx = torch.randperm(len(texts), generator=g)[:16]  # batches that are not the whole set
        out = model.fuse({k: v[idx] for k, v in feats.items()})
        loss = torch.nn.functional.cross_entropy(out["logits"], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model.fuse(feats)["logits"].argmax(1)
    # without the standardisation this set gives the majority class for every report (accuracy 0.5)
    assert len(set(pred.tolist())) == len(IMPRESSIONS), pred.tolist()
    assert float((pred == y).float().mean()) >= 0.9, pred.tolist()
