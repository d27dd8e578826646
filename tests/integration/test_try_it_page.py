"""The try-it page (`GET /`) in a real headless Chromium: type a text, click Predict, read the label and the bars.

Chromium is driven over the DevTools protocol with `websockets` (already installed with Prefect): real
key and mouse events, no extra driver. Skipped where no Chromium is installed (`apt-get install chromium`).
A screenshot is saved as tests/_screenshots/try_it_page.png.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.http_server import ServerProcess, running_server

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "tests" / "_screenshots"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-default-browser-check", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--window-size=900,760", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
TEXT = "The striker scored twice in the cup final and the crowd sang until the whistle."

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, **params: Any) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"page never satisfied {expression!r}")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.eval(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, text: str) -> None:
        """Key events, one character at a time, into the focused element."""
        for ch in text:
            self.send("Input.dispatchKeyEvent", type="keyDown", text=ch, key=ch, unmodifiedText=ch)
            self.send("Input.dispatchKeyEvent", type="keyUp", key=ch)


@contextmanager
def chromium_page(profile: Path) -> Iterator[DevTools]:
    from websockets.sync.client import connect

    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port within 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def server(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tiny_package, tmp_path_factory.mktemp("try-it") / "server.log") as srv:
        yield srv


def test_the_page_is_served_self_contained(server: ServerProcess):
    r = httpx.get(f"{server.url}/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "<script src" not in r.text and "<link" not in r.text and "//cdn" not in r.text


def test_a_person_pastes_text_and_sees_the_label_and_a_bar_per_label(server: ServerProcess, tmp_path: Path):
    expected = httpx.post(f"{server.url}/invocations", json={"inputs": [TEXT]}, timeout=30).json()["predictions"][0]
    with chromium_page(tmp_path / "profile") as page:
        page.send("Network.enable")
        page.send("Page.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=900, height=700, deviceScaleFactor=1, mobile=False)
        page.send("Page.navigate", url=f"{server.url}/")
        page.wait_for("document.readyState === 'complete' && "
                      "document.querySelector('#model').textContent.startsWith('Model ready')")
        page.click("#text")
        page.type(TEXT)
        assert page.eval("document.querySelector('#text').value") == TEXT
        page.click("#predict")
        page.wait_for("document.querySelector('#result').dataset.state === 'ready'")
        label = page.eval("document.querySelector('#label').textContent")
        bars = page.eval("JSON.stringify([...document.querySelectorAll('#chart g.bar')]"
                         ".map(g => [g.dataset.label, Number(g.dataset.score), g.querySelector('rect + rect')"
                         ".getAttribute('width')]))")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = page.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        (SCREENSHOTS / "try_it_page.png").write_bytes(base64.b64decode(shot["data"]))

        # An empty text is refused on the page, without a request.
        page.eval("document.querySelector('#text').value = ''")
        page.click("#predict")
        assert page.wait_for("document.querySelector('#error').textContent") == "Paste some text first."
        requested = [e["params"]["request"]["url"] for e in page.events if e.get("method") == "Network.requestWillBeSent"]

    assert label == expected["label"]
    bars = json.loads(bars)
    assert [b[0] for b in bars] == sorted(expected["scores"], key=expected["scores"].get, reverse=True)
    for name, score, _width in bars:
        assert score == pytest.approx(expected["scores"][name], abs=1e-6)
    widths = [float(w) for _, _, w in bars]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # bars scale with the scores
    # Everything the page loaded or called was on this server: no CDN, no external request.
    assert requested and all(u.startswith(server.url) for u in requested), requested
    assert any(u == f"{server.url}/invocations" for u in requested)
    assert (SCREENSHOTS / "try_it_page.png").stat().st_size > 5_000
