"""PruneConfig validation and round trip; the package imports no heavy runtime."""
import subprocess
import sys

import pytest

from compressor import PruneConfig


def test_round_trip_json():
    config = PruneConfig(criterion="l1", target_flops=0.4, round_to=8, exclude=("fc", "layer1\\..*"), seed=3)
    assert PruneConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of"),
    ({"ratio": 0.3, "target_flops": 0.5}, "exactly one of"),
    ({"ratio": 1.0}, "ratio must be in [0, 1)"),
    ({"global_ratio": -0.2}, "global_ratio must be in [0, 1)"),
    ({"target_flops": 0.0}, "target_flops is the fraction to keep"),
    ({"target_params": 1.5}, "target_params is the fraction to keep"),
    ({"ratio": 0.3, "round_to": 0}, "round_to must be 'auto' or an integer >= 1"),
    ({"ratio": 0.3, "exclude": ("conv[",)}, "not a valid regular expression"),
    ({"target_flops": 0.5, "layer_ratios": {"a": 0.2}}, "layer_ratios needs"),
])
def test_invalid_configs_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        PruneConfig(**kwargs)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="unknown PruneConfig key\\(s\\) \\['ratoi'\\]"):
        PruneConfig.from_dict({"ratoi": 0.3})


def test_import_has_no_heavy_side_effects():
    code = ("import sys, compressor, models; bad = [m for m in ('torchvision', 'onnxruntime', 'openvino', 'tensorrt', "
            "'matplotlib') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
