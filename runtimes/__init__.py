"""Runtimes: exported file -> running session (torch, onnxruntime, openvino, tensorrt).

Public API::

    rt = get_runtime("openvino")                # list_runtimes() gives the names
    reason = rt.is_available(device="cpu")      # None, or why it cannot be used
    artifact = rt.build("model.onnx", "out/", precision="fp32", min_batch=1, opt_batch=8, max_batch=64)
    with rt.load(artifact, SessionConfig(device="cpu", threads=2, hint="latency")) as session:
        y = session.run(x)                      # float32 numpy in, first output out
        ys = session.run_all(x)                 # every output (a detector's heads), as session.output_names
        session.settings                        # what the session actually uses

Each runtime imports its SDK only when first used, so importing this package imports neither
onnxruntime, openvino nor tensorrt.
"""
import runtimes._onnxruntime  # noqa: F401  (each runtime module registers its runtime)
import runtimes._openvino  # noqa: F401
import runtimes._tensorrt  # noqa: F401
import runtimes._torch  # noqa: F401
from runtimes._bundle import Bundle, BundleConfig, load_bundle, package_versions, write_bundle
from runtimes._manifest_check import MANIFEST, RUNTIME_TARGET, SCHEMA_VERSION, TARGET_RUNTIME, BundleError
from runtimes._quantize import CALIBRATION_METHODS, Calibration, check_calibration, quantizable_layers
from runtimes._parity import ParityError, ParityResult, compare, compare_outputs
from runtimes._base import (ArtifactError, BuildConfig, Runtime, RuntimeUnavailable, Session, SessionConfig, get_runtime,
                    list_runtimes, register_runtime)

__all__ = [
    "Bundle", "BundleConfig", "BundleError", "ParityError", "ParityResult", "compare", "compare_outputs", "load_bundle",
    "package_versions", "write_bundle",
    "ArtifactError", "BuildConfig", "Runtime", "RuntimeUnavailable", "Session", "SessionConfig", "get_runtime",
    "list_runtimes", "register_runtime",
]

__all__ += ["CALIBRATION_METHODS", "Calibration", "check_calibration", "quantizable_layers", "MANIFEST", "RUNTIME_TARGET", "SCHEMA_VERSION", "TARGET_RUNTIME"]
