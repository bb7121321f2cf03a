"""`splitmq secure` and `splitmq broker --secure` as users run them, in subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from clitools import cli_env, run_cli, start_cli

from splitmq.broker.launcher import Broker, free_port
from splitmq.broker.secure import SecureDir
from splitmq.shared.errors import BrokerError
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient


def test_init_then_add_device_print_users_and_keep_passwords_out(tmp_path: Path) -> None:
    env = cli_env(pool=tmp_path)
    made = run_cli("secure", "init", str(tmp_path / "s"), "--device", "cam1", "--json", env=env)
    assert made.returncode == 0, made.stderr
    users = {u["user"]: u["role"] for u in json.loads(made.stdout)["users"]}
    assert users == {
        "edge": "edge",
        "cloud": "cloud",
        "planner": "planner",
        "monitor": "monitor",
        "operator": "operator",
        "admin": "admin",
        "cam1": "device",
    }
    nobody = f"mqtts://127.0.0.1:{free_port()}"  # no broker runs there
    added = run_cli(
        "secure", "add-device", "cam2", "--dir", str(tmp_path / "s"), "--broker", nobody,
        "--json", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    report = json.loads(added.stdout)
    assert [u["user"] for u in report["users"]] == ["cam2"]
    assert report["live"]["added"] is False and "refused" in report["live"]["why"]
    secret = (tmp_path / "s" / "clients" / "cam2.env").read_text()
    password = re.search(r"SPLITMQ_PASSWORD=(\S+)", secret).group(1)
    assert password not in made.stdout + added.stdout + added.stderr
    assert (tmp_path / "s" / "clients" / "cam2.env").stat().st_mode & 0o077 == 0
    again = run_cli("secure", "init", str(tmp_path / "s"), env=env)
    bad = run_cli("secure", "add-device", "cam/+", "--dir", str(tmp_path / "s"), env=env)
    assert again.returncode == bad.returncode == 2
    assert "already holds a secure setup" in again.stderr and "invalid device id" in bad.stderr


def test_secure_init_keeps_its_directories_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        sd = SecureDir.init(tmp_path / "s", devices=["cam1"])
    finally:
        os.umask(old)
    for path in (sd.root, sd.root / "clients"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (sd.root / "ca.key", sd.root / "server.key", sd.client_env("cam1")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((sd.root / "dynamic-security.json").stat().st_mode) == 0o600


def accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def test_splitmq_broker_secure_serves_tls_on_its_host_only_and_refuses_anonymous(
    tmp_path: Path, broker_dir: Path
) -> None:
    """TLS binds the --host asked for (127.0.0.2 here: 127.0.0.1 must not answer)."""
    sd = SecureDir.init(tmp_path / "s", ["127.0.0.2"], devices=["cam1"])
    port, tls_port = free_port(), free_port()
    proc = start_cli(
        "-v", "broker", "--port", str(port), "--tls-port", str(tls_port), "--secure", str(sd.root),
        "--host", "127.0.0.2", "--data-dir", str(broker_dir), env=cli_env(pool=tmp_path),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        next(line for line in proc.stderr if "and TLS on 127.0.0.2:" in line)  # logged once up
        assert accepts("127.0.0.2", tls_port) and not accepts("127.0.0.1", tls_port)
        with MqttClient(
            sd.settings("cam1", f"mqtts://127.0.0.2:{tls_port}").connection("cam1")
        ) as cam:
            cam.publish(Topics(sd.prefix).telemetry("device", "cam1"), b"{}", qos=1, wait=5)
        anonymous = Settings(_env_file=None, broker=f"mqtt://127.0.0.1:{port}")
        try:
            MqttClient(anonymous.connection("anon")).connect(timeout=5)
            raise AssertionError("an anonymous client got in")
        except BrokerError as exc:
            assert "refused" in str(exc) or "Not authorized" in str(exc)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_bad_broker_urls_say_why(tmp_path: Path) -> None:
    for url, words in (
        ("nohost", "broker must be mqtt://host:port"),
        ("http://h:1", "scheme must be mqtt or mqtts"),
        ("mqtt://h:99999", "bad port"),
        ("mqtts://user:s3cret@h:notaport", "bad port"),
    ):
        got = run_cli("device", "--model", "m", "--broker", url, env=cli_env(pool=tmp_path))
        assert got.returncode == 2 and words in got.stderr, got.stderr
        assert "pydantic" not in got.stderr and "s3cret" not in got.stderr


def test_an_older_secure_dir_upgrades_and_keeps_its_passwords(tmp_path: Path) -> None:
    """passwd with mosquitto_passwd's $7$ hashes and acl, no admin: what splitmq wrote
    before the dynamic security plugin. The broker refuses it, saying to upgrade."""
    sd = SecureDir.init(tmp_path / "s", devices=["cam1"])
    plugin = json.loads((sd.root / "dynamic-security.json").read_text())
    lines = [
        f"{c['username']}:$7${c['iterations']}${c['salt']}${c['password']}"
        for c in plugin["clients"]
        if c["username"] != "admin"
    ]
    (sd.root / "passwd").write_text("\n".join(lines) + "\n")
    (sd.root / "acl").write_text("user cam1\n")
    (sd.root / "dynamic-security.json").unlink()
    (sd.client_env("admin")).unlink()
    registry = json.loads((sd.root / "secure.json").read_text())
    del registry["users"]["admin"]
    (sd.root / "secure.json").write_text(json.dumps(registry))
    env = cli_env(pool=tmp_path)
    with pytest.raises(BrokerError, match="splitmq secure upgrade --dir"):
        Broker(secure=sd.root).start()
    done = run_cli("secure", "upgrade", "--dir", str(sd.root), env=env)
    assert done.returncode == 0 and "new users: admin" in done.stdout, done.stderr
    assert not (sd.root / "passwd").exists() and sd.users["admin"] == "admin"
    with Broker(secure=sd.root) as broker:
        MqttClient(broker.user_settings("cam1").connection("cam1")).connect(timeout=5).close()
        MqttClient(broker.user_settings("admin").connection("adm")).connect(timeout=5).close()
    # A release adds a grant (a device writing its own results): upgrade writes the ACLs
    # again from the contract, passwords kept.
    plugin = json.loads((sd.root / "dynamic-security.json").read_text())
    own = Topics(sd.prefix).result("cam1")

    def grants_own_results(doc: dict) -> bool:
        return any(
            acl["topic"] == own and acl["acltype"] == "publishClientSend"
            for role in doc["roles"]
            for acl in role["acls"]
        )

    assert grants_own_results(plugin)
    for role in plugin["roles"]:
        role["acls"] = [a for a in role["acls"] if a["topic"] != own or "Send" not in a["acltype"]]
    (sd.root / "dynamic-security.json").write_text(json.dumps(plugin))
    again = run_cli("secure", "upgrade", "--dir", str(sd.root), env=env)
    assert again.returncode == 0, again.stderr
    upgraded = json.loads((sd.root / "dynamic-security.json").read_text())
    assert grants_own_results(upgraded) and upgraded["clients"] == plugin["clients"]
    gone = run_cli("secure", "upgrade", "--dir", str(tmp_path / "nothing"), env=env)
    assert gone.returncode == 2 and "no secure directory" in gone.stderr


def test_add_device_with_a_bad_broker_url_adds_nothing(tmp_path: Path) -> None:
    sd = SecureDir.init(tmp_path / "s")
    env = cli_env(pool=tmp_path)
    bad = run_cli("secure", "add-device", "cam9", "--dir", str(sd.root), "--broker", "x", env=env)
    assert bad.returncode == 2 and "--broker" in bad.stderr and "Traceback" not in bad.stderr
    assert "cam9" not in sd.users
