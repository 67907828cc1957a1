"""The model library: encoders, fusion, heads, hashing and pretraining behind registries.

    >>> from lungsearch.config import load_profile
    >>> from lungsearch.models import create_model, list_models
    >>> model = create_model(load_profile("ct-ild"))
    >>> out = model(images=torch.randn(2, 1, 128, 128), radiomics=torch.randn(2, 42))
    >>> out["embedding"].shape
    torch.Size([2, 128])

Importing this package imports torch (the SDK never imports it).
"""

from lungsearch.models.base import FEATURE_NAMES, LungModel
from lungsearch.models.factory import ComposedModel, create_model, list_models
from lungsearch.models.registry import REGISTRIES, BuildContext, Registry

__all__ = [
    "FEATURE_NAMES",
    "LungModel",
    "ComposedModel",
    "create_model",
    "list_models",
    "REGISTRIES",
    "BuildContext",
    "Registry",
]
