"""lungsearch: similar-case retrieval and explained classification for chest X-ray and chest CT.

The library is importable without a cluster. Heavy parts (torch, Ray, Milvus) are imported
lazily by the subpackages that need them, so ``import lungsearch.client`` needs only grpcio
and protobuf.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
