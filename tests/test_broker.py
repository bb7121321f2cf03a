"""The launcher against the real mosquitto binary."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from splitmq.broker import launcher
from splitmq.broker.launcher import DEFAULT_CONFIG, Broker, find_mosquitto, render_config
from splitmq.shared.errors import BrokerError


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_start_and_stop_cleanly() -> None:
    with Broker() as broker:
        assert broker.running and broker.port != 1883
        assert accepts(broker.host, broker.port)
        data_dir = broker.data_dir
        lines = (data_dir / "mosquitto.conf").read_text().splitlines()
        assert [line for line in lines if line.startswith("listener ")] == [
            f"listener {broker.port} 127.0.0.1"
        ]
    assert not broker.running
    assert not accepts(broker.host, broker.port)
    assert not data_dir.exists()


def test_second_broker_gets_another_free_port(broker: Broker) -> None:
    with Broker() as other:
        assert other.port != broker.port
        assert accepts(other.host, other.port) and accepts(broker.host, broker.port)


def test_given_data_dir_is_kept_with_retained_state(broker_dir: Path) -> None:
    with Broker(data_dir=broker_dir / "data"):
        pass
    assert (broker_dir / "data" / "mosquitto.db").exists()  # saved on SIGTERM
    assert "mosquitto version" in (broker_dir / "data" / "mosquitto.log").read_text()


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(launcher, "_FALLBACK_PATHS", ())
    with pytest.raises(BrokerError, match="apt-get install mosquitto mosquitto-clients"):
        find_mosquitto()
    with pytest.raises(BrokerError, match="make test"):
        Broker().start()


def test_the_default_config_ships_inside_the_package() -> None:
    assert resources.files("splitmq.broker").joinpath("mosquitto.conf") == DEFAULT_CONFIG
    assert "listener 1883" in DEFAULT_CONFIG.read_text()


def test_a_missing_config_is_a_broker_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"cannot read mosquitto config \S*missing\.conf"):
        Broker(config=tmp_path / "missing.conf").start()


def test_startup_failure_shows_the_log_tail(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text(DEFAULT_CONFIG.read_text() + "\nno_such_option 1\n")
    with pytest.raises(BrokerError, match="exited with status") as error:
        Broker(config=config).start()
    assert "no_such_option" in str(error.value)


def test_busy_port_is_reported(broker: Broker) -> None:
    with pytest.raises(BrokerError, match="Address already in use"):
        Broker(port=broker.port).start()


def test_render_config_fills_in_listener_data_dir_and_user(tmp_path: Path) -> None:
    text = render_config(DEFAULT_CONFIG.read_text(), port=4321, host="127.0.0.1", data_dir=tmp_path)
    lines = text.splitlines()
    assert "listener 4321 127.0.0.1" in lines
    assert f"persistence_location {tmp_path}/" in lines
    assert sum(line.startswith("user ") for line in lines) == 1
    assert "set_tcp_nodelay true" in lines


def test_render_config_needs_exactly_one_listener(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="exactly one `listener`"):
        render_config("persistence true\n", port=1, host=None, data_dir=tmp_path)
    with pytest.raises(BrokerError, match="found 2"):
        render_config("listener 1\nlistener 2\n", port=1, host=None, data_dir=tmp_path)


SAVING = "Saving in-memory database"


def _saves(broker: Broker) -> int:
    return broker.log_path.read_text().count(SAVING)


def test_a_kill_9_loses_only_what_changed_since_the_last_save(broker_dir: Path) -> None:
    """Saved every 60 s (and on a clean stop), not after every change: a kill -9 keeps the
    QoS 1 messages queued for a durable session up to the last save and loses those the
    broker acknowledged after it. SIGUSR1 stands in for the 60 s timer (the test ends
    long before it first fires): 10 messages, a save, 10 more, kill -9."""
    from kit import Inbox, eventually

    from splitmq.shared.transport.mqtt import MqttClient

    conf = DEFAULT_CONFIG.read_text().splitlines()
    assert "autosave_on_changes false" in conf and "autosave_interval 60" in conf
    with Broker(data_dir=broker_dir) as broker:
        cfg = broker.settings()
        away = MqttClient(cfg.connection("cam"), session_expiry_s=300)
        away.subscribe("results/cam", lambda m: None)
        away.connect(timeout=5)
        away.close()  # away, its session kept by the broker
        assert _saves(broker) == 0  # nothing saved on a change
        with MqttClient(cfg.connection("worker")).connect(timeout=5) as worker:
            for i in range(10):
                worker.publish("results/cam", str(i).encode(), qos=1, wait=5)
            os.kill(broker.pid or 0, signal.SIGUSR1)
            eventually(lambda: _saves(broker) == 1, "the save SIGUSR1 asks for")
            worker.publish("nobody/listens", b"", qos=1, wait=5)  # acked after the save ended
            for i in range(10, 20):
                worker.publish("results/cam", str(i).encode(), qos=1, wait=5)
        os.kill(broker.pid or 0, signal.SIGKILL)
        assert broker.wait() == -signal.SIGKILL
        broker.restart()
        got = Inbox("results")
        back = MqttClient(cfg.connection("cam"), session_expiry_s=300)
        back.subscribe("results/cam", lambda m: got(m.payload.decode()))
        with back.connect(timeout=5), MqttClient(cfg.connection("end")).connect(5) as end:
            # The session's queue comes first, then this: what came before it survived.
            end.publish("results/cam", b"end", qos=1, wait=5)
            eventually(lambda: "end" in got.items, "the end marker")
    kept = got.items[: got.items.index("end")]
    assert kept == [str(i) for i in range(10)], kept  # lost: the 10 acknowledged after the save


def test_what_a_kill_9_loses_still_ends_at_the_device(broker_dir: Path, tmp_path: Path) -> None:
    """The broker killed -9 mid-stream, before it ever saved: the requests and answers it
    held are gone with it, and every request still ends at the device, answered after
    its retry (the worker replays an answer it had given) or failed visibly."""
    import numpy as np
    from graphs import chain, pool_of

    from splitmq.device.runtime import Device, InferenceFailed
    from splitmq.edge.worker import edge_worker
    from splitmq.lab.speed import slowed
    from splitmq.shared.model.plans import make_plan

    pool = pool_of(tmp_path, {"chain": chain()})
    frames = np.random.default_rng(9).standard_normal((30, 4, 8, 8)).astype(np.float32)
    with Broker(data_dir=broker_dir) as broker:
        cfg = broker.settings(pool=pool.root, topic_prefix="test/kill9/splitmq/v1")
        plan = make_plan(pool.get("chain"), 2, "raw")
        with (
            # Slow, one at a time: requests wait in the broker when it dies.
            edge_worker(cfg, "k9-edge", threads=1, queue_size=0, executor=slowed(0.002)),
            Device(cfg, "k9-dev", plan, window=4, timeout_s=5.0, retries=3) as dev,
        ):
            futures = []
            for i, frame in enumerate(frames):
                futures.append(dev.submit(frame))
                if i == 15:
                    os.kill(broker.pid or 0, signal.SIGKILL)
                    assert broker.wait() == -signal.SIGKILL
                    broker.restart()
            outcomes: list[object] = []
            for future in futures:
                try:
                    outcomes.append(future.result(timeout=60))
                except InferenceFailed as exc:
                    outcomes.append(exc)
            retries = dev.stats.snapshot_counts().get("retries", 0)
        assert _saves(broker) == 0  # it never saved: the kill lost all it held
    failed = [str(o) for o in outcomes if isinstance(o, InferenceFailed)]
    assert len(outcomes) == len(frames)  # none ended in silence
    assert not failed, failed  # and here every one was answered, after a retry if lost
    assert retries >= 1  # what the broker held when it died was sent again
    print(f"kill -9 mid-stream: {len(frames)} answered, {retries} retries")


def test_splitmq_broker_restarts_mosquitto_when_it_dies(tmp_path: Path, broker_dir: Path) -> None:
    from clitools import cli_env, start_cli

    port = launcher.free_port("127.0.0.1")
    proc = start_cli(
        "-v", "broker", "--port", str(port), "--data-dir", str(broker_dir),
        env=cli_env(pool=tmp_path), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        pids = (m.group(1) for line in proc.stderr if (m := re.search(r"\(pid (\d+)\)", line)))
        first = int(next(pids))
        os.kill(first, signal.SIGKILL)
        second = int(next(pids))  # logged once the new one accepts connections
        assert second != first and accepts("127.0.0.1", port)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert not accepts("127.0.0.1", port)


@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops privileges only when run as root")
def test_started_as_root_mosquitto_runs_as_its_own_user(broker_dir: Path) -> None:
    with Broker(data_dir=broker_dir / "data") as broker:
        status = Path(f"/proc/{broker.pid}/status").read_text()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))
        assert uid == pwd.getpwnam("mosquitto").pw_uid != 0
        assert "user mosquitto" in (broker.data_dir / "mosquitto.conf").read_text()
        assert broker.data_dir.stat().st_uid == uid  # handed over: it writes its database


@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops privileges only when run as root")
def test_a_data_dir_its_user_cannot_reach_is_refused_up_front(tmp_path: Path) -> None:
    """pytest's tmp_path is 0700 root: mosquitto would fail only after dropping root."""
    with pytest.raises(BrokerError, match=r"runs as mosquitto and cannot reach .* mode 700"):
        Broker(data_dir=tmp_path / "data").start()


def test_a_broker_open_to_other_hosts_needs_secure_or_insecure(
    tmp_path: Path, broker_dir: Path
) -> None:
    from clitools import cli_env, run_cli, start_cli

    env = cli_env(pool=tmp_path)
    refused = run_cli("broker", "--host", "0.0.0.0", "--data-dir", str(broker_dir), env=env)
    assert refused.returncode == 2
    assert "--secure" in refused.stderr and "--insecure" in refused.stderr
    port = launcher.free_port("127.0.0.1")
    proc = start_cli(
        "-v", "broker", "--host", "0.0.0.0", "--insecure", "--port", str(port),
        "--data-dir", str(broker_dir), env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = iter(proc.stderr)
        warning = next(line for line in lines if "INSECURE" in line)
        assert "WARNING" in warning and "0.0.0.0" in warning
        next(line for line in lines if "(pid " in line)  # logged once it accepts connections
        assert accepts("127.0.0.1", port)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="root follows no link only where it runs as root")
def test_links_planted_in_the_data_dir_are_never_followed_by_root(
    tmp_path: Path, broker_dir: Path
) -> None:
    """The data dir is mosquitto's between starts: root must not write or chown through
    a link planted there (to a key directory, a config file, /etc/shadow)."""
    from splitmq.broker.secure import SecureDir

    victim_dir, victim = broker_dir / "victim", broker_dir / "victim.txt"
    victim_dir.mkdir(mode=0o755)
    (victim_dir / "keep").write_text("root's")
    victim.write_text("root's own")
    data = broker_dir / "data"
    data.mkdir()
    (data / "secure").symlink_to(victim_dir)
    (data / "mosquitto.conf").symlink_to(victim)
    secure = SecureDir.init(tmp_path / "s")
    with Broker(data_dir=data, secure=secure.root) as broker:
        assert broker.running
    assert victim.read_text() == "root's own" and victim.stat().st_uid == 0
    assert sorted(p.name for p in victim_dir.iterdir()) == ["keep"]
    assert (victim_dir / "keep").stat().st_uid == 0
    (data / "mosquitto.db").unlink(missing_ok=True)
    os.link(victim, data / "mosquitto.db")  # a hard link to root's file: refused
    with pytest.raises(BrokerError, match="not a plain file"):
        Broker(data_dir=data).start()
    assert victim.stat().st_uid == 0 and victim.stat().st_mode & 0o777 != 0o600


def test_a_data_dir_holding_other_files_is_refused(broker_dir: Path) -> None:
    (broker_dir / "photos").mkdir()
    with pytest.raises(BrokerError, match="holds photos, which are not the broker's"):
        Broker(data_dir=broker_dir).start()


def test_an_ipv6_host_is_refused_with_a_reason(tmp_path: Path) -> None:
    from clitools import cli_env, run_cli

    refused = run_cli("broker", "--host", "::1", env=cli_env(pool=tmp_path))
    assert refused.returncode == 2 and "IPv6 addresses are not supported yet" in refused.stderr
