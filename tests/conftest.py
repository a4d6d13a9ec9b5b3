"""Suite-wide settings: explicit thread count and seeds, so runs are repeatable."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The alignment probe's cache goes to a directory of this test session, never the user's."""
    import os

    previous = os.environ.get("COMPRESSOR_CACHE_DIR")
    os.environ["COMPRESSOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("compressor-cache"))
    yield
    if previous is None:
        os.environ.pop("COMPRESSOR_CACHE_DIR", None)
    else:
        os.environ["COMPRESSOR_CACHE_DIR"] = previous


PROJECT_PACKAGES = ("compressor", "runtimes", "benchmarks", "models")


@pytest.fixture
def patch_everywhere(monkeypatch):
    """``patch(module, name, replacement)``: replace ``module.name`` and every binding of the same
    object that a project module made with ``from module import name``.

    Project modules import their dependencies at the top (tests/test_layering.py), so patching
    only the defining module would leave the callers' names pointing at the original.
    """
    import sys

    def patch(module, name: str, replacement) -> int:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, replacement)
        bound = 1
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or mod is module or mod_name.split(".")[0] not in PROJECT_PACKAGES:
                continue
            if getattr(mod, name, None) is original:
                monkeypatch.setattr(mod, name, replacement)
                bound += 1
        return bound

    return patch
