"""``lora-gateway demo``: the whole pipeline over the pty simulator, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_pipeline_and_alerts_on_the_faulty_node(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "45", "--out", str(out), "--no-colour"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ALERT RAISED  node 3 anomaly" in proc.stdout, proc.stdout[-3000:]
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    node3 = [a for a in alerts if a["device_id"] == "3" and a["kind"] == "anomaly"]
    assert node3 and node3[0]["state"] == "raised" and node3[0]["score"] > 3
    assert any(a["state"] == "cleared" for a in node3)
    assert "0 quarantined" in proc.stdout
