"""TensorRT build/load logic against a stand-in ``tensorrt`` module, checked without a GPU.

The stand-in mimics the TensorRT 10 and 11 Python APIs that ``build`` and ``load`` call and
records what it was asked to do: which network flags, builder flags, profile and ONNX file
(FP32, or the FP16 conversion that TensorRT 11 needs). Its engine's execution context computes
only what ``outputs`` tells it to, on host memory (test_multi_output.py runs a session on it);
test_runtime_tensorrt.py runs real engines on a GPU.
"""
from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from typing import Callable

import numpy as np

import onnx
import pytest
import torch

import runtimes._tensorrt as trt_module
from compressor.testing import export_test_onnx, tiny_cnn
from runtimes import ArtifactError, SessionConfig, get_runtime
from runtimes._onnx import PRECISION_KEY


# an output: (shape with -1 for the batch, dtype name, batch (float32 numpy) -> output); None computes zeros
FakeOutput = tuple[tuple[int, ...], str, Callable[[np.ndarray], np.ndarray] | None]
_NP = {"float32": np.float32, "float16": np.float16, "int32": np.int32}


def fake_tensorrt(major: int, unsupported_ops: tuple[str, ...] = (),
                  outputs: dict[str, FakeOutput] | None = None) -> types.ModuleType:
    """A stand-in ``tensorrt`` module; its engines take "input" (-1, 3, 16, 16) and have ``outputs``
    (default: one "output" (-1, 10), zeros), in that order."""
    outputs = outputs if outputs is not None else {"output": ((-1, 10), "float32", None)}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.0.0"
    trt.calls = {}

    class ILogger:
        class Severity(enum.Enum):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    flags = ["TF32"] + (["FP16"] if major == 10 else [])  # TensorRT 11 removed BuilderFlag.FP16
    trt.ILogger = ILogger
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            trt.calls["network_flags"] = flags
            self.inputs = []

        num_inputs = property(lambda self: len(self.inputs))

        def get_input(self, i):
            return self.inputs[i]

    class Error:
        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            model = onnx.load(path)
            trt.calls["parsed_initializer_types"] = {t.data_type for t in model.graph.initializer}
            trt.calls["parsed_metadata"] = {p.key: p.value for p in model.metadata_props}
            self.errors = [Error(f"No importer registered for op: {n.op_type}")
                           for n in model.graph.node if n.op_type in unsupported_ops]
            for value in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(value.name, dims))
            return not self.errors

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # on by default, as in TensorRT
            trt.calls["config"] = self

        def set_memory_pool_limit(self, pool, size):
            trt.calls["workspace"] = (pool, size)

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def get_flag(self, flag):
            return flag in self.flags

        def add_optimization_profile(self, profile):
            trt.calls["profile"] = profile.shapes

    class Profile:
        def set_shape(self, name, lowest, best, highest):
            self.shapes = (name, lowest, best, highest)

    class Builder:
        def __init__(self, logger):
            pass

        create_network = staticmethod(Network)
        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            return b"serialized engine"

    class Context:
        """TensorRT 10's IExecutionContext over host memory: the "device addresses" are numpy pointers."""

        def __init__(self, engine):
            self.engine, self.input_shape, self.addresses = engine, None, {}

        def set_input_shape(self, name, shape):
            self.input_shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name == "input":
                return self.input_shape
            return tuple(self.input_shape[0] if d < 0 else d for d in outputs[name][0])

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            size = int(np.prod(self.input_shape)) * 4
            x = np.frombuffer((ctypes.c_char * size).from_address(self.addresses["input"]), np.float32)
            x = x.reshape(self.input_shape)
            for name, (_, dtype, compute) in outputs.items():
                shape = self.get_tensor_shape(name)
                value = np.zeros(shape, _NP[dtype]) if compute is None else compute(x)
                value = np.ascontiguousarray(value, _NP[dtype])
                assert value.shape == shape, (name, value.shape, shape)
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            trt.calls.setdefault("executed", []).append(sorted(self.addresses))
            return True

    class Engine:
        """One input "input" (dynamic batch, profile 1..8) and ``outputs``, in the I/O order."""

        num_io_tensors = 1 + len(outputs)
        shapes = {"input": (-1, 3, 16, 16), **{name: shape for name, (shape, _, _) in outputs.items()}}

        def __init__(self):
            if major >= 11:  # 11 removed device_memory_size in favour of the _v2 property
                self.device_memory_size_v2 = 4096
            else:
                self.device_memory_size = 4096

        def get_tensor_name(self, i):
            return ["input", *outputs][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.float32 if name == "input" else getattr(trt, outputs[name][1])

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16)]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            if data == b"serialized engine":
                return Engine()
            self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: magic tag does not match")
            return None

    trt.TensorIOMode = enum.Enum("TensorIOMode", ["INPUT", "OUTPUT"])
    trt.float32, trt.float16, trt.int32, trt.int8, trt.bool = "float32", "float16", "int32", "int8", "bool"
    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


@pytest.fixture
def install_fake(monkeypatch):
    def install(major: int, **kwargs) -> types.ModuleType:
        trt = fake_tensorrt(major, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_module, "cuda_device_reason", lambda: None)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")
        monkeypatch.setattr(torch.cuda, "init", lambda: None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "Stream", lambda device: None)
        return trt
    return install


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_precision_follows_each_major_versions_api(major, precision, install_fake, exported, tmp_path):
    trt = install_fake(major)
    engine = get_runtime("tensorrt", workspace_bytes=1 << 28).build(
        exported["tiny"].onnx, tmp_path, precision=precision, min_batch=1, opt_batch=4, max_batch=8)
    calls = trt.calls
    assert engine == tmp_path / "model.engine" and engine.read_bytes() == b"serialized engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]  # no staging left
    assert calls["profile"] == ("input", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))
    assert calls["workspace"] == (trt.MemoryPoolType.WORKSPACE, 1 << 28)
    config_flags = calls["config"].flags
    strongly_typed = major >= 11
    assert calls["network_flags"] == (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
                                      if strongly_typed else 0)
    if precision == "fp32":
        assert calls["parsed_initializer_types"] == {onnx.TensorProto.FLOAT}
        assert trt.BuilderFlag.TF32 not in config_flags  # FP32 parity needs TF32 off
    elif strongly_typed:  # TensorRT 11: the precision is in the ONNX
        assert onnx.TensorProto.FLOAT16 in calls["parsed_initializer_types"]
        assert onnx.TensorProto.FLOAT not in calls["parsed_initializer_types"]
        assert calls["parsed_metadata"][PRECISION_KEY] == "fp16"
    else:  # TensorRT 10: FP32 ONNX, the builder may pick FP16 kernels
        assert calls["parsed_initializer_types"] == {onnx.TensorProto.FLOAT}
        assert trt.BuilderFlag.FP16 in config_flags
    meta = json.loads((tmp_path / "model.engine.json").read_text())
    assert meta["precision"] == precision and meta["strongly_typed"] is strongly_typed
    assert meta["tensorrt_version"] == trt.__version__ and meta["gpu"] == "Stand-in GPU"
    assert (meta["min_batch"], meta["opt_batch"], meta["max_batch"]) == (1, 4, 8)


def test_parser_errors_are_listed_and_nothing_is_written(install_fake, exported, tmp_path):
    install_fake(10, unsupported_ops=("Gemm", "MaxPool"))
    with pytest.raises(ArtifactError) as info:
        get_runtime("tensorrt").build(exported["tiny"].onnx, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{exported['tiny'].onnx}: TensorRT's ONNX parser failed:")
    assert "No importer registered for op: Gemm" in message and "op: MaxPool" in message
    assert list(tmp_path.iterdir()) == []


def test_a_static_batch_needs_a_matching_profile(install_fake, tmp_path):
    install_fake(10)
    path = export_test_onnx(tiny_cnn().eval(), (3, 16, 16), tmp_path / "static.onnx", dynamic_batch=False)
    with pytest.raises(ValueError, match="has a static batch of 2; build with min_batch=opt_batch=max_batch=2"):
        get_runtime("tensorrt").build(path, tmp_path / "a")
    engine = get_runtime("tensorrt").build(path, tmp_path / "b", min_batch=2, opt_batch=2, max_batch=2)
    assert engine.is_file()


@pytest.mark.parametrize("major", [10, 11])
def test_load_reports_the_engine(major, install_fake, exported, tmp_path):
    install_fake(major)
    rt = get_runtime("tensorrt")
    engine = rt.build(exported["tiny"].onnx, tmp_path, precision="fp16", min_batch=1, opt_batch=4, max_batch=8)
    session = rt.load(engine, SessionConfig(device="cuda", precision="fp16"))
    settings = session.settings
    assert settings["engine_device_memory_bytes"] == 4096  # device_memory_size_v2 on 11
    assert (settings["min_batch"], settings["opt_batch"], settings["max_batch"]) == (1, 4, 8)
    assert settings["precision"] == "fp16" and settings["strongly_typed"] is (major >= 11)
    assert settings["device"] == "cuda:0" and settings["device_name"] == "Stand-in GPU"
    assert session.input_name == "input" and session.input_shape == (None, 3, 16, 16)
    with pytest.raises(ValueError, match=r"was built for fp16; load it with SessionConfig\(precision='fp16'\)"):
        rt.load(engine, SessionConfig(device="cuda", precision="fp32"))


def test_an_engine_that_does_not_deserialize_names_the_file_and_the_error(install_fake, tmp_path):
    install_fake(10)
    bad = tmp_path / "model.engine"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError) as info:
        get_runtime("tensorrt").load(bad, SessionConfig(device="cuda"))
    message = str(info.value)
    assert message.startswith(f"{bad}: TensorRT cannot deserialize the engine")
    assert "magic tag does not match" in message
    with pytest.raises(ArtifactError, match="model.engine: TensorRT engine not found"):
        get_runtime("tensorrt").load(tmp_path / "missing" / "model.engine", SessionConfig(device="cuda"))
