"""Import every module of the library (catches cycles and import-time side effects), and check the
public surface is declared."""

import importlib
import pkgutil

import pytest

import lungsearch

MODULES = sorted(m.name for m in pkgutil.walk_packages(lungsearch.__path__, "lungsearch.") if ".__main__" not in m.name)


@pytest.mark.parametrize("name", MODULES)
def test_import(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", [m for m in MODULES if not m.split(".")[-1].startswith("_") and "._" not in m])
def test_public_modules_declare_all(name):
    mod = importlib.import_module(name)
    if mod.__file__.endswith("__main__.py"):
        return
    assert hasattr(mod, "__all__"), f"{name} has no __all__"


def test_import_is_light():
    """`import lungsearch` must not pull torch or ray (the SDK install has neither)."""
    import subprocess
    import sys

    code = (
        "import sys, lungsearch, lungsearch.errors, lungsearch.constants; "
        "print(sorted(m for m in ('torch','ray','pymilvus') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
