"""Eager PyTorch, the reference runtime: a directory saved by ``compressor.save_model`` or a module."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from compressor.common.errors import ModelFormatError
from runtimes._base import (ArtifactError, BuildConfig, Runtime, RuntimeUnavailable, Session, SessionConfig,
                    cuda_device_reason, import_sdk, register_runtime)


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Compute FP32 CUDA convs and matmuls in IEEE FP32, not TF32, within the block.

    cuDNN convs default to TF32 (10 mantissa bits), which breaks FP32 parity (~1e-3 relative).
    The flags are process-wide, so they are set around each run and restored afterwards.
    """
    import torch  # optional SDK: torch

    backends = torch.backends
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):  # torch >= 2.9
        flags = [(backends.cudnn.conv, "fp32_precision", "ieee"), (backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        flags = [(backends.cudnn, "allow_tf32", False), (backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in flags]
    try:
        for owner, name, value in flags:
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name, _), value in zip(flags, saved):
            setattr(owner, name, value)


class TorchSession(Session):
    """Runs the module under ``torch.inference_mode()``.

    A module returning several tensors (a tuple, list or dict, nested or not) has the outputs and
    output names of its ONNX export (:func:`compressor.deploy.flatten_outputs`); they are known
    after the first run.

    ``torch.set_num_threads`` and ``torch.set_flush_denormal`` are process-wide (the latter per
    calling thread), so ``run`` sets both again whenever they differ from this session's, rather
    than trusting what was set at load time.
    """

    _borrows_output = True  # a model may return a view of its input or of its own buffers

    def __init__(self, module: Any, device: Any, config: SessionConfig, source: str):
        import torch  # optional SDK: torch
        from compressor.deploy import flatten_outputs  # optional SDK: torch (the export's output names)

        self._flatten = flatten_outputs
        self._module = module
        self._device = device
        self._dtype = torch.float16 if config.precision == "fp16" else torch.float32
        self._threads = config.threads
        self._cpu = device.type == "cpu"
        self._strict_fp32 = device.type == "cuda" and self._dtype == torch.float32
        self._apply_thread_settings()
        # denormals make CPU kernels 10-100x slower; flushing them is what deployed runtimes do
        flush = bool(torch.set_flush_denormal(True)) if self._cpu else None
        super().__init__(
            runtime="torch", input_name="input", input_dtype=np.float32,
            settings={
                "runtime": "torch", "version": torch.__version__,
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "threads": torch.get_num_threads(),
                "inter_op_threads": torch.get_num_interop_threads(),
                "hint": None,
                "precision": config.precision,
                "flush_denormal": flush,
                "tf32": False if self._strict_fp32 else None,
                "inference_mode": True,
                "artifact": source,
            })

    @property
    def native(self) -> Any:
        return self._module

    def _apply_thread_settings(self) -> None:
        import torch  # optional SDK: torch

        if self._threads is not None and torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)

    def _run(self, x: np.ndarray, *, all_outputs: bool) -> list[np.ndarray]:
        import torch  # optional SDK: torch

        self._apply_thread_settings()
        if self._cpu:
            torch.set_flush_denormal(True)
        strict = ieee_fp32() if self._strict_fp32 else contextlib.nullcontext()
        with torch.inference_mode(), strict:
            batch = torch.from_numpy(x if x.flags.writeable else x.copy()).to(self._device, self._dtype)
            try:
                outputs = self._flatten(self._module(batch))
            except ValueError as err:  # nothing but None and empty containers
                raise TypeError(str(err)) from None
            self._output_names = [name for name, _ in outputs]
            # .cpu() waits for the CUDA kernels
            return [(t.float() if t.is_floating_point() else t).cpu().numpy()
                    for _, t in (outputs if all_outputs else outputs[:1])]

    def _close(self) -> None:
        del self._module


@register_runtime("torch")
class TorchRuntime(Runtime):
    """Eager PyTorch on the CPU or CUDA. Its artifact is a directory written by
    ``compressor.save_model`` (loaded with ``compressor.load_model``) or an ``nn.Module`` (copied,
    so the caller's module is left as it was); ``build`` returns it unchanged.

    Args:
        allow_pickle: let ``load`` open models saved with ``format="pickle"`` (runs code from the file).
    """

    install = "pip install torch"
    source_format = "torch"
    precisions = ("fp32", "fp16")  # INT8 artifacts are onnxruntime's, OpenVINO's and TensorRT's
    loader_modules = ("compressor",)  # compressor.load_model reads the saved-model format

    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle

    def _sdk(self) -> Any:
        return import_sdk("torch", "torch", self.install)

    def _device_reason(self, sdk: Any, device: str) -> str | None:
        return None if device == "cpu" else cuda_device_reason()

    def devices(self) -> list[str]:
        try:
            self._sdk()
        except RuntimeUnavailable:
            return []
        return ["cpu"] + ([] if cuda_device_reason() else ["cuda"])

    def _build(self, sdk: Any, source: Any, out_dir: Path, config: BuildConfig) -> Any:
        if isinstance(source, Path):
            self._check_saved_dir(source)
        elif not isinstance(source, sdk.nn.Module):
            raise TypeError(f"torch builds from a saved model directory or an nn.Module, got {type(source).__name__}")
        return source

    @staticmethod
    def _check_saved_dir(path: Path) -> None:
        if not path.exists():
            raise ArtifactError(f"{path}: saved model directory not found")
        if not path.is_dir():
            raise ArtifactError(f"{path}: the torch runtime loads a directory saved by compressor.save_model "
                                f"(or an nn.Module), not a {path.suffix or 'plain'} file")

    def _load(self, sdk: Any, artifact: Any, config: SessionConfig) -> Session:
        if isinstance(artifact, Path):
            self._check_saved_dir(artifact)
            from compressor.deploy import load_model  # optional SDK: torch (the saved-model format needs it)

            try:
                module = load_model(artifact, allow_pickle=self.allow_pickle)
            except ModelFormatError as err:
                raise ArtifactError(f"{artifact}: cannot load the saved model ({err})") from err
            source = str(artifact)
        elif isinstance(artifact, sdk.nn.Module):
            module, source = copy.deepcopy(artifact), type(artifact).__name__
        else:
            raise TypeError(f"torch loads a saved model directory or an nn.Module, got {type(artifact).__name__}")
        device = sdk.device("cpu" if config.device == "cpu" else "cuda")
        dtype = sdk.float16 if config.precision == "fp16" else sdk.float32
        module = module.to(device=device, dtype=dtype).eval()
        return TorchSession(module, device, config, source)
