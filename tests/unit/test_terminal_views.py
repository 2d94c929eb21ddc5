"""The terminal views of `waybill sla`, `waybill dlq list`, `waybill bench` and the demo:
styled on a terminal; piped, plain text that grep and awk can read (no escape codes, a
row one line); and `--json` as it always was."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console, RenderableType

from shared.events import DeadLetter
from shared.settings import KafkaSettings
from tests.support import wait_for
from waybill import bench, dlq, terminal, up
from waybill.bench import (
    BenchResult,
    PhaseCounts,
    PhaseProgress,
    PhaseResult,
    ReferenceResult,
    print_result,
)
from waybill.cli import build_parser, cmd_sla
from waybill.dlq import list_dead_letters, render_dead_letters
from waybill.sla_report import render as render_sla
from waybill.up import DemoProgress

ESCAPE = "\x1b["
LONG_ERROR = "ConnectError: " + " ".join(["refused"] * 60)  # far wider than any terminal


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _colour_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def piped(*views: RenderableType) -> str:
    out = io.StringIO()
    terminal.show(*views, console=terminal.console_for(out))
    return out.getvalue()


def on_a_terminal(*views: RenderableType) -> str:
    out = io.StringIO()
    terminal.show(
        *views, console=Console(file=out, force_terminal=True, color_system="standard", width=120)
    )
    return out.getvalue()


def assert_plain(text: str) -> None:
    assert ESCAPE not in text, text
    assert not any(line != line.rstrip() for line in text.splitlines()), "trailing blanks"
    assert not set(text) & set("─━│╭╮╰╯"), "box drawing"


def rows(text: str) -> dict[str, list[str]]:
    """Each line split on blanks, by its first cell (the first line with it)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip():
            found.setdefault(line.split()[0], line.split())
    return found


# --- where the output goes ---------------------------------------------------------------


def test_a_pipe_is_plain_and_a_terminal_is_not_unless_the_user_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert terminal.is_plain(io.StringIO())
    assert not terminal.is_plain(Terminal())
    assert not terminal.console_for(io.StringIO()).is_terminal
    assert terminal.console_for(Terminal()).is_terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert terminal.is_plain(Terminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert terminal.is_plain(Terminal())
    assert not terminal.console_for(Terminal()).is_terminal


# --- waybill sla -------------------------------------------------------------------------

SUMMARY: dict[str, Any] = {
    "as_of": "2026-11-22T13:05:00+00:00",
    "orders_total": 5,
    "orders_by_status": {"accepted": 2, "delivered": 3},
    "stages": [
        {
            "stage": "accept",
            "met": 2,
            "p50_seconds": 0.1,
            "p95_seconds": 114.0,
            "breached": 1,
            "at_risk": 0,
            "open": 0,
        },
        {
            "stage": "dispatch",
            "met": 0,
            "p50_seconds": None,
            "p95_seconds": None,
            "breached": 0,
            "at_risk": 2,
            "open": 2,
        },
    ],
    "needs_attention": [
        {
            "order_id": "shop1:a1",
            "stage": "accept",
            "state": "breached",
            "deadline": "2026-11-22T13:00:00+00:00",
            "status": "accepted",
        }
    ],
    "stuck": [
        {
            "order_id": "shop1:9f2c41d07a11",
            "stage": "dispatch",
            "state": "stuck",
            "status": "reserved",
            "redriven_at": "2026-11-22T13:02:05Z",
        }
    ],
    "services": [
        {
            "service": "inventory",
            "reachable": True,
            "outbox_backlog": 0,
            "dead_letters": 1,
            "consumer_lag": 12,
            "process": {"restarts": 0},
        },
        {
            "service": "shipping",
            "reachable": True,
            "outbox_backlog": 0,
            "dead_letters": 0,
            "consumer_lag": 0,
            "process": {
                "restarts": 1,
                "last_exit": "killed by SIGKILL",
                "restarted_at": "2026-11-22T13:01:00+00:00",
            },
            "carriers": [
                {"carrier": "ecoship", "circuit": "closed"},
                {"carrier": "swiftpost", "circuit": "open"},
            ],
        },
        {"service": "returns", "reachable": False, "error": LONG_ERROR},
    ],
}


def test_the_sla_report_piped_is_plain_columns_a_row_a_line() -> None:
    text = piped(render_sla(SUMMARY))
    assert_plain(text)
    table = rows(text)
    assert table["stage"] == ["stage", "count", "p50", "p95", "breached", "at", "risk", "open"]
    assert table["accept"] == ["accept", "2", "0.1", "s", "114.0", "s", "1", "0", "0"]
    assert table["dispatch"] == ["dispatch", "0", "-", "-", "0", "2", "2"]
    assert table["shop1:a1"][1:3] == ["accept", "breached"]
    assert table["shop1:9f2c41d07a11"][1:3] == ["dispatch", "STUCK"]
    assert table["inventory"][1:4] == ["0", "1", "12"]
    shipping = next(line for line in text.splitlines() if line.startswith("shipping"))
    assert "ecoship closed, swiftpost open" in shipping
    assert "restarts 1 (last: killed by SIGKILL" in shipping
    # however long, the unreachable service's reason stays on its row
    returns = next(line for line in text.splitlines() if line.startswith("returns"))
    assert returns.endswith(f"unreachable ({LONG_ERROR})")


def test_the_sla_report_on_a_terminal_marks_breaches_red_and_risks_yellow() -> None:
    text = on_a_terminal(render_sla(SUMMARY))
    assert "─" in text  # the rule under each header is a line, not dashes
    assert "\x1b[1;31m" in text and "breached" in text  # breached: bold red
    assert "\x1b[33m" in text  # at risk, consumer lag: yellow
    assert "\x1b[32mecoship closed" in text  # a closed circuit: green
    assert "\x1b[1;31mswiftpost open" in text


def test_waybill_sla_json_is_the_summary_as_it_was(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("waybill.sla_report.fetch_summary", lambda url, token: SUMMARY)
    args = build_parser().parse_args(["sla", "--url", "http://orders", "--token=t", "--json"])
    assert cmd_sla(args) == 0
    out = capsys.readouterr().out
    assert out == json.dumps(SUMMARY, indent=2, default=str) + "\n"
    assert json.loads(out) == SUMMARY

    args = build_parser().parse_args(["sla", "--url", "http://orders", "--token=t"])
    assert cmd_sla(args) == 0
    out = capsys.readouterr().out  # captured: not a terminal, so plain
    assert_plain(out)
    assert rows(out)["accept"][1] == "2"


# --- waybill dlq list --------------------------------------------------------------------

EVENT_ID = "0b9d3a52-5ad4-4f0e-9a57-3d6f1c1a2b3c"
LETTER = DeadLetter(
    original_topic="stock.received",
    partition=0,
    offset=3,
    key="NEW-1",
    value_base64=base64.b64encode(json.dumps({"event_id": EVENT_ID}).encode()).decode(),
    error="unknown warehouse 'NEW-1'\n  raised in receive_stock\n" + "x" * 200,
    error_type="ValueError",
    attempts=1,
    consumer_group="inventory",
    failed_at=datetime(2026, 11, 22, 13, tzinfo=UTC),
)
RECORDS: list[dlq.DeadLetterRecord] = [
    ("stock.received.dlq", 0, 0, LETTER, b""),
    ("stock.received.dlq", 0, 1, None, b"\xff\x00garbage"),
]


def test_dead_letters_piped_are_a_row_each_with_the_start_of_the_error() -> None:
    text = piped(render_dead_letters(RECORDS))
    assert_plain(text)
    lines = text.splitlines()
    assert lines[0].split() == ["topic", "group", "tries", "event_id", "error"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:5] == ["stock.received", "inventory", "1", EVENT_ID, "unknown"]
    # a multi-line error is one row, cut where it always was
    assert "unknown warehouse 'NEW-1' raised in receive_stock xxx" in lines[2]
    assert lines[2].endswith(" ".join(LETTER.error.split())[: dlq.ERROR_SHOWN])
    assert lines[3].split()[:4] == ["stock.received.dlq", "-", "-", "-"]
    assert "(unreadable dead letter, 9 bytes)" in lines[3]
    assert len(lines) == 4
    assert piped(render_dead_letters([])) == "no dead letters\n"


def test_dead_letters_on_a_terminal_show_the_error_in_red() -> None:
    text = on_a_terminal(render_dead_letters(RECORDS))
    assert "\x1b[31munknown warehouse" in text
    assert "\x1b[1mtopic" in text


async def test_dlq_list_json_is_as_it_was(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def read(kafka: KafkaSettings, *, topic: str | None = None) -> list[Any]:
        return list(RECORDS)

    monkeypatch.setattr(dlq, "read_dead_letters", read)
    assert await list_dead_letters(topic=None, as_json=True, kafka=KafkaSettings()) == 0
    out = capsys.readouterr().out
    expected = [
        {"dlq": "stock.received.dlq", "partition": 0, "offset": 0} | LETTER.model_dump(mode="json"),
        {"dlq": "stock.received.dlq", "partition": 0, "offset": 1},
    ]
    assert out == json.dumps(expected, indent=2) + "\n"
    assert json.loads(out)[0]["error"] == LETTER.error  # the whole error, not the start

    assert await list_dead_letters(topic=None, as_json=False, kafka=KafkaSettings()) == 0
    out = capsys.readouterr().out
    assert_plain(out)
    assert len(out.splitlines()) == 4


# --- waybill bench -----------------------------------------------------------------------


def bench_result(*, valid: bool = True) -> BenchResult:
    cpu = {"orders": 3.0, "broker": 4.0, "postgres": 5.0}
    latency = {"p50": 812.3, "p95": 1400.0, "p99": 1500.4, "max": 1600.0}
    result = BenchResult(
        started_at="2026-12-04T10:00:00+00:00",
        machine={"cpus": 2},
        options={"partitions": 2, "replicas": 1, "full": False, "hops": 2},
        phases=[
            PhaseResult(
                "peak",
                300,
                None,
                2.1,
                142.9,
                150.2,
                latency,
                12.345,
                cpu,
                batch_sizes={"orders": 12.5},
                database_per_order={"transactions": 6.1, "rows_written": 38.2},
                hops_ms={"placed->accepted": {"p50": 20.0, "p99": 40.0}},
            ),
            PhaseResult("low-rate", 30, 10.0, 3.0, 10.0, None, latency, 20.5, cpu),
        ],
        idle_cores=0.012,
        references=[ReferenceResult("null pipeline, batched", 2, 300, 0.5, 600.0, 3.2, {})],
        peak_memory_mb={"orders": 120.4},
        valid=valid,
        ratios={"of_ceiling": 0.238, "of_naive": 3.57},
    )
    result.checks = (
        {"orders": 330, "labels_at_carrier": 330, "units_shipped": 900, "units_ordered": 900}
        if valid
        else {"problems": ["2 orders have no shipments.label-created"]}
    )
    return result


def test_the_bench_result_piped_is_plain_tables() -> None:
    text = piped(bench.render(bench_result()))
    assert_plain(text)
    table = rows(text)
    assert table["peak"] == ["peak", "300", "142.9", "150.2", "812", "1400", "1500", "12.35"]
    low = ["low-rate", "(10/s)", "30", "10.0", "-", "812", "1400", "1500", "20.50"]
    assert table["low-rate"] == low
    assert re.search(r"^null pipeline, batched +300 +600\.0 +3\.20$", text, re.MULTILINE)
    assert re.search(r"^peak +6\.1 +38\.2 +placed->accepted 20/40 +orders 12\.5$", text, re.M)
    assert "idle: CPU 0.012 cores" in text
    assert text.rstrip().endswith("no dead letters: PASS")
    failed = piped(bench.render(bench_result(valid=False)))
    assert failed.rstrip().endswith("checks: FAILED: 2 orders have no shipments.label-created")


def test_the_bench_result_on_a_terminal_says_pass_in_green_and_fail_in_red() -> None:
    assert "\x1b[1;32mPASS" in on_a_terminal(bench.render(bench_result()))
    assert "\x1b[1;31mFAILED" in on_a_terminal(bench.render(bench_result(valid=False)))


def test_bench_json_is_the_result_as_it_was(capsys: pytest.CaptureFixture[str]) -> None:
    result = bench_result()
    print_result(result, as_json=True)
    out = capsys.readouterr().out
    assert out == json.dumps(asdict(result), indent=2) + "\n"
    assert json.loads(out)["phases"][0]["latency_ms"]["p99"] == 1500.4
    print_result(result, as_json=False)
    assert_plain(capsys.readouterr().out)


async def run_phase_progress(console: Console, out: io.StringIO, *, ticks: int) -> None:
    """The progress of a phase whose counts move ``ticks`` times, each step waited for
    until the display has shown it."""
    counts = PhaseCounts("peak", 300, 0, 0)
    progress = PhaseProgress(console)
    progress.TERMINAL_INTERVAL = progress.PLAIN_INTERVAL = 0.01
    progress.start(lambda: counts)
    for _ in range(ticks):
        counts.placed = min(300, counts.placed + 100)
        counts.labelled = min(300, counts.labelled + 60)
        shown = f"placed {counts.placed}/300, labelled {counts.labelled}/300"
        await wait_for(lambda shown=shown: shown in out.getvalue(), timeout=10, what=shown)
    await progress.stop()


async def test_bench_progress_piped_is_a_line_at_a_time() -> None:
    out = io.StringIO()
    await run_phase_progress(terminal.console_for(out), out, ticks=5)
    text = out.getvalue()
    assert_plain(text)
    lines = text.splitlines()
    assert len(lines) >= 5  # a line for each step at least
    line = re.compile(r"^  \[ *\d+\.\d s\] peak: placed \d+/300, labelled \d+/300, \d+ labelled/s$")
    assert all(line.match(x) for x in lines), lines
    assert lines[-1].startswith("  [") and "placed 300/300, labelled 300/300" in lines[-1]


async def test_bench_progress_on_a_terminal_is_a_bar_redrawn_in_place() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=120)
    await run_phase_progress(console, out, ticks=5)
    text = out.getvalue()
    assert "\x1b[2K" in text  # lines erased: the display was redrawn, not appended
    assert "━" in text
    # it ends showing how the phase ended
    assert text[text.rindex("placed") :].startswith("placed 300/300, labelled 300/300")


# --- the demo of waybill up --------------------------------------------------------------


def demo_progress(delivered: int = 5) -> DemoProgress:
    return DemoProgress(
        elapsed=12.3,
        placed=8,
        total=8,
        delivered=delivered,
        returns=2,
        decisions=Counter({"approved": 1, "rejected:late": 1}),
        by_status={"accepted": 1, "shipped": 2, "delivered": delivered},
    )


def test_the_demo_progress_line_is_what_it_was() -> None:
    assert demo_progress().line() == (
        "[  12.3s] this run: placed 8/8, delivered 5/8 | all orders: accepted=1  shipped=2"
        "  delivered=5 | returns requested 2, decided: approved=1, rejected:late=1"
    )
    assert demo_progress(8).done() and not demo_progress(7).done()


def test_the_demo_progress_on_a_terminal_is_tables() -> None:
    text = on_a_terminal(demo_progress().view())
    assert ESCAPE in text and "━" in text
    assert re.search(r"12 s +8/8 +\S*5/8", text)
    assert "\x1b[32mapproved 1" in text and "\x1b[33mrejected:late 1" in text


async def test_the_demo_shows_its_progress_as_lines_when_piped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = [demo_progress(3), demo_progress(8)]

    async def progress_now() -> DemoProgress:
        return seen.pop(0)

    stop = asyncio.Event()
    ended = await asyncio.wait_for(
        up._show_progress(progress_now, stop=stop, timeout=60, every=0.01), 10
    )
    assert ended is not None and ended.done()
    out = capsys.readouterr().out
    assert_plain(out)
    assert re.findall(r"delivered (\d+)/8", out) == ["3", "8"]


async def test_the_demo_redraws_its_progress_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=120)
    monkeypatch.setattr(terminal, "console_for", lambda stream=None: console)

    async def progress_now() -> DemoProgress:
        return demo_progress(8)

    ended = await up._show_progress(progress_now, stop=asyncio.Event(), timeout=60)
    assert ended is not None
    text = out.getvalue()
    assert ESCAPE in text and "all orders by status" in text
    assert "this run: placed" not in text  # no plain lines on a terminal


async def test_a_stopped_demo_shows_nothing_more(capsys: pytest.CaptureFixture[str]) -> None:
    async def progress_now() -> DemoProgress:
        raise AssertionError("a stopped demo asks for no progress")

    stop = asyncio.Event()
    stop.set()
    assert await up._show_progress(progress_now, stop=stop, timeout=60) is None
    assert capsys.readouterr().out == ""
