"""The status page in a real headless Chromium, with the demo running, and the Grafana
dashboard checked against what that running gateway exports on /metrics.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` packages
(installed here with apt-get when missing and root, as scripts/test.sh does for Mosquitto);
selenium drives them through the packaged chromedriver (no driver download, works offline).
Set STATUS_SCREENSHOT_DIR to keep the screenshots (docs/status-page*.png were made so).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.alerts.feedback import load_feedback

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.slow


def _ensure_chromium() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env,
                   capture_output=True, timeout=900)


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Demo:
    def __init__(self, proc: subprocess.Popen[str], url: str, token: str, out: Path) -> None:
        self.proc, self.url, self.token, self.out = proc, url, token, out
        self.state_dir = out / "state"

    def status(self) -> dict[str, Any]:
        code, body = _get(self.url + "api/status")
        assert code == 200, body
        return json.loads(body)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``lora-gateway demo`` running with its status page, until node 3's anomaly was raised."""
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "75", "--out", str(out), "--no-colour",
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        url = token = None
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"status page: (http://\S+/) \(operator token for .*: (\S+)\)", line)
            if m:
                url, token = m.group(1), m.group(2)
                break
        assert url and token, "".join(lines)[-3000:]
        d = Demo(proc, url, token, out)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if any(a["device_id"] == "3" and a["kind"] == "anomaly" and a["state"] == "raised"
                   for a in d.status()["alerts"]):
                break
            time.sleep(0.5)
        else:
            pytest.fail("node 3's anomaly alert never showed on /api/status")
        yield d
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1000", "--lang=en"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    """Full-page screenshot (the window grown to the page's height) into tmp_path and, when
    STATUS_SCREENSHOT_DIR is set, there too."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, max(600, min(int(height) + 40, 4000)))
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("STATUS_SCREENSHOT_DIR")
    if keep:
        shutil.copy(path, Path(keep) / name)


def test_status_page_in_headless_chromium(demo: Demo, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.wait import WebDriverWait

    # the devices, each with its radio and calibration state
    browser.get(demo.url + "?refresh=0")
    rows = browser.find_elements(By.CSS_SELECTOR, "table#devices tr.device")
    assert sorted(r.get_attribute("data-device") for r in rows) == ["1", "2", "3", "4", "5", "6"]
    assert "CPUExecutionProvider" in browser.find_element(By.ID, "provider").text
    node1 = browser.find_element(By.CSS_SELECTOR, 'tr.device[data-device="1"]').text
    assert "dBm" in node1 and "scoring" in node1, node1

    # node 3's chart: readings and scores with the threshold, its anomaly as a shaded span
    browser.find_element(By.LINK_TEXT, "3").click()
    WebDriverWait(browser, 20).until(lambda d: d.current_url.rstrip("/").endswith("/device/3"))
    browser.get(demo.url + "device/3?refresh=0")
    chart = browser.find_element(By.CSS_SELECTOR, "svg.device-chart")
    spans = chart.find_elements(By.CSS_SELECTOR, "rect.alert-span")
    assert [s.get_attribute("data-kind") for s in spans] == ["anomaly"], [s.get_attribute("outerHTML") for s in spans]
    assert float(spans[0].get_attribute("width")) >= 2
    assert chart.find_elements(By.CSS_SELECTOR, "g.score line.threshold")
    assert len(chart.find_elements(By.CSS_SELECTOR, "polyline.series")) == 3  # temperature, humidity, score
    # a node without a fault has a chart with no span
    browser.get(demo.url + "device/1?refresh=0")
    assert not browser.find_elements(By.CSS_SELECTOR, "svg.device-chart rect.alert-span")
    browser.get(demo.url + "device/3?refresh=0")
    _screenshot(browser, tmp_path, "status-page-device.png")

    # the operator marks node 3's anomaly a false alarm: stored in the feedback store
    browser.get(demo.url + "?refresh=0")
    row = browser.find_element(By.CSS_SELECTOR, 'tr.alert[data-device="3"]:has(form.fb)')
    key = row.get_attribute("data-key")
    row.find_element(By.NAME, "token").send_keys(demo.token)
    row.find_element(By.NAME, "note").send_keys("sensor in the sun")
    row.find_element(By.CSS_SELECTOR, "button.false-alarm").click()
    # the POST answers 303 back to the page, which then shows the verdict (wait for the new page)
    verdict = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, f'tr.alert[data-key="{key}"] .verdict')])
    assert "false alarm" in verdict[0]
    stored = load_feedback(demo.state_dir)
    assert stored[key]["label"] == "false_alarm" and stored[key]["note"] == "sensor in the sun"
    assert stored[key]["alert"]["device_id"] == "3" and stored[key]["alert"]["kind"] == "anomaly"
    _screenshot(browser, tmp_path, "status-page.png")

    # a wrong or missing token changes nothing
    code, _ = _get(demo.url + f"alerts/{key}/feedback", b"label=confirmed&token=wrong")
    assert code == 403
    assert load_feedback(demo.state_dir)[key]["label"] == "false_alarm"


def _dashboard_metric_names() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash.get("templating", {}).get("list", []) if isinstance(v.get("query"), str)]
    assert exprs
    return {n for e in exprs for n in re.findall(r"\b(lora_gateway_[a-z0-9_]+)", e)}


def test_grafana_dashboard_uses_only_exported_metrics(demo: Demo) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    code, body = _get(demo.url + "metrics")
    assert code == 200
    exported = {s.name for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    wanted = _dashboard_metric_names()
    missing = sorted(wanted - exported)
    assert not missing, f"deploy/grafana-dashboard.json uses metrics the gateway does not export: {missing}"
    # the three histograms are on the dashboard and filled by the demo's traffic
    for name in ("decision_latency_seconds", "inference_batch_seconds", "inference_batch_windows"):
        assert f"lora_gateway_{name}_bucket" in wanted
        count = [s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
                 if s.name == f"lora_gateway_{name}_count"]
        assert count and count[0] > 0, name
