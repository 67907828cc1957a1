"""Helpers for the Serve integration tests (a unique module name: every test folder has a conftest.py).

* ``serving_registry``: a model registry in a temp folder holding freshly built, **untrained**
  tiny models (64-px inputs, small limits) for cxr-report, ct-ild and cxr-clip: training happens
  elsewhere; the serving tests check the plumbing, and relevance only where an untrained model
  already has it on phantoms (measured: ct-ild image search and cxr-report image+report search
  retrieve same-label phantoms well above chance; see tests/services/test_gateway.py).
* ``phantom_sets``: small phantom datasets (synthetic) generated once per session.
* ``tokens``: a bearer-token file with one token per role.
"""

from __future__ import annotations

import socket
from pathlib import Path

#: Cases generated per phantom kind (ingested minus the held-out queries).
N_CXR = 200
N_CT = 60
TINY_LIMITS = [
    "serve.limits.max_image_bytes=1048576",
    "serve.limits.max_top_k=50",
    "serve.limits.max_report_chars=4000",
    "serve.limits.max_series_images=16",
]
PROFILES = {
    "cxr-report": ["data.image_size=64", "data.phantom.size=64"],
    "ct-ild": ["data.image_size=64", "data.phantom.size=64", "data.phantom.slices=3"],
    # the hashed text encoder keeps this profile light: it serves text-only search here, whose
    # relevance needs training (an untrained CLIP-style model ranks text->image at chance)
    "cxr-clip": ["data.image_size=64", "data.phantom.size=64", "model.text_encoder={name: hashed, params: {}}"],
}
READ, WRITE, ADMIN = "read-token-" + "r" * 24, "write-token-" + "w" * 24, "admin-token-" + "a" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_registry(root: Path, profiles: dict[str, list[str]] = PROFILES, *, version_suffix: str = "") -> dict:
    """Save one untrained model per profile into ``root``; returns {profile: card}."""
    import torch

    from lungsearch.config import load_profile
    from lungsearch.models import create_model
    from lungsearch.registry import save_model

    cards = {}
    for profile, over in profiles.items():
        cfg = load_profile(profile, over + TINY_LIMITS)
        torch.manual_seed(0)
        model = create_model(cfg).eval()
        version = f"20260101-000000-{cfg.fingerprint()[:6]}{version_suffix}"
        cards[profile] = save_model(
            model,
            cfg,
            metrics={"untrained": 1.0},
            data_fingerprint="none",
            synthetic_data=True,
            root=root,
            version=version,
        )
    return cards
