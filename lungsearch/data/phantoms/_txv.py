"""Paths of the data files bundled inside the torchxrayvision wheel, found without importing it
(importing torchxrayvision imports torch, seconds of start-up for a file path)."""

from __future__ import annotations

import importlib.util
import os

from lungsearch.errors import ConfigError

__all__ = ["txv_data_file"]


def txv_data_file(name: str) -> str:
    """Absolute path of ``torchxrayvision/data/<name>``.

    Raises:
        ConfigError: torchxrayvision is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("phantoms need the torchxrayvision package (its bundled reports and lung masks)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", name)
    if not os.path.exists(path):
        raise ConfigError(f"torchxrayvision does not bundle data/{name}")
    return path
