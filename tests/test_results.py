"""The results store, the same tests on SQLite and on a real PostgreSQL (tests/postgres.py).

Answers come from real workers over the session's mosquitto, running tiny in-memory
graphs from a temporary pool: an early exit answered at the edge, a forward answered
by the cloud, a request sent straight to the cloud.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from clitools import cli_env, run_cli, start_cli, wait_online
from graphs import C, early_exit, pool_of
from kit import eventually, hop_record, make_request

from splitmq.cloud.results import Recorder, ResultsStore, StoreUrl
from splitmq.cloud.results import store as store_module
from splitmq.cloud.results.schema import COLUMNS, MIGRATIONS, row
from splitmq.edge.worker import edge_worker
from splitmq.shared.codecs import encode
from splitmq.shared.errors import UserError
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.protocol.results import Result, TopK, unpack_result
from splitmq.shared.protocol.wire import Hop, Request, pack_request
from splitmq.shared.runtime.answers import answer_to
from splitmq.shared.runtime.executor import Answered
from splitmq.shared.runtime.worker import Worker

MODEL = "exits"  # early_exit(): an exit head inside the edge's hop, the final head after it


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store: a SQLite file, or a database of the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"  # an absolute path: four slashes
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    return pool_of(tmp_path_factory.mktemp("pool"), {MODEL: early_exit()}, ["cat", "dog", "fox"])


@pytest.fixture
def cfg(settings, pool):
    return settings.model_copy(update={"pool": pool.root})


def raw(url: str) -> Any:
    """A plain connection to the store, around splitmq's code, in autocommit mode."""
    where = StoreUrl.parse(url)
    if where.backend == "sqlite":
        return sqlite3.connect(where.target, isolation_level=None)
    return psycopg.connect(url, autocommit=True)


def versions(url: str) -> list[int]:
    conn = raw(url)
    try:
        return [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    finally:
        conn.close()


# --- requests the workers answer --------------------------------------------------------


def routes(last_cut: int) -> dict[str, tuple[Hop, ...]]:
    """Three answers: the edge's exit head (threshold 0: always sure), the cloud after the
    edge forwarded, and the cloud straight from the device."""
    to = last_cut - 1  # the exit head lies before this cut
    return {
        "exit": (Hop("edge", to, 0.0, "raw"), Hop("cloud")),
        "forward": (Hop("edge", to, None, "int8"), Hop("cloud")),
        "direct": (Hop("cloud"),),
    }


def send(cfg, make_client, inbox, pool: ModelPool) -> dict[str, tuple[Request, Result]]:
    """Send one request per route from its own device; the answers each device received."""
    x = np.random.default_rng(0).standard_normal((1, C, 8, 8)).astype(np.float32)
    client = make_client("sender")
    sent = {}
    for name, route in routes(pool.get(MODEL).last_cut).items():
        device = f"cam-{name}"
        request = make_request(route, start=0, model=MODEL, device=device, tensor=encode(x, "raw"))
        answers = inbox(f"the answer to {device}")
        client.subscribe(cfg.topics.result(device), answers, qos=1)
        client.publish(
            cfg.topics.request(route[0].tier, MODEL, 0, device), pack_request(request), qos=1
        )
        sent[name] = (request, answers)
    return {
        name: (req, unpack_result(box.wait(1, 20)[0].payload)) for name, (req, box) in sent.items()
    }


FOX = TopK(2, "fox", 0.75)


def answer_result(
    device: str = "cam-1", tier: str = "edge", at: float = 1e9, version: int = 1
) -> Result:
    """A hand-made answer of model ``m`` at Unix time ``at``."""
    request = make_request((Hop(tier),), device=device, version=version, at=at)
    timing = request.timing.appended(hop_record(tier, f"{tier}-1", at))
    return answer_to(request, timing, tier, "m", version, Answered("out", (FOX,)))


def answer(device: str = "cam-1", tier: str = "edge", at: float = 1e9, version: int = 1) -> tuple:
    """``answer_result`` as ``row`` stores it."""
    return row(answer_result(device, tier, at, version))


# --- the schema ---------------------------------------------------------------------------


def test_a_new_store_is_migrated_once_and_reopens_as_it_was(url):
    every = list(range(1, len(MIGRATIONS) + 1))
    with ResultsStore(url) as db:
        assert db.schema_version == len(MIGRATIONS)
        db.add([answer(at=1.0)])
    assert versions(url) == every
    with ResultsStore(url) as db:  # nothing to apply, nothing lost
        assert db.schema_version == len(MIGRATIONS)
        assert [r["answered_at"] for r in db.query()] == [1.0]
    assert versions(url) == every


def test_migrations_apply_in_order_and_a_newer_store_is_refused(url, monkeypatch):
    with ResultsStore(url) as db:
        db.add([answer(at=1.0)])
    later = (*MIGRATIONS, ("ALTER TABLE results ADD COLUMN note TEXT",))
    monkeypatch.setattr(store_module, "MIGRATIONS", later)
    with ResultsStore(url) as db:
        assert db.schema_version == len(later)
        assert len(db.query()) == 1
    assert versions(url) == list(range(1, len(later) + 1))
    conn = raw(url)  # the new column is there
    assert conn.execute("SELECT note FROM results").fetchall() == [(None,)]
    conn.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with pytest.raises(UserError, match=f"schema version {len(later)}, newer than this splitmq"):
        ResultsStore(url)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mysql://db/results", "scheme must be sqlite or postgresql, got 'mysql'"),
        ("sqlite://results.db", "sqlite:///PATH (three slashes)"),
        ("postgresql://db.example", "names its database"),
        ("postgresql://u:hunter2@db:99999/r", "bad port: 'postgresql://u:***@db:99999/r'"),
        (" ", "empty string"),
    ],
)
def test_a_bad_url_says_what_is_wrong_without_its_password(text, words):
    with pytest.raises(UserError) as caught:
        StoreUrl.parse(text)
    assert words in str(caught.value) and "hunter2" not in str(caught.value)


def test_url_forms():
    assert StoreUrl.parse("sqlite:///r.db") == StoreUrl("sqlite", "r.db")
    assert StoreUrl.parse("sqlite:////var/r.db") == StoreUrl("sqlite", "/var/r.db")
    assert StoreUrl.parse("data/r.db") == StoreUrl("sqlite", "data/r.db")
    pg = StoreUrl.parse("postgres://u:hunter2@db:5432/r")
    assert pg.backend == "postgresql" and str(pg) == "postgres://u:***@db:5432/r"


# --- recording ----------------------------------------------------------------------------


def test_both_tiers_record_what_the_devices_received(url, cfg, pool, make_client, inbox):
    """Edge and cloud each with a recorder of their own (two writers on one store)."""
    with (
        Recorder(url) as at_edge,
        Recorder(url) as at_cloud,
        edge_worker(cfg, "rec-edge", on_result=at_edge.add),
        Worker(cfg, "cloud", "rec-cloud", on_result=at_cloud.add),
    ):
        received = send(cfg, make_client, inbox, pool)
    assert at_edge.counts() == {"recorded": 1, "failed": 0, "dropped": 0}
    assert at_cloud.counts() == {"recorded": 2, "failed": 0, "dropped": 0}
    with ResultsStore(url) as db:
        rows = {r["device"].removeprefix("cam-"): r for r in db.query()}
    assert set(rows) == set(received)
    mv = pool.get(MODEL)
    for name, (request, result) in received.items():
        r = rows[name]
        assert (r["request_id"], r["model"], r["version"]) == (result.id, MODEL, mv.version)
        assert (r["tier"], r["worker"], r["exit"]) == (
            result.tier,
            f"rec-{result.tier}",
            result.exit,
        )
        assert r["top"] == [
            {"index": t.index, "label": t.label, "score": t.score} for t in result.top
        ]
        assert r["latency"] == [vars(hop) for hop in result.latency]
        assert r["route"] == [vars(hop) for hop in request.route]
        assert (r["bytes"], r["answered_at"]) == (result.bytes, result.t_sent)
        assert r["sent_at"] == request.timing.device.t_sent
    assert (rows["exit"]["tier"], rows["exit"]["exit"]) == ("edge", mv.output_names[0])
    assert (rows["exit"]["cut"], rows["exit"]["codec"]) == (0, "raw")
    assert (rows["direct"]["tier"], rows["direct"]["cut"]) == ("cloud", 0)
    # The cloud got the edge's tensor, at the edge's cut, and the device's cut and codec
    # with it: the row says what the device sent, whichever tier answered.
    assert rows["forward"]["tier"] == "cloud" and len(rows["forward"]["latency"]) == 3
    assert (rows["forward"]["cut"], rows["forward"]["codec"]) == (0, "raw")
    assert received["forward"][1].cut == 0 and received["forward"][1].route == (
        received["forward"][0].route
    )


def test_the_recorder_deletes_answers_past_the_retention_on_its_schedule(url) -> None:
    """At start, then every ``prune_every_s``: what a store held from before is deleted
    once it is older than ``keep_s``, and what is recent stays."""
    now, day = time.time(), 86_400.0
    with ResultsStore(url) as db:
        db.add([answer(f"old-{i}", at=now - 2 * day) for i in range(3)])
        db.add([answer("recent", at=now - 60)])
    with Recorder(url, keep_s=day, prune_every_s=0.2) as recorder:
        eventually(lambda: recorder.pruned == 3, "the old answers deleted at start")
        with ResultsStore(url) as db:
            assert [r["device"] for r in db.query()] == ["recent"]
            db.add([answer("aged", at=now - 3 * day)])  # arrives late, already past retention
        eventually(lambda: recorder.pruned == 4, "the next round of the schedule")
        recorder.add(answer_result("new", at=time.time()))
    with ResultsStore(url) as db:
        assert sorted(r["device"] for r in db.query()) == ["new", "recent"]


def test_a_failing_store_costs_a_row_never_an_answer(url, cfg, pool, make_client, inbox):
    with Recorder(url) as recorder, edge_worker(cfg, "fail-edge", on_result=recorder.add):
        conn = raw(url)
        conn.execute("DROP TABLE results")  # behind the recorder's back
        conn.close()
        x = np.zeros((1, C, 8, 8), np.float32)
        request = make_request(
            (Hop("edge"),), start=0, model=MODEL, device="cam-f", tensor=encode(x, "raw")
        )
        answers = inbox("the answer to cam-f")
        client = make_client("fail-sender")
        client.subscribe(cfg.topics.result("cam-f"), answers, qos=1)
        client.publish(cfg.topics.request("edge", MODEL, 0, "cam-f"), pack_request(request))
        assert unpack_result(answers.wait(1, 20)[0].payload).id == request.id
        eventually(lambda: recorder.counts()["failed"] == 1, "the failed row counted")
    assert recorder.counts() == {"recorded": 0, "failed": 1, "dropped": 0}


def test_filters_and_order(url):
    now = time.time()
    with ResultsStore(url) as db:
        db.add(
            [
                answer("cam-1", "edge", now - 3600),
                answer("cam-1", "cloud", now - 60, version=2),
                answer("cam-2", "edge", now - 5),
            ]
        )
        newest = db.query()
        assert [(r["device"], r["answered_at"]) for r in newest][:3] == [
            ("cam-2", now - 5),
            ("cam-1", now - 60),
            ("cam-1", now - 3600),
        ]
        assert {r["device"] for r in db.query(device="cam-1")} == {"cam-1"}
        assert len(db.query(device="cam-1")) == 2
        assert [r["answered_at"] for r in db.query(since=now - 120)] == [now - 5, now - 60]
        assert [r["tier"] for r in db.query(tier="cloud")] == ["cloud"]
        assert [r["version"] for r in db.query(model="m", version=2)] == [2]
        assert db.query(model="other") == []
        assert len(db.query(limit=1)) == 1


def test_an_answer_recorded_twice_is_kept_once(url):
    """A retried request answered by two workers: one row, the first."""
    first = answer("cam-1", "edge", 10.0)
    again = tuple("cloud" if column == "tier" else v for column, v in zip(COLUMNS, first))
    with ResultsStore(url) as db:
        db.add([first])
        db.add([again])
        assert [r["tier"] for r in db.query()] == ["edge"]


def test_a_postgresql_connection_dropped_by_the_server_is_opened_again(postgres):
    """What a server restart or an idle-connection reaper does: the next write reconnects."""
    url = postgres.new_database()
    with ResultsStore(url) as db:
        db.add([answer("cam-1")])
        killer = raw(url)
        (killed,) = killer.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        killer.close()
        assert killed == 1
        db.add([answer("cam-2")])
        assert {r["device"] for r in db.query()} == {"cam-1", "cam-2"}


# --- the command line ---------------------------------------------------------------------


def test_two_worker_processes_record_and_the_cli_lists_them(url, cfg, pool, make_client, inbox):
    """`splitmq edge --results` and `splitmq cloud --results` on one store; then
    `splitmq results` reads it, as JSON and as a table."""
    env = cli_env(cfg)
    env.pop("SPLITMQ_RESULTS", None)
    procs = [
        start_cli(tier, "--id", f"cli-{tier}", "--results", url, env=env)
        for tier in ("edge", "cloud")
    ]
    try:
        for tier in ("edge", "cloud"):
            wait_online(cfg, tier, f"cli-{tier}")
        received = send(cfg, make_client, inbox, pool)
    finally:
        for proc in procs:  # SIGINT: each stops, then writes what it queued
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(timeout=60)
    listed = run_cli("results", "--results", url, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["store"] == str(StoreUrl.parse(url))
    by_id = {r["request_id"]: r for r in doc["results"]}
    assert set(by_id) == {result.id for _, result in received.values()}
    assert {r["worker"] for r in doc["results"]} == {"cli-edge", "cli-cloud"}
    edge_only = json.loads(
        run_cli("results", "--results", url, "--json", "--tier", "edge", env=env).stdout
    )
    assert [r["device"] for r in edge_only["results"]] == ["cam-exit"]
    one = json.loads(
        run_cli(
            "results",
            "--results",
            url,
            "--json",
            "--device",
            "cam-direct",
            "--since",
            "10min",
            env=env,
        ).stdout
    )
    assert [r["request_id"] for r in one["results"]] == [received["direct"][1].id]
    table = run_cli("results", "--results", url, "--model", f"{MODEL}@1", env=env)
    assert table.returncode == 0 and "cam-forward" in table.stdout and "cli-cloud" in table.stdout


def splitmq_here(cwd: Path, *args: str, pool: Path | None = None) -> subprocess.CompletedProcess:
    """`splitmq ARGS` run in ``cwd``, with no results store set in the environment."""
    env = cli_env(pool=pool)
    env.pop("SPLITMQ_RESULTS", None)
    return run_cli(*args, env=env, timeout=300, cwd=cwd)


def test_the_cli_reads_the_demos_store_here_or_says_how_to_name_one(tmp_path):
    missing = splitmq_here(tmp_path, "results")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "SPLITMQ_RESULTS" in missing.stderr and "--results" in missing.stderr
    with ResultsStore(str(tmp_path / "splitmq-results.db")) as db:  # where `splitmq demo` records
        db.add([answer("cam-demo", "edge", time.time())])
    found = splitmq_here(tmp_path, "results", "--json")
    assert found.returncode == 0, found.stderr
    assert [r["device"] for r in json.loads(found.stdout)["results"]] == ["cam-demo"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["results", "--results", "mysql://db/r"], "scheme must be sqlite or postgresql"),
        (["edge", "--results", "ftp://store"], "scheme must be sqlite or postgresql"),
        (["results", "--results", "/no/such/store.db"], "no results store at /no/such/store.db"),
        (["results", "--results", "x.db", "--tier", "fog"], "--tier must be device, edge or cloud"),
        (["results", "--results", "x.db", "--since", "soon"], "bad --since 'soon'"),
        (["recorder"], "splitmq recorder needs a store: --results or SPLITMQ_RESULTS"),
        (["recorder", "--results", "x.db", "--keep", "soon"], "bad --keep 'soon'"),
        (["recorder", "--results", "x.db", "--keep", "0"], "--keep must be more than 0"),
    ],
)
def test_cli_mistakes_are_one_line(tmp_path, args, words):
    r = splitmq_here(tmp_path, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_demo_records_and_results_lists_it_with_nothing_set(real_pool, tmp_path):
    """`splitmq demo`, then `splitmq results` in the same directory."""
    demo = splitmq_here(
        tmp_path,
        "demo",
        "--json",
        "--fixed",
        "--frames",
        "6",
        "--devices",
        "2",
        pool=real_pool.root,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    summary = json.loads(demo.stdout)
    assert summary["results"] == "splitmq-results.db" and summary["answered"] == 6
    listed = splitmq_here(tmp_path, "results", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["results"]
    assert len(rows) == 6 + 2  # every frame, and one warm-up frame per device
    assert {r["device"] for r in rows} == {"demo-dev0", "demo-dev1"}
    assert {r["model"] for r in rows} == {summary["model"]}
    assert set(summary["by_tier"]) <= {r["tier"] for r in rows}


def test_workers_opening_one_fresh_sqlite_store_together_all_open(tmp_path: Path) -> None:
    """Switching a fresh file to WAL takes its exclusive lock, and SQLite says "database
    is locked" at once to the loser of two openers (seen: `splitmq edge` and `splitmq
    cloud` started together on one store, 2 of 30 trials of 4 failed before the retry)."""
    import threading

    failures: list[str] = []
    for trial in range(40):
        url = f"sqlite:///{tmp_path}/race-{trial}.db"
        start = threading.Barrier(6)

        def open_it(url: str = url, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                ResultsStore(url).close()
            except UserError as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
