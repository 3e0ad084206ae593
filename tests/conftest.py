"""Shared fixtures: a real Mosquitto broker on a free loopback port, and paths to shared vectors.

Mosquitto must be installed (``.ci/run`` and ``scripts/test.sh`` install it from Debian's
packages). Each broker gets its own persistence directory so persistent sessions survive
a broker restart within one test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
FORMATS = REPO.parent / "shared" / "formats"
DATASETS = REPO.parent / "shared" / "datasets"


# Hypothesis: deterministic by default. "ci" (the default) derives every example from the
# test itself (derandomize) and keeps no example database, so a fresh clone and a rerun see
# the same examples and a failure found once is not replayed from .hypothesis/ forever after.
# HYPOTHESIS_PROFILE=explore searches with random seeds (and the database) when you want it.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("mosquitto is not installed: run scripts/test.sh (it installs it) or apt-get install mosquitto")


class Broker:
    """A Mosquitto process on 127.0.0.1:port that can be stopped and started again."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "user root\n"
        )

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen([_mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text(errors='replace')}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh, running broker for one test."""
    b = Broker(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def formats_dir() -> Path:
    if not FORMATS.is_dir():
        pytest.fail(f"shared wire formats not found at {FORMATS}")
    return FORMATS


@pytest.fixture(scope="session")
def manifest():  # type: ignore[no-untyped-def]
    """The bundled base model's manifest (models/base)."""
    from models.manifest import base_model_dir, load_manifest

    return load_manifest(base_model_dir())


@pytest.fixture(scope="session")
def session():  # type: ignore[no-untyped-def]
    """A real ONNX Runtime session of the bundled base model: CPU, one intra-op thread."""
    from models.manifest import base_model_dir

    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(base_model_dir() / "model.onnx"), opts, providers=["CPUExecutionProvider"])
