"""A tiny headless-Chromium driver for the report tests, over the DevTools protocol and the standard library.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands on its fd 3 and writes
replies and events on its fd 4, as JSON messages each ended by a NUL byte: no websocket library,
no open port.

    with Chromium() as browser:
        result = browser.check_page(Path("report.html"), screenshot=Path("shot.png"),
                                    measure={"width": "document.documentElement.scrollWidth"})
        result.broken_images, result.errors, result.measured["width"]
"""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")

# Every <img> that did not load: incomplete, or zero natural width (a broken or empty source).
BROKEN_IMAGES_JS = """
Array.from(document.images)
  .filter(image => !(image.complete && image.naturalWidth > 0))
  .map(image => (image.getAttribute('src') || '').slice(0, 80))
"""


@dataclass
class PageCheck:
    images: int
    broken_images: list
    errors: list = field(default_factory=list)
    title: str = ""
    measured: dict = field(default_factory=dict)  # check_page's ``measure`` expressions, evaluated


class Chromium:
    def __init__(self, executable=CHROMIUM, timeout=30.0):
        self.executable, self.timeout = str(executable), timeout
        self._next_id, self._buffer, self.events = 0, b"", []

    def __enter__(self):
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def at_fds_3_and_4():
            # In the child, before exec: the pipe ends become fds 3 (commands in) and 4 (replies out).
            # Copied above 9 first, so that one dup2 never overwrites the other end.
            read_end = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
             f"--user-data-dir={self._profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # close_fds=False: subprocess would close fds 3 and 4 after preexec_fn; the other
            # descriptors of this process are not inheritable (Python's default), so none leaks.
            close_fds=False, preexec_fn=at_fds_3_and_4)
        os.close(to_browser_read)
        os.close(from_browser_write)
        return self

    def __exit__(self, *exc):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self._profile, ignore_errors=True)

    # --- the protocol ---

    def _read_message(self, deadline):
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, session=None, **params):
        """Send one command and wait for its reply; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, session, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._read_message(deadline))

    # --- what the tests need ---

    def check_page(self, html_file, screenshot=None, width=1280, measure=None):
        """Load a file in a ``width``-px window, then report its broken images and console errors, and the
        values of the JavaScript expressions of ``measure`` (``{name: expression}``); optionally save a
        full-page PNG."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=900, deviceScaleFactor=1,
                  mobile=False)
        self.events.clear()
        self.send("Page.navigate", session, url=Path(html_file).resolve().as_uri())
        self.wait_for("Page.loadEventFired", session)
        broken = self.evaluate(session, BROKEN_IMAGES_JS)
        result = PageCheck(images=self.evaluate(session, "document.images.length"), broken_images=broken,
                           title=self.evaluate(session, "document.title"))
        result.errors = self._errors(session)
        result.measured = {name: self.evaluate(session, expression) for name, expression in (measure or {}).items()}
        if screenshot is not None:
            size = self.send("Page.getLayoutMetrics", session)["cssContentSize"]
            height = min(int(size["height"]), 12000)  # a screenshot of a very long page is capped
            shot = self.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        self.send("Target.closeTarget", targetId=target)
        return result

    def evaluate(self, session, expression):
        reply = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def _errors(self, session):
        """Console errors, uncaught exceptions and browser log errors (a resource that failed to load)."""
        errors = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(arg.get("value", arg.get("description")))
                                                     for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return errors
