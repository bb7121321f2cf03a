"""A real headless browser for the tests: Debian's chromium, driven over the DevTools
protocol (`make chromium` installs it). ``page`` is one tab, shared by a module."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from kit import eventually


class Page:
    """One chromium tab over the DevTools protocol: run script, set files, navigate."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.exceptions: list[str] = []  # uncaught in the page's scripts
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:  # replies, and the Runtime domain's events
            reply = json.loads(self.ws.recv())
            if reply.get("method") == "Runtime.exceptionThrown":
                details = reply["params"]["exceptionDetails"]
                self.exceptions.append(
                    details.get("exception", {}).get("description", details["text"])
                )
            if reply.get("id") == ident:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def js(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        eventually(
            lambda: (
                self.js("location.href") == url and self.js("document.readyState") == "complete"
            ),
            f"{url} to load",
        )

    def set_files(self, selector: str, *paths: Path) -> None:
        found = self.send("Runtime.evaluate", expression=f"document.querySelector('{selector}')")
        self.send(
            "DOM.setFileInputFiles",
            files=[str(p) for p in paths],
            objectId=found["result"]["objectId"],
        )

    def text(self, selector: str) -> str | None:
        return self.js(f"document.querySelector('{selector}')?.textContent ?? null")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """Debian's chromium, headless (`make chromium` installs it)."""
    binary = shutil.which("chromium")
    assert binary, "no chromium: run `make chromium` (apt-get install chromium)"
    profile = tmp_path_factory.mktemp("chromium")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        active = profile / "DevToolsActivePort"
        port = eventually(
            lambda: active.exists() and active.read_text().split("\n")[0], "chromium's port", 30
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            tab = next(t for t in json.load(r) if t["type"] == "page")
        driven = Page(tab["webSocketDebuggerUrl"])
        yield driven
        driven.ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def rows(page: Page, table: str) -> list[dict[str, str]]:
    """Each row of a table on the page: its data-* keys and each classed cell's text."""
    return page.js(f"""[...document.querySelectorAll('{table} tbody tr')].map(tr => {{
        const row = {{...tr.dataset}};
        for (const td of tr.querySelectorAll('td[class]')) row[td.classList[0]] = td.textContent;
        return row; }})""")
