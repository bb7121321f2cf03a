"""Quantities people type: one parser each, the same spellings everywhere."""

from __future__ import annotations

import pytest

from splitmq.shared.errors import UserError
from splitmq.shared.units import Link, format_rate, parse_bytes, parse_ms, parse_rate


@pytest.mark.parametrize(
    ("text", "bps"),
    [("5mbit", 5e6), ("500kbit", 5e5), ("1.5Gbit", 1.5e9), ("200bit", 200.0), ("10 mbps", 1e7)],
)
def test_rates(text: str, bps: float) -> None:
    assert parse_rate(text) == bps
    assert parse_rate(format_rate(bps)) == bps


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("40ms", 40.0),
        ("1.5s", 1500.0),
        ("250us", 0.25),
        ("2min", 120e3),
        ("10m", 600e3),
        ("1h", 3600e3),
        ("0", 0.0),  # zero needs no unit
    ],
)
def test_durations(text: str, ms: float) -> None:
    assert parse_ms(text) == pytest.approx(ms)


def test_sizes() -> None:
    assert parse_bytes("10kB") == 10_000 and parse_bytes("1.5MB") == 1_500_000
    assert parse_bytes("800") == 800


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_rate, "fast", "bad bandwidth 'fast': use a rate like 5mbit"),
        (parse_rate, "0mbit", "it must be positive"),
        (parse_ms, "-3ms", "use a duration like 40ms"),
        (parse_ms, "soon", "use a duration like 40ms"),
        (parse_bytes, "0kB", "it must be positive"),
        (parse_bytes, "lots", "use a size like 800"),
        (parse_rate, "5", "bad bandwidth '5': give a unit: use a rate like 5mbit"),
        (parse_ms, "7", "bad duration '7': give a unit: use a duration like 40ms"),
    ],
)
def test_bad_quantities_say_what_is_valid(parse, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse(text)


def test_link_specs_use_the_same_parsers() -> None:
    link = Link.parse("20mbit/10ms")
    assert (link.bps, link.rtt_ms) == (20e6, 10.0) and str(link) == "20mbit/10ms"
    assert Link.parse("1.5gbit/0.5s").rtt_ms == 500.0
    with pytest.raises(UserError, match="BANDWIDTH/RTT"):
        Link.parse("20mbit")


def test_a_bare_number_is_refused_wherever_a_rate_or_duration_is_typed(tmp_path) -> None:
    """`--uplink 5` is not 5 bit/s: every flag that takes a rate or a duration says so."""
    from clitools import cli_env, run_cli

    env = cli_env(pool=tmp_path)
    for args, flag in (
        (["plan", "mnist-cnn", "--uplink", "5"], "--uplink"),
        (["plan", "mnist-cnn", "--uplink", "5mbit", "--rtt", "40"], "--rtt"),
        (["plan", "mnist-cnn", "--uplink", "5mbit", "--slo", "100"], "--slo"),
        (["plan", "mnist-cnn", "--uplink", "5mbit", "--cloud-link", "100/20ms"], "cloud"),
    ):
        done = run_cli(*args, env=env)
        assert done.returncode == 2, done.stderr
        assert flag in done.stderr and "give a unit" in done.stderr, done.stderr
    with pytest.raises(UserError, match="give a unit"):
        Link.parse("20/10ms")
