"""Every command README.md shows runs as printed, from the repository root.

The commands are the lines of README's ```bash blocks and the inline code spans that start
with ``lora-gateway `` or ``scripts/``. Each runs in bash with this test's virtual
environment first on PATH (so ``lora-gateway`` is the one under test) and must exit 0.
Skipped, each with its reason in SKIP below: the commands that install into system paths
as root or need systemd, and ``scripts/test.sh`` (it is this test suite). ``scripts/demo.sh``
runs as printed with DURATION=15 in its environment (the README's own knob), so it takes
15 s rather than 45.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# (pattern, why it is not run here)
SKIP: tuple[tuple[str, str], ...] = (
    (r"^scripts/test\.sh", "it is this test suite; running it here would recurse"),
    (r"systemctl|/etc/systemd/", "needs systemd and root (installs and starts the service)"),
    (r"/opt/lora-gateway", "installs into /opt as root (a production virtual environment)"),
    (r"/etc/lora-gateway", "needs root: installs the config under /etc (or reads the one installed there)"),
    (r"^lora-gateway cluster ", "needs a RabbitMQ broker; tests/test_cluster_rabbitmq.py runs it against its own node"),
)


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"^\s*```(?:bash|sh|shell|console)\n(.*?)^\s*```", text, re.S | re.M):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    prose = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if re.match(r"(lora-gateway|scripts/)\S*(\s|$)", span):
            commands.append(span.strip())
    return list(dict.fromkeys(commands))


def skip_reason(command: str) -> str | None:
    for pattern, why in SKIP:
        if re.search(pattern, command):
            return why
    if command.startswith("lora-gateway doctor") and os.geteuid() != 0 and not os.access("/var/lib", os.W_OK):
        return "doctor checks the default state dir /var/lib/lora-gateway, which needs root to create"
    return None


def test_readme_shows_the_commands_a_newcomer_needs() -> None:
    commands = readme_commands()
    for expected in ("scripts/demo.sh", "scripts/test.sh", "lora-gateway config check deploy/gateway.example.toml",
                     "lora-gateway decode deploy/examples/uplink-chirpstack-v4.json", "lora-gateway doctor"):
        assert expected in commands, commands


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_printed(command: str, tmp_path: Path) -> None:
    why = skip_reason(command)
    if why:
        pytest.skip(why)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "DURATION": "15"}
    if not command.startswith("scripts/"):
        # our own commands must not warn; the setup scripts run pip, whose build backend
        # (setuptools) emits informational warnings that are not ours to fix
        env["PYTHONWARNINGS"] = "error"
    proc = subprocess.run(["bash", "-c", "set -o pipefail; " + command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if command.startswith("scripts/demo.sh"):
        assert "done:" in proc.stdout and "0 quarantined" in proc.stdout, proc.stdout[-2000:]
