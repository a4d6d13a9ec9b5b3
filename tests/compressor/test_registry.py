"""The one Registry class behind criteria, strategies, runtimes and pipeline steps: torch-free."""
import subprocess
import sys

import pytest

from compressor.common.registry import DuplicateNameError, Registry, UnknownNameError


def test_register_get_and_list():
    things = Registry("thing")
    assert things.register("b", 2) == 2

    @things.register("a")
    def a():
        return 1

    assert things.get("a") is a and things["b"] == 2 and len(things) == 2
    assert things.names() == ["a", "b"] == list(things) and "a" in things and "c" not in things
    assert things.values() == [a, 2] and "x" not in things.copy()
    steps = Registry("step", sort=False)
    steps.register("z", 0), steps.register("y", 1)
    assert steps.names() == ["z", "y"]  # registration order where that order is the documented one


def test_errors_name_the_kind_and_list_the_known_names():
    things = Registry("criterion", "criteria")
    things.register("l1", 1)
    with pytest.raises(UnknownNameError, match=r"^unknown criterion 'l3'; known criteria: l1$") as info:
        things.get("l3")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match="unknown criterion"):
        things.get(["not", "hashable"])
    with pytest.raises(DuplicateNameError, match=r"^criterion 'l1' is already registered$"):
        things.register("l1", 2)
    with pytest.raises(DuplicateNameError, match="already registered"):
        things.register("l1")  # the decorator form checks when it is made, before it is applied
    with pytest.raises(ValueError, match="criterion name must be a non-empty string"):
        things.register("", 3)
    assert things.get("l1") == 1
    copy = things.copy()
    copy.register("l2", 2)
    assert "l2" not in things


def test_import_is_torch_free():
    code = "import sys, compressor.common.registry; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
