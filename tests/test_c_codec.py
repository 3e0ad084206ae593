"""The C codec (firmware_bridge/firmware) built with gcc and run against the shared vectors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_bridge.shared_vectors import VECTOR_DIR

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware_bridge" / "firmware"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]


@pytest.fixture(scope="module")
def c_test_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is required to test the C codec")
    out = tmp_path_factory.mktemp("c_codec") / "test_bridge_codec"
    subprocess.run([gcc, *CFLAGS, "-o", str(out), str(FIRMWARE / "test_bridge_codec.c"),
                    str(FIRMWARE / "bridge_codec.c")], check=True, capture_output=True, text=True)
    return out


def test_c_codec_passes_every_shared_vector(c_test_binary: Path) -> None:
    files = sorted(str(p) for p in VECTOR_DIR.glob("*.hex"))
    assert len(files) >= 16
    run = subprocess.run([str(c_test_binary), *files], check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("PASS ") == len(files)


@pytest.mark.parametrize("vector, change", [
    ("uplink_lpp.hex", ("wire=00", "wire=0000")),          # an extra outcome-free byte is fine...
    ("uplink_hello.hex", ("rssi_x10=-990", "rssi_x10=-991")),
    ("uplink_max.hex", ("seq=4660", "seq=4661")),
    ("bad_crc.hex", ("expect=crc", "expect=truncated")),
    ("cmd_ping.hex", ("seq=7", "seq=8")),
])
def test_c_host_test_fails_on_a_wrong_vector(c_test_binary: Path, tmp_path: Path, vector: str,
                                             change: tuple[str, str]) -> None:
    text = (VECTOR_DIR / vector).read_text()
    assert change[0] in text
    bad = tmp_path / vector
    bad.write_text(text.replace(change[0], change[1]))
    run = subprocess.run([str(c_test_binary), str(bad)], check=False, capture_output=True, text=True, timeout=30)
    if vector == "uplink_lpp.hex":  # leading extra delimiter: decodes the same, encodes differently
        assert run.returncode == 1 and "encoded bytes differ" in run.stdout
    else:
        assert run.returncode == 1, run.stdout


def test_makefile_builds_and_runs_the_host_test(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not installed (the gcc build above covers the codec)")
    work = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, work)
    run = subprocess.run(["make", "-s", "test", f"VECTORS={VECTOR_DIR}"], cwd=work,
                         check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 of" in run.stdout


def test_board_sketch_compiles_against_host_stubs() -> None:
    """The sketch uses the codec's API correctly (RadioLib and Arduino are stubbed)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    run = subprocess.run([gxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++",
                          f"-I{FIRMWARE / 'host_stubs'}", f"-I{FIRMWARE}", str(FIRMWARE / "bridge_board.ino")],
                         check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
