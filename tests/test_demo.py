"""``lora-gateway demo``: the whole pipeline over the pty simulator, as a newcomer runs it
(from the repository's folder, with the relative ``--out`` README's script uses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_pipeline_and_alerts_on_the_faulty_node(tmp_path: Path) -> None:
    stale = tmp_path / "demo" / "alerts.jsonl"
    stale.parent.mkdir()
    stale.write_text('{"from": "a previous run"}\n')  # each run starts a new file
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "45", "--out", "demo", "--no-colour",
         "--listen", ""],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "error", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ALERT RAISED  node 3 anomaly" in proc.stdout, proc.stdout[-3000:]
    # the clear names the channel that was raised (not the least calm one at the clear)
    assert "ALERT CLEARED node 3 anomaly [info] anomaly cleared channel=temperature" in proc.stdout, proc.stdout[-3000:]
    # the console counts open alerts: 1 while raised, 0 after the clear
    status = [line for line in proc.stdout.splitlines() if "open alerts" in line]
    assert any("open alerts  1" in line for line in status) and "open alerts  0" in status[-1]
    assert "learning each node's normal for 7 simulated days" in proc.stdout
    # alerts where the console and README say (a relative --out is not put under the state dir)
    assert not (tmp_path / "demo" / "state" / "demo").exists()
    alerts = [json.loads(line) for line in (tmp_path / "demo" / "alerts.jsonl").read_text().splitlines()]
    assert all("from" not in a for a in alerts)
    node3 = [a for a in alerts if a["device_id"] == "3" and a["kind"] == "anomaly"]
    assert node3 and node3[0]["state"] == "raised" and node3[0]["score"] > 3
    assert node3[0]["details"]["channel"] == "temperature"
    assert any(a["state"] == "cleared" and a["details"]["channel"] == "temperature" for a in node3)
    assert "0 quarantined" in proc.stdout and "(0 still open)" in proc.stdout
