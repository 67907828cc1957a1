"""Fixtures for the serving library tests (helpers in serving_fixtures.py)."""

import pytest
from serving_fixtures import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models():
    """{profile: (model, cfg)} for cxr-hash, ct-ild and cxr-clip: tiny, untrained, eval mode."""
    return build_tiny_models()
