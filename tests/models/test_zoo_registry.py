"""Registry behaviour: registration, lookup errors, filtering, torchvision/timm pass-through."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import models
import models._registry as _registry

REPO_ROOT = Path(__file__).resolve().parents[2]
ZOO_NAMES = [
    "lenet5",
    "mobilenetv2",
    "reid_resnet50",
    "resnet110",
    "resnet20",
    "resnet50",
    "resnet56",
    "vgg16_bn_cifar",
]


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry, so test registrations never leak into other tests."""
    entries = dict(_registry._MODEL_ENTRIES)
    monkeypatch.setattr(_registry, "_MODEL_ENTRIES", entries)
    return entries


def _torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


needs_torchvision = pytest.mark.skipif(not _torchvision_available(), reason="torchvision is not installed")


def test_list_models_is_the_sorted_zoo() -> None:
    assert models.list_models() == ZOO_NAMES


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("resnet*", ["resnet110", "resnet20", "resnet50", "resnet56"]),
        ("*reid*", ["reid_resnet50"]),
        ("resnet?0", ["resnet20", "resnet50"]),
        ("nothing*", []),
    ],
)
def test_list_models_filters_with_fnmatch(pattern: str, expected: list[str]) -> None:
    assert models.list_models(pattern) == expected


def test_register_and_create(scratch_registry: dict) -> None:
    @models.register_model("tiny_test_net", input_size=(2, 8, 8))
    def tiny_test_net(out_features: int = 3) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, out_features))

    assert "tiny_test_net" in models.list_models()
    assert models.default_input_size("tiny_test_net") == (2, 8, 8)
    model = models.create_model("tiny_test_net", out_features=5)
    assert model(torch.randn(4, 2, 8, 8)).shape == (4, 5)
    assert tiny_test_net.__name__ == "tiny_test_net"  # the decorator returns the factory itself


def test_duplicate_registration_raises(scratch_registry: dict) -> None:
    with pytest.raises(ValueError, match="resnet56"):
        models.register_model("resnet56")

    @models.register_model("twice")
    def first() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        models.register_model("twice")
    # A decorator obtained before the name was taken must not overwrite it either.
    late = models.register_model("late")

    @models.register_model("late")
    def winner() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        late(lambda: nn.ReLU())
    assert isinstance(models.create_model("late"), nn.Identity)


@pytest.mark.parametrize("bad_name", ["", "torchvision:foo", "a:b"])
def test_register_rejects_reserved_names(scratch_registry: dict, bad_name: str) -> None:
    with pytest.raises(ValueError):
        models.register_model(bad_name)


@pytest.mark.parametrize("bad_size", [(3, 32), (0, 32, 32), (3, 32.0, 32)])
def test_register_rejects_bad_input_size(scratch_registry: dict, bad_size: tuple) -> None:
    with pytest.raises(ValueError, match="input_size"):
        models.register_model("bad_size_net", input_size=bad_size)


@pytest.mark.parametrize("call", [models.create_model, models.default_input_size])
def test_unknown_name_lists_known_models_and_prefixes(call) -> None:
    with pytest.raises(ValueError) as info:
        call("resnet57")
    message = str(info.value)
    assert "resnet57" in message
    for name in ZOO_NAMES:
        assert name in message
    assert "torchvision:" in message and "timm:" in message


def test_importing_models_pulls_in_neither_torchvision_nor_timm() -> None:
    # In a fresh interpreter: this test process has long imported torchvision already.
    code = "import sys, models; bad = {'torchvision', 'timm'} & set(sys.modules); assert not bad, bad"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@needs_torchvision
def test_torchvision_resnet18_builds() -> None:
    import torchvision

    model = models.create_model("torchvision:resnet18", num_classes=7).eval()
    assert isinstance(model, torchvision.models.ResNet)
    with torch.no_grad():
        assert model(torch.randn(1, *models.default_input_size("torchvision:resnet18"))).shape == (1, 7)


@needs_torchvision
def test_torchvision_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as tv_api

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("create_model tried to download weights")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_download)
    # lraspp's builder defaults to ImageNet backbone weights: create_model must turn them off.
    model = models.create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=3)
    assert isinstance(model, nn.Module)
    with pytest.raises(ValueError, match="never downloads"):
        models.create_model("torchvision:resnet18", weights="DEFAULT")
    with pytest.raises(ValueError, match="never downloads"):
        models.create_model("torchvision:fcn_resnet50", weights_backbone="DEFAULT")


@needs_torchvision
def test_torchvision_unknown_name_raises() -> None:
    with pytest.raises(ValueError):
        models.create_model("torchvision:resnet57")
    with pytest.raises(ValueError):
        models.default_input_size("torchvision:resnet57")


@needs_torchvision
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("torchvision:resnet18", (3, 224, 224)),
        ("torchvision:mobilenet_v2", (3, 224, 224)),
        ("torchvision:inception_v3", (3, 299, 299)),
        ("torchvision:fasterrcnn_resnet50_fpn", (3, 320, 320)),
        ("torchvision:deeplabv3_resnet50", (3, 224, 224)),
    ],
)
def test_torchvision_default_input_size(name: str, expected: tuple[int, int, int]) -> None:
    assert models.default_input_size(name) == expected


@needs_torchvision
@pytest.mark.parametrize("name", ["torchvision:r3d_18", "torchvision:raft_small"])
def test_torchvision_non_image_models_have_no_chw_size(name: str) -> None:
    with pytest.raises(ValueError):
        models.default_input_size(name)


def test_missing_torchvision_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ImportError, match="torchvision"):
        models.create_model("torchvision:resnet18")
    with pytest.raises(ImportError, match="torchvision"):
        models.default_input_size("torchvision:resnet18")


def test_missing_timm_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="pip install timm"):
        models.create_model("timm:resnet18")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_model_builds() -> None:
    model = models.create_model("timm:resnet18", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *models.default_input_size("timm:resnet18"))).shape == (1, 4)
    with pytest.raises(ValueError, match="never downloads"):
        models.create_model("timm:resnet18", pretrained=True)
