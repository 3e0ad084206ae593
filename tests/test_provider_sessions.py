"""Execution providers on real sessions: CUDA's TF32 option, and a preferred provider that is
missing or fails to initialise costs one log line, not ONNX Runtime's multi-line block."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnxruntime as ort
import pytest

from model_fixtures import make_base
from models.providers import CPU, choose_providers, create_session, provider_options
from models.runtime import ModelRuntime

CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


def test_tf32_reaches_the_cuda_provider_options_off_by_default() -> None:
    chosen = [TRT, CUDA, CPU]
    assert provider_options(chosen) == [(TRT, {}), (CUDA, {"use_tf32": "0"}), (CPU, {})]
    assert dict(provider_options(chosen, cuda_tf32=True))[CUDA] == {"use_tf32": "1"}
    assert provider_options([CPU], cuda_tf32=True) == [(CPU, {})]


def test_config_cuda_tf32_is_off_by_default() -> None:
    from gateway.config import ModelSection

    assert ModelSection().cuda_tf32 is False
    assert ModelSection(cuda_tf32=True).cuda_tf32 is True


def test_missing_tensorrt_is_one_log_line_and_nothing_on_stdout_or_stderr(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    base = make_base(tmp_path / "base")
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="models"):
        rt = ModelRuntime.load(base, [TRT, "CPUExecutionProvider"])
    out, err = capfd.readouterr()  # file-descriptor level: ONNX Runtime's C++ logger writes there
    assert rt.providers_in_use[0] == CPU
    mentions = [r for r in caplog.records if "Tensorrt" in r.getMessage()]
    assert len(mentions) == 1, [r.getMessage() for r in caplog.records]
    assert "\n" not in mentions[0].getMessage()
    if TRT not in ort.get_available_providers():
        assert mentions[0].levelno == logging.INFO and "not available in this onnxruntime build" in mentions[0].getMessage()
    assert "EP Error" not in out + err and "Tensorrt" not in out + err, (out, err)


def test_a_provider_whose_session_creation_raises_is_dropped_with_one_reason(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The retry path of create_session on a real session. On a CPU-only build the one way
    to make ONNX Runtime's own constructor raise for a provider is its "not in available
    provider names" warning turned into an error; on a GPU box the same path takes a
    TensorRT without libnvinfer. ONNX Runtime's fallback (its "EP Error" block) stays off."""
    if TRT in ort.get_available_providers():
        pytest.skip("TensorRT is available in this build: nothing to fail")
    base = make_base(tmp_path / "base")
    capfd.readouterr()
    opts = ort.SessionOptions()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session, failed = create_session(base / "model.onnx", opts, [TRT, CPU])
    out, err = capfd.readouterr()
    assert session.get_providers() == [CPU]
    assert len(failed) == 1 and failed[0].startswith(f"{TRT}: failed to initialise (")
    assert "\n" not in failed[0]
    assert "EP Error" not in out + err


def test_a_model_that_cannot_load_on_cpu_still_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    chosen, _ = choose_providers(["cpu"])
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        create_session(bad, ort.SessionOptions(), chosen)


def test_gpu_name_is_unknown_without_a_gpu_or_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from models.providers import gpu_name

    if shutil.which("nvidia-smi") or any(d.device.type == ort.OrtHardwareDeviceType.GPU
                                         for d in getattr(ort, "get_ep_devices", list)()):
        assert gpu_name() != ""  # a GPU box: whatever its name, never empty
        return
    monkeypatch.setenv("PATH", "")
    assert gpu_name() == "unknown"
