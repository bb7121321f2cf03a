"""`splitmq demo --dashboard`: during a running demo, the page in a real headless
chromium shows the demo's devices, their plans and the tiers."""

from __future__ import annotations

import signal
import subprocess
import threading

import pytest
from browser import rows
from clitools import cli_env, start_cli
from kit import eventually

pytestmark = pytest.mark.slow
DEVICES = {"demo-dev0", "demo-dev1", "demo-dev2"}


def test_during_a_running_demo_the_page_shows_its_devices(page, real_pool, tmp_path) -> None:
    demo = start_cli(
        "demo", "--dashboard", "0", "--frames", "100000", "--results", str(tmp_path / "r.db"),
        env=cli_env(pool=real_pool.root), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert demo.stderr is not None
        said = ""
        while "dashboard on " not in said:  # the demo's first words (pytest's timeout bounds it)
            line = demo.stderr.readline()
            assert line, f"the demo ended before serving the page (rc {demo.poll()})"
            said = line
        url = said.split("dashboard on ", 1)[1].split()[0]
        # read the rest as it comes: a full pipe would stall the demo
        threading.Thread(target=demo.stderr.read, daemon=True).start()
        page.goto(url)
        shown = eventually(
            lambda: (
                [r for r in rows(page, "#devices") if r["device"] in DEVICES and r["plan"] != "—"]
                if {r["device"] for r in rows(page, "#devices")} >= DEVICES
                else None
            ),
            "the demo's three devices with their plans on the page",
            120,
        )
        assert {r["status"] for r in shown} == {"online"}
        eventually(
            lambda: {r["worker"] for r in rows(page, "[data-tier]")} >= {"demo-edge", "demo-cloud"},
            "the demo's edge and cloud workers on the page",
        )
    finally:
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) in (0, 1, 130)
