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
