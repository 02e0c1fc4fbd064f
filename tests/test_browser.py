"""``index.html`` in headless Chromium, from ``file://``: the DOM, JavaScript on and off, no request leaves the page.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on fds
3 and 4), so no websocket library is needed. Screenshots land in each test's ``tmp_path`` (and in
``$FORKCHECK_BROWSER_ARTIFACTS`` when set, for CI to keep).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from forkcheck.report.html import render_html
from forkcheck.report.terminal import relative
from test_html_report import synthetic_report

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found (on Debian: apt-get install -y chromium)")

PROBE_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync")
NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND"
LOCAL_SCHEMES = ("file:", "data:", "about:", "chrome:", "devtools:")


class Browser:
    """One headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, *flags: str, timeout: float = 30.0, width: int = 1200):
        self.timeout = timeout
        self.width = width
        self.profile = tempfile.mkdtemp(prefix="forkcheck-chromium-")
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # Chromium reads commands on fd 3 and writes answers on fd 4
            read, write = os.dup(to_browser), os.dup(from_browser)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *PROBE_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", *flags,
             "about:blank"],
            close_fds=False, preexec_fn=on_fds_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable", session=True)
        self.resize(width)

    def resize(self, width: int, height: int = 900) -> None:
        """The viewport's size in CSS pixels (a phone is about 390 wide)."""
        self.width = width
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False,
                  session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params: Any) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(self._read(deadline))

    def open(self, path: Path, fragment: str = "") -> float:
        """Load the page and wait for its load event; returns the seconds that took."""
        self.events.clear()
        started = time.monotonic()
        self.call("Page.navigate", url=path.resolve().as_uri() + fragment, session=True)
        self.wait_for("Page.loadEventFired")
        return time.monotonic() - started

    def requested(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, path: Path, max_height: int = 6000) -> Path:
        """The whole page (up to ``max_height``): the window grows to the page, so everything is laid out."""
        height = 0
        for _ in range(5):
            now = min(int(self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]["height"]), max_height)
            if now == height:
                break
            height = now
            self.resize(self.width, height)
            time.sleep(0.2)  # a few frames (animation frames never come with JavaScript off)
        shot = self.call("Page.captureScreenshot", format="png", session=True)
        self.resize(self.width)
        path.write_bytes(base64.b64decode(shot["data"]))
        keep = os.environ.get("FORKCHECK_BROWSER_ARTIFACTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (EOFError, TimeoutError, OSError, RuntimeError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    chromium = Browser(NO_NETWORK)
    yield chromium
    chromium.close()


def _write(tmp_path: Path, report: dict, name: str = "index.html") -> Path:
    path = tmp_path / name
    path.write_text(render_html(report), encoding="utf-8")
    return path


def _only_local(requests: list[str]) -> None:
    outside = [url for url in requests if not url.startswith(LOCAL_SCHEMES)]
    assert not outside, f"the page requested {outside}"


def test_synthetic_report_in_the_browser(browser, tmp_path):
    page = _write(tmp_path, synthetic_report(12, complete=False, hostile=True))
    browser.open(page)
    _only_local(browser.requested())
    assert browser.js("window.__pwned") is None
    assert browser.js("document.querySelectorAll('details.item').length") == 12
    assert browser.js("document.querySelectorAll('details.item[open]').length") == 6  # fail and error
    assert browser.js("document.querySelector('.banner').innerText").startswith("Incomplete run.")
    assert browser.js("document.querySelector('.tile.v-fail .num').textContent") == "4"
    assert browser.js("document.getElementById('filters').hidden") is False
    assert browser.js("[...document.querySelectorAll('button.copy')].every(b => !b.hidden)") is True
    assert browser.js("document.querySelectorAll('figure.timeline .scroll svg').length") == 12
    labels = browser.js("[...document.querySelectorAll('.mark.conflict text')].map(t => t.textContent)")
    assert "aten::add_ · line 20" in labels and "1 writes" in labels and "2 writes" in labels
    arrows = browser.js("[...document.querySelectorAll('.arrow-label')].map(t => t.textContent)")
    assert "fork" in arrows and "wait" in arrows
    message = browser.js("document.querySelector('article.finding .message').textContent")
    assert "<script>window.__pwned = 1</script>" in message  # shown as text, never run
    browser.screenshot(tmp_path / "synthetic.png")


def test_filters_and_shared_links(browser, tmp_path):
    page = _write(tmp_path, synthetic_report(12))
    browser.open(page)
    visible = "[...document.querySelectorAll('details.item')].filter(d => !d.hidden).map(d => d.dataset.verdict)"
    browser.js("document.querySelector('input[value=pass]').click()")
    assert "pass" not in browser.js(visible) and len(browser.js(visible)) == 8
    browser.js("const s = document.querySelector('select[name=kind]'); s.value = 'nondeterminism';"
               "s.dispatchEvent(new Event('change'))")
    assert browser.js(visible) == ["fail", "fail"]  # items 2 and 6 have a nondeterminism finding
    assert browser.js("document.querySelector('.shown').textContent") == "showing 2 of 12"
    assert browser.js("[...document.querySelectorAll('article.finding')].filter(a => !a.hidden && "
                      "a.offsetParent).every(a => a.dataset.kind === 'nondeterminism')") is True
    race = browser.js("document.querySelector('article.finding[data-kind=race]').id")
    browser.js("document.querySelector('[data-action=collapse]').click()")
    assert browser.js("document.querySelectorAll('details.item[open]').length") == 0
    browser.js(f"location.hash = '#{race}'")
    browser.wait_for("Page.navigatedWithinDocument")
    assert browser.js(f"document.getElementById('{race}').closest('details').open") is True
    assert browser.js(f"!!document.getElementById('{race}').offsetParent") is True


def test_readable_with_javascript_disabled(tmp_path):
    page = _write(tmp_path, synthetic_report(12))
    browser = Browser(NO_NETWORK, "--blink-settings=scriptEnabled=false")
    try:
        browser.open(page)
        assert browser.js("document.getElementById('filters').offsetParent") is None  # no dead controls
        assert browser.js("[...document.querySelectorAll('button.copy')].every(b => !b.offsetParent)") is True
        assert browser.js("document.querySelector('.shown').textContent") == ""  # the page's script never ran
        finding = browser.js("document.querySelector('article.finding')."
                             "getBoundingClientRect().height")
        assert finding > 50
        text = browser.js("document.body.innerText")
        assert "input 'x' changed by aten::add_" in text and "--forkcheck-replay fc1.token0" in text
        browser.screenshot(tmp_path / "no-javascript.png")
    finally:
        browser.close()


def test_no_request_leaves_the_page(browser, tmp_path):
    report = synthetic_report(6, hostile=True)
    report["results"][0]["findings"][0]["message"] += (
        '<link rel="stylesheet" href="https://example.invalid/a.css"><style>@import "http://example.invalid/b.css";'
        '</style><iframe src="http://example.invalid/"></iframe>')
    page = _write(tmp_path, report)
    browser.open(page)
    _only_local(browser.requested())
    resources = browser.js(
        "[...document.querySelectorAll('[src],[href],link,script,img,iframe,object,embed')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href') || '')")
    assert all(url.startswith(("#", "data:")) or url == "" for url in resources), resources
    assert browser.js("document.styleSheets.length") == 1
    assert browser.js("[...document.styleSheets].every(s => s.href === null)") is True
    assert browser.js("document.querySelectorAll('details.item').length") == 6  # rendered all the same


def test_a_thousand_targets_open(browser, tmp_path):
    """A large report opens whole (how fast is benchmarks/bench_report.py's to measure, not a test's)."""
    page = _write(tmp_path, synthetic_report(1000), "big.html")
    browser.open(page)
    assert browser.js("document.querySelectorAll('details.item').length") == 1000


EXAMPLE = textwrap.dedent('''
    from torch import Tensor

    import strategies as fst
    from forkcheck import fork_safe


    @fork_safe(x=fst.tensors(shape=(2, 3)), examples=5, schedules=3)
    def shift_in_place(x: Tensor) -> Tensor:
        x.add_(1)
        return x.sum()


    @fork_safe(x=fst.tensors(shape=(2, 3)), examples=5, schedules=3)
    def shifted(x: Tensor) -> Tensor:
        return (x + 1).sum()
''')


def _fits(browser: Browser) -> None:
    """Nothing wider than the window: no sideways scrolling (a timeline or source line scrolls in its own box)."""
    wide = browser.js("document.documentElement.scrollWidth")
    assert wide <= browser.js("document.documentElement.clientWidth"), f"the page is {wide} px wide"


def _fits_a_phone(browser: Browser, screenshot: Path) -> None:
    """At 390 px the page fits (``_fits``); a screenshot to look at; the window back at 1200 px."""
    browser.resize(390)
    try:
        _fits(browser)
        hidden = browser.js("[...document.querySelectorAll('figure.timeline')].filter(f => {"
                            " const box = f.querySelector('.scroll'), hint = f.querySelector('.scroll-hint');"
                            " return box.scrollWidth > box.clientWidth"
                            " && !(hint && getComputedStyle(hint).display !== 'none'); }).length")
        assert hidden == 0, f"{hidden} timelines scroll sideways with no hint that they do"
        browser.screenshot(screenshot)
    finally:
        browser.resize(1200)


def test_the_page_fits_a_phone(tmp_path):
    report = synthetic_report(12)
    report["results"][0]["nodeid"] = "tests/models/test_a_rather_long_module_name.py::TransformerEncoderLayer"
    page = _write(tmp_path, report)
    for flags in ((), ("--blink-settings=scriptEnabled=false",)):
        phone = Browser(NO_NETWORK, *flags, width=390)
        try:
            phone.open(page)
            _fits(phone)
            assert phone.js("document.querySelector('article.finding .message').getBoundingClientRect().width") > 250
            phone.screenshot(tmp_path / f"phone{'-no-javascript' if flags else ''}.png")
        finally:
            phone.close()


@pytest.mark.slow
def test_a_real_report(browser, tmp_path):
    (tmp_path / "test_ops.py").write_text(EXAMPLE)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--forkcheck-seed", "3",
                          "test_ops.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    page = tmp_path / "reports" / "index.html"
    browser.open(page)
    _only_local(browser.requested())
    verdicts = browser.js("Object.fromEntries([...document.querySelectorAll('details.item')]"
                          ".map(d => [d.querySelector('.nodeid').textContent, d.dataset.verdict]))")
    assert verdicts == {"test_ops.py::shift_in_place": "fail", "test_ops.py::shifted": "pass"}
    finding = browser.js("document.querySelector('article.finding').innerText")
    assert "input-mutation" in finding and "input 'x' changed" in finding
    assert "x.add_(1)" in browser.js("document.querySelector('pre.source .hit').textContent")
    assert browser.js("document.querySelector('pre.source .hit .ln').textContent") == "10"
    replay = browser.js("document.querySelector('.replay code').textContent")
    command = json.loads((tmp_path / "reports" / "forkcheck.json").read_text())["command"]
    assert command.endswith(" -m pytest")  # as this run was started, by the same interpreter
    assert replay.startswith(f"{command} 'test_ops.py::shift_in_place' --forkcheck-replay fc1.")
    # the serial run showed it (forks inline): it is said so, and no fork/wait lanes are drawn for it
    assert "the serial reference run" in finding
    assert browser.js("document.querySelectorAll('figure.timeline .lane').length") == 0
    shot = browser.screenshot(tmp_path / "real-report.png")
    print(f"screenshot: {shot}")

    # the replay command as the terminal printed it, run by the shell; its row goes beside the one it replays
    printed = next(line for line in run.stdout.splitlines() if line.startswith("  replay: ")).removeprefix("  replay: ")
    assert printed == replay
    again = subprocess.run(["bash", "-c", printed], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "reproduced 10 of 10" in again.stdout, again.stdout + again.stderr
    browser.open(page)
    assert browser.js("document.querySelectorAll('details.item').length") == 2  # merged, not overwritten
    replayed = browser.js("document.querySelector('details.item.v-fail .replayed').innerText")
    assert "reproduced 10 of 10 (10 with a wrong outcome)" in replayed
    _fits_a_phone(browser, tmp_path / "merged-report-phone.png")


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_examples_report(browser, tmp_path):
    """What a newcomer opens first: each failing example says what went wrong, where, and how to replay it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # e.g. an outer xdist worker's
    subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "examples"), "-q", "-p", "no:cacheprovider",
                    "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), "--forkcheck-seed", "1",
                    "--forkcheck-report", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, timeout=600)
    report = json.loads((tmp_path / "forkcheck.json").read_text())
    rows = report["results"]
    assert report["command"].endswith(f" -m pytest --forkcheck-report {tmp_path}")  # replays join its rows
    browser.open(tmp_path / "index.html")
    _only_local(browser.requested())
    assert browser.js("document.querySelectorAll('details.item').length") == len(rows)
    for verdict in ("fail", "pass", "error"):
        expected = sum(row["verdict"] == verdict for row in rows)
        assert browser.js(f"document.querySelector('.tile.v-{verdict} .num').textContent") == str(expected)
    failing = [row for row in rows if row["verdict"] == "fail"]
    assert failing, "the examples include unsafe code"
    for row in failing:
        item = f"[...document.querySelectorAll('details.item')].find(d => d.querySelector('.nodeid').textContent " \
               f"=== {json.dumps(row['nodeid'])})"
        first = row["findings"][0]
        assert browser.js(f"{item}.querySelector('article.finding .message').textContent") == relative(
            first["message"], report["rootdir"])
        assert browser.js(f"{item}.querySelector('.replay code').textContent").startswith(
            f"{report['command']} '{row['nodeid']}' --forkcheck-replay fc1.")
        if first.get("location"):
            assert browser.js(f"!!{item}.querySelector('pre.source .hit')") is True
        marks = browser.js(f"{item}.querySelectorAll('article.finding')[0]"
                           ".querySelectorAll('figure.timeline .mark.conflict').length")
        if (first.get("detail") or {}).get("run") == "serial":  # forks inline: no task lanes
            assert marks == 0
        elif first.get("tasks"):
            assert marks >= 1
    text = browser.js("document.body.innerText")
    assert report["rootdir"] + "/" not in text  # paths relative to the rootdir
    browser.screenshot(tmp_path / "examples-report.png")
    _fits_a_phone(browser, tmp_path / "examples-report-phone.png")
