"""The report page in a real headless Chromium, driven through the Chrome DevTools protocol.

The page is opened from the file system with the network watched: it must load without a
console error or an uncaught exception and without any request but the page itself; every
interactive figure must render (an SVG per figure, traces drawn) and every inline image decode;
and real input must change what is shown: the mouse over a point shows its hover text, a click
on a legend entry hides that line, unticking a value in the filter hides the lines of that value.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from analysis_synthetic import quickstart_like
from gradsweep.analysis.cli import build_report

aiohttp = pytest.importorskip("aiohttp")  # installed with ray[default]; the DevTools protocol is a websocket


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One browser tab over the DevTools protocol: commands, and the events seen so far."""

    def __init__(self, ws: Any, session: str) -> None:
        self.ws, self.session, self.events, self._id, self._waiting = ws, session, [], 0, {}

    async def pump(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, session: bool = True, **params: Any) -> dict:
        self._id += 1
        future = asyncio.get_running_loop().create_future()
        self._waiting[self._id] = future
        message = {"id": self._id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        await self.ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 60)
        assert "error" not in reply, (method, reply["error"])
        return reply.get("result", {})

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    async def mouse(self, kind: str, x: float, y: float, **extra: Any) -> None:
        await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    async def click(self, x: float, y: float) -> None:
        await self.mouse("mouseMoved", x, y)
        await self.mouse("mousePressed", x, y, button="left", clickCount=1)
        await self.mouse("mouseReleased", x, y, button="left", clickCount=1)


async def _session(browser: str, page: Path, profile: Path, check) -> None:  # noqa: ANN001 - check(Page) coroutine
    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", "--window-size=1400,1000", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            url = found.group(1) if found else None
            assert line or proc.poll() is None, "chromium exited before listening"
        assert url, "chromium did not print its DevTools address"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            tab = Page(ws, "")
            pump = asyncio.create_task(tab.pump())
            target = await tab.send("Target.createTarget", url="about:blank")
            attached = await tab.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
            tab.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                await tab.send(f"{domain}.enable")
            await tab.send("Page.navigate", url=page.as_uri())
            await tab.until("document.readyState === 'complete'")
            await check(tab)
            pump.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser_and_report(tmp_path_factory: pytest.TempPathFactory):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup.sh --test installs it on Debian)")
    folder = tmp_path_factory.mktemp("browser") / "quickstart"
    quickstart_like(folder, seeds=(0,))
    return browser, build_report(folder)


def _run(browser: str, page: Path, profile: Path, check) -> None:  # noqa: ANN001
    asyncio.run(_session(browser, page, profile, check))


def test_page_loads_offline_without_errors_and_every_figure_renders(browser_and_report, tmp_path: Path) -> None:
    browser, report = browser_and_report
    plots = sum(1 for s in report.sections for f in s.figures if f.plot is not None)
    images = sum(1 for s in report.sections for f in s.figures if f.plot is None)
    assert plots >= 10 and images >= 1

    async def check(tab: Page) -> None:
        await tab.until(f"document.body.getAttribute('data-plots-rendered') === '{plots}'")
        drawn = await tab.js(
            "Array.from(document.querySelectorAll('.gs-plot')).map(d => [!!d.querySelector('svg.main-svg'),"
            " d.querySelectorAll('.scatterlayer .trace, .boxlayer .trace, .heatmaplayer image').length])"
        )
        assert len(drawn) == plots
        assert all(svg and traces > 0 for svg, traces in drawn), drawn
        await tab.until("document.body.getAttribute('data-images-total') !== null")
        assert await tab.js("document.body.getAttribute('data-images-loaded')") == str(images)
        errors = [e for e in tab.events if e["method"] == "Runtime.exceptionThrown"
                  or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                  or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
        assert not errors, errors[:3]
        requests = [e["params"]["request"]["url"] for e in tab.events if e["method"] == "Network.requestWillBeSent"]
        assert requests and all(u == report.index.as_uri() or u.startswith("data:") for u in requests), requests

    _run(browser, report.index, tmp_path / "profile", check)


def test_hover_legend_click_and_filter_change_what_is_shown(browser_and_report, tmp_path: Path) -> None:
    browser, report = browser_and_report
    plots = sum(1 for s in report.sections for f in s.figures if f.plot is not None)

    async def check(tab: Page) -> None:
        await tab.until(f"document.body.getAttribute('data-plots-rendered') === '{plots}'")
        # the first figure of the probe section: CDG's loss decrease vs lr
        gd = "document.querySelector('#section-probe ~ figure .gs-plot')"
        await tab.js(f"{gd}.scrollIntoView({{block: 'center'}}), true")
        # hover: the mouse over the first point of the first line shows its parameters and numbers
        point = await tab.js(
            f"(() => {{ const gd = {gd}; const fl = gd._fullLayout; const i = gd.data.findIndex(t => t.mode === 'lines+markers');"
            " const t = gd.data[i]; const r = gd.getBoundingClientRect();"
            " return [r.left + fl.xaxis._offset + fl.xaxis.d2p(t.x[2]), r.top + fl.yaxis._offset + fl.yaxis.d2p(t.y[2])]; })()"
        )
        assert await tab.js(f"{gd}.querySelectorAll('.hoverlayer .hovertext').length") == 0
        await tab.mouse("mouseMoved", point[0], point[1])
        hover = await tab.until(f"{gd}.querySelector('.hoverlayer .hovertext') && {gd}.querySelector('.hoverlayer').textContent")
        assert "lr=0.3" in hover and "epsilon=" in hover and "median" in hover, hover
        # legend: a click on the first entry hides that line (and its band) in every panel
        before = await tab.js(f"{gd}.querySelectorAll('.scatterlayer .trace').length")
        box = await tab.js(
            f"(() => {{ const r = {gd}.querySelector('.legend .traces .legendtoggle').getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        await tab.click(box[0], box[1])
        hidden = await tab.until(f"{gd}.data.filter(t => t.visible === 'legendonly').length")
        assert hidden >= 1
        assert await tab.js(f"{gd}.querySelectorAll('.scatterlayer .trace').length") < before
        # filter: unticking epsilon=0.01 hides its lines in every figure; ticking it again brings
        # them back, and the line hidden from the legend stays hidden
        shown = "Array.from(document.querySelectorAll('.gs-plot')).reduce((n, d) => n + d.data.filter(t => t.visible !== false).length, 0)"
        box = "document.querySelector(\"#filter fieldset[data-column='estimator.epsilon'] input[value='0.01']\")"
        count = await tab.js(shown)
        await tab.js(f"{box}.click(), true")
        assert await tab.until(f"{shown} < {count} && {shown}") < count
        assert await tab.js(f"{gd}.data.filter(t => t.name.startsWith('CDG(epsilon=0.01)') && t.visible !== false).length") == 0
        await tab.js(f"{box}.click(), true")
        assert await tab.until(f"{shown} === {count}")
        assert await tab.js(f"{gd}.data.filter(t => t.visible === 'legendonly').length") == hidden

    _run(browser, report.index, tmp_path / "profile", check)
