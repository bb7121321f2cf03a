"""Start-up and health, against real processes: roles started before their broker wait
for it and connect once it starts on that port; /healthz and `splitmq health` say
whether a role is connected; --connect-timeout ends the wait with a clear error.
"""

from __future__ import annotations

import json
import queue
import random
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from clitools import cli_env, run_cli, start_cli
from prometheus_client import CollectorRegistry

from splitmq.broker.launcher import Broker, free_port
from splitmq.shared.errors import BrokerError, LoginRefused
from splitmq.shared.metrics import Health, MetricsServer
from splitmq.shared.transport.mqtt import MqttClient
from splitmq.shared.transport.waiting import Backoff

RETRYING = re.compile(
    r"broker mqtt://127\.0\.0\.1:(\d+) not reachable \((.+)\); retrying in (\S+) s"
)


class Lines:
    """A process's output (stdout, or stderr when it is not piped to stdout), line by line;
    every wait has a deadline (never a sleep)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.seen = proc, list[str]()
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.proc.stdout or self.proc.stderr
        assert stream is not None
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}: {self.seen[-5:]}") from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}: {''.join(self.seen[-8:])}")
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found


def healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen]]:
    """Processes to end after the test, whatever happened."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ROLES = {
    "edge": ["edge", "--id", "early-edge"],
    "planner": ["planner", "--id", "early-planner"],
    "dashboard": ["dashboard", "--port", "0"],
}


def test_a_device_started_before_its_broker_waits_then_streams(
    tmp_path: Path, broker_dir: Path, stopped: list[subprocess.Popen], real_pool
) -> None:
    """`splitmq device` waits as the services do, /healthz 503 meanwhile, then streams."""
    port, metrics = free_port(), free_port()
    env = cli_env(pool=real_pool.root) | {"SPLITMQ_BROKER": f"127.0.0.1:{port}"}
    last = real_pool.get("mnist-cnn").last_cut  # device-only: no worker needed
    proc = start_cli(
        "-v", "device", "--model", "mnist-cnn", "--cut", str(last), "--fps", "20", "--json",
        "--id", "early-dev", "--metrics-port", str(metrics),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stopped.append(proc)
    lines = Lines(proc)
    waiting = lines.until(RETRYING.pattern)
    assert waiting.group(1) == str(port)
    assert healthz(metrics)[0] == 503
    with Broker(port=port, data_dir=broker_dir):
        lines.until(r'"tier": "device"')  # answers flow once it connected
        status, doc = healthz(metrics)
        assert status == 200 and doc == {"role": "device", "id": "early-dev", "connected": True}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    summary = json.loads(lines.until(r'^\{"summary": true.*').group(0))
    assert summary["failed"] == summary["lost"] == 0 and summary["answered"] > 0


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_role_started_before_its_broker_connects_once_it_starts(
    role: str, tmp_path: Path, broker_dir: Path, stopped: list[subprocess.Popen]
) -> None:
    port, metrics = free_port(), free_port()
    env = cli_env(pool=tmp_path) | {"SPLITMQ_BROKER": f"127.0.0.1:{port}"}
    proc = start_cli(
        *ROLES[role], "--metrics-port", str(metrics),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stopped.append(proc)
    lines = Lines(proc)
    if role != "dashboard":  # the dashboard logs warnings only
        assert lines.until(rf"on http://127\.0\.0\.1:{metrics}/metrics")  # loopback
    waiting = lines.until(RETRYING.pattern)  # served by then: /healthz comes first
    assert waiting.group(1) == str(port) and waiting.group(2) == "Connection refused"
    status, doc = healthz(metrics)
    assert status == 503 and doc["connected"] is False and doc["role"] == role
    check = run_cli("health", f"http://127.0.0.1:{metrics}/healthz", env=env)
    assert check.returncode == 1 and "503" in check.stderr
    with Broker(port=port, data_dir=broker_dir):
        lines.until("Ctrl-C stops")  # connected and started: logged last
        status, doc = healthz(metrics)
        assert status == 200 and doc["connected"] is True and doc["role"] == role
        check = run_cli("health", f"http://127.0.0.1:{metrics}/healthz", env=env)
        assert check.returncode == 0 and json.loads(check.stdout)["connected"] is True
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_connect_timeout_ends_the_wait_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(pool=tmp_path) | {"SPLITMQ_BROKER": f"127.0.0.1:{port}"}
    done = run_cli("cloud", "--connect-timeout", "1.5s", env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    attempts = RETRYING.findall(done.stderr)
    assert len(attempts) >= 2 and all(float(delay) <= 10 for *_, delay in attempts)
    last = done.stderr.strip().splitlines()[-1]
    assert f"broker mqtt://127.0.0.1:{port} not reachable within 1.5 s" in last
    assert "Traceback" not in done.stderr
    # The setting, from the environment; a bare number is refused like every duration.
    once = run_cli("planner", env=env | {"SPLITMQ_CONNECT_TIMEOUT": "0s"}, timeout=60)
    assert once.returncode == 2 and not RETRYING.search(once.stderr)  # 0 s: one attempt
    assert "Connection refused" in once.stderr.strip().splitlines()[-1]
    bare = run_cli("planner", "--connect-timeout", "30", env=env, timeout=60)
    assert bare.returncode == 2 and "give a unit" in bare.stderr


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    backoff = Backoff(first_s=0.5, cap_s=10.0, jitter=0.2)
    delays = [d for d, _ in zip(backoff.delays(random.Random(7)), range(12), strict=False)]
    for n, delay in enumerate(delays):
        nominal = min(10.0, 0.5 * 2**n)
        assert 0.8 * nominal <= delay <= min(10.0, 1.2 * nominal)
    assert len(set(delays)) == len(delays)  # jittered: a fleet does not knock in step
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(first_s=2, cap_s=1)


def test_a_refused_login_is_not_waited_for(secure_broker: Broker) -> None:
    """Waiting mends a broker not up yet, never a wrong password: that fails at once."""
    wrong = secure_broker.user_settings("dev-a", password="not-its-password")
    client = MqttClient(wrong.connection("dev-a"))
    try:
        with pytest.raises(LoginRefused):
            client.connect(timeout=5, patience_s=None)  # None: it would wait forever
    finally:
        client.close()


def test_without_patience_one_attempt_fails_at_once() -> None:
    client = MqttClient.at("127.0.0.1", free_port())
    with pytest.raises(BrokerError, match="Connection refused"):
        client.connect(timeout=2)
    client.close()


def test_healthz_follows_the_connection_and_is_absent_without_a_check() -> None:
    up = [False]
    health = Health("cloud", "c-1", lambda: up[0])
    with MetricsServer(CollectorRegistry(), 0, health=health) as server:
        assert server.url.startswith("http://127.0.0.1:")  # loopback unless told
        assert healthz(server.port) == (503, {"role": "cloud", "id": "c-1", "connected": False})
        up[0] = True
        assert healthz(server.port) == (200, {"role": "cloud", "id": "c-1", "connected": True})
    with MetricsServer(CollectorRegistry(), 0) as bare:
        assert healthz(bare.port)[0] == 404 and bare.health_url is None


def test_splitmq_health_asks_a_broker_over_mqtt(
    broker: Broker, secure_broker: Broker, tmp_path: Path
) -> None:
    env = cli_env(pool=tmp_path)
    up = run_cli("health", f"mqtt://127.0.0.1:{broker.port}", env=env)
    assert up.returncode == 0 and "answers" in up.stdout
    # A secure broker refuses an anonymous login on its loopback port: it runs all the same.
    refused = run_cli("health", f"mqtt://127.0.0.1:{secure_broker.port}", env=env)
    assert refused.returncode == 0 and "refused the login" in refused.stdout
    down = run_cli("health", f"mqtt://127.0.0.1:{free_port()}", "--timeout", "2s", env=env)
    assert down.returncode == 1 and "unhealthy" in down.stderr
    assert "Connection refused" in down.stderr


def test_metrics_host_is_a_setting(tmp_path: Path, stopped: list[subprocess.Popen]) -> None:
    port, metrics = free_port(), free_port()
    env = cli_env(pool=tmp_path) | {
        "SPLITMQ_BROKER": f"127.0.0.1:{port}",
        "SPLITMQ_METRICS_HOST": "0.0.0.0",
    }
    proc = start_cli(
        "edge", "--metrics-port", str(metrics), env=env, stderr=subprocess.PIPE, text=True
    )
    stopped.append(proc)
    Lines(proc).until(rf"on http://0\.0\.0\.0:{metrics}/metrics")
    assert healthz(metrics)[0] == 503  # still waiting for its broker


def test_version_is_the_packages(tmp_path: Path) -> None:
    done = run_cli("--version", env=cli_env(pool=tmp_path))
    assert done.returncode == 0 and done.stdout.strip() == f"splitmq {version('splitmq')}"


def test_secure_init_where_no_directory_can_be_made_is_a_user_error(tmp_path: Path) -> None:
    done = run_cli("secure", "init", "/proc/nope", env=cli_env(pool=tmp_path))
    assert done.returncode == 2, done.stderr
    assert "cannot make the directory /proc/nope" in done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr
