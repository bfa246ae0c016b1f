"""``python -m chat.bench``: run every workload against the broker and both baselines, print the tables."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import zmq

from chat.bench import report
from chat.bench.fanout import run_fanout
from chat.bench.files import files_table, run_files
from chat.bench.latency import run_latency
from chat.bench.procs import REPO, BenchError
from chat.bench.scale import BROKER_FDS_PER_CLIENT, FD_SLACK, run_scale
from chat.bench.targets import FANOUT_DEFAULT, HISTORY_ACK, HISTORY_UNINDEXED, TARGETS, Target
from chat.bench.web import WebLoad, run_web
from chat.bench.web import text as web_text

QUICK = {  # a smoke run of every workload in a few seconds (CI)
    "lines": 1000,
    "receivers": [2, 4],
    "latency_clients": 4,
    "latency_rate": 200.0,
    "latency_seconds": 0.5,
    "scale_clients": 40,
    "scale_idle_seconds": 0.5,
    "file_mb": 2,
    "file_chat_clients": 2,
    "file_chat_seconds": 1.0,
    "web_clients": 4,
    "web_direct_clients": 2,
    "web_senders": 2,
    "web_rate": 20.0,
    "web_seconds": 1.0,
}


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("give a number above 0")
        return value

    return parse


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("give counts separated by commas, e.g. 10,100") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("every count must be 1 or more")
    return sorted(set(counts))


def _targets(text: str) -> list[Target]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(TARGETS)}")
    return [TARGETS[n] for n in names]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m chat.bench",
        description="Benchmark the broker against libzmq's own proxy (limit) and a bare Python relay (floor), "
        "with real processes on 127.0.0.1. Prints tables and writes a JSON file.",
    )
    pos_int, pos_float = _positive(int), _positive(float)
    fan = ap.add_argument_group("1. fan-out throughput (4.: the same with --secure and with history on)")
    fan.add_argument("--lines", type=pos_int, default=40_000, help="lines per run (default %(default)s)")
    fan.add_argument("--receivers", type=_counts, default=[10, 100], help="receiver counts (default 10,100)")
    fan.add_argument("--max-deliveries", type=pos_int, default=2_000_000,
                     help="lines per run are cut to this over the receivers (default %(default)s)")
    fan.add_argument("--line-bytes", type=pos_int, default=100, help="bytes of text per line (default %(default)s)")
    fan.add_argument("--window", type=pos_int, default=500, help="unacknowledged lines at most (default %(default)s)")
    fan.add_argument("--fanout-targets", type=_targets, default=FANOUT_DEFAULT,
                     help=f"default {','.join(t.name for t in FANOUT_DEFAULT)}; also {HISTORY_ACK.name} "
                     f"(one ACK per line, as before ACKS) and {HISTORY_UNINDEXED.name} (what the search index costs)")
    fan.add_argument("--skip-fanout", action="store_true")
    lat = ap.add_argument_group("2. latency")
    lat.add_argument("--latency-clients", type=pos_int, default=50, help="default %(default)s")
    lat.add_argument("--latency-rate", type=pos_float, default=500.0, help="lines a second, all clients (default %(default)g)")
    lat.add_argument("--latency-seconds", type=pos_float, default=10.0, help="default %(default)g")
    lat.add_argument("--latency-targets", type=_targets, default=[TARGETS[n] for n in ("limit", "floor", "broker")],
                     help="default limit,floor,broker")
    lat.add_argument("--skip-latency", action="store_true")
    sc = ap.add_argument_group("3. scale")
    sc.add_argument("--scale-clients", type=pos_int, default=2000, help="default %(default)s")
    sc.add_argument("--scale-idle-seconds", type=pos_float, default=5.0,
                    help="the window in which idle CPU is measured (default %(default)g)")
    sc.add_argument("--scale-join-timeout", type=pos_float, default=30.0, help="default %(default)g")
    sc.add_argument("--scale-no-sub", action="store_true", help="DEALERs only, no SUB per client")
    sc.add_argument("--scale-sub-on-welcome", action="store_true",
                    help="each SUB connects on its WELCOME (as a real client does), so joins reach those already in")
    sc.add_argument("--skip-scale", action="store_true")
    fi = ap.add_argument_group("5. file transfer")
    fi.add_argument("--file-mb", type=pos_int, default=200, help="MB in the file (default %(default)s)")
    fi.add_argument("--file-chat-clients", type=pos_int, default=10, help="clients chatting meanwhile (default %(default)s)")
    fi.add_argument("--file-chat-rate", type=pos_float, default=100.0, help="their lines a second, all together (default %(default)g)")
    fi.add_argument("--file-chat-seconds", type=pos_float, default=20.0,
                    help="each chat run: without, then during transfers (default %(default)g)")
    fi.add_argument("--skip-files", action="store_true")
    web = ap.add_argument_group("6. web gateway: WebSocket users against direct users in one run")
    web.add_argument("--web-clients", type=pos_int, default=WebLoad.web_clients, help="default %(default)s")
    web.add_argument("--web-direct-clients", type=pos_int, default=WebLoad.direct_clients, help="default %(default)s")
    web.add_argument("--web-senders", type=pos_int, default=WebLoad.senders, help="default %(default)s")
    web.add_argument("--web-rate", type=pos_float, default=WebLoad.rate,
                     help="lines a second, all senders (default %(default)g)")
    web.add_argument("--web-seconds", type=pos_float, default=WebLoad.seconds, help="default %(default)g")
    web.add_argument("--skip-web", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a small smoke run of every workload (a few seconds)")
    ap.add_argument("--run-timeout", type=pos_float, default=120.0,
                    help="seconds one timed run may take before it is cut short (default %(default)g)")
    ap.add_argument("--json", type=Path, default=Path("bench-result.json"), help="default %(default)s")
    return ap


def lines_for(opts: argparse.Namespace, receivers: int) -> int:
    return max(1, min(opts.lines, opts.max_deliveries // receivers))


def meta() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "platform": platform.platform(),
        "commit": commit,
    }


def open_files_for_broker(clients: int) -> tuple[int | None, str]:
    """The open-file limit the scale broker needs, and what the bench did about it (inherited otherwise)."""
    needed = clients * BROKER_FDS_PER_CLIENT + FD_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None, f"open files: limit {soft} is enough for {clients} clients (about {needed} needed)"
    if hard != resource.RLIM_INFINITY and hard < needed:
        return hard, (
            f"open files: CANNOT give the broker the {needed} it needs for {clients} clients: the hard limit is "
            f"{hard} (raise it, e.g. `prlimit --nofile={needed}:{needed} python -m chat.bench`); trying with {hard}"
        )
    return needed, f"open files: started the broker with a soft limit of {needed} (was {soft}; like `ulimit -n {needed}`)"


def say(text: str) -> None:
    """Progress, on standard error: standard output gets the tables."""
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    if opts.quick:
        for key, value in QUICK.items():
            setattr(opts, key, value)
    # SIGTERM unwinds like Ctrl-C, so that every process started is ended by the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {"meta": meta(), "options": _jsonable(vars(opts)), "notes": []}
    started = time.monotonic()

    def attempt(label: str, run: Callable[[], dict[str, Any]], failed: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        say(f"bench: {label} ...")
        try:
            row = run()
        except BenchError as exc:
            say(f"bench: {label} FAILED: {exc}")
            row = {**failed, "failure": str(exc)}
        say(f"bench: {label} done in {time.monotonic() - t0:.1f} s")
        return row

    try:
        with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp_name:
            tmp = Path(tmp_name)
            if not opts.skip_fanout:
                results["fanout"] = []
                for receivers in opts.receivers:
                    lines = lines_for(opts, receivers)
                    for target in opts.fanout_targets:
                        results["fanout"].append(attempt(
                            f"fan-out {target.name}, {receivers} receivers, {lines} lines",
                            lambda: run_fanout(target, receivers, lines, opts, tmp),
                            {"workload": "fanout", "target": target.name, "receivers": receivers, "lines": lines},
                        ))
            if not opts.skip_latency:
                results["latency"] = [
                    attempt(
                        f"latency {target.name}, {opts.latency_clients} clients, {opts.latency_rate:g} lines/s",
                        lambda: run_latency(target, opts, tmp),
                        {"workload": "latency", "target": target.name},
                    )
                    for target in opts.latency_targets
                ]
            if not opts.skip_scale:
                open_files, note = open_files_for_broker(opts.scale_clients)
                results["notes"].append(note)
                say(f"bench: {note}")
                results["scale"] = attempt(
                    f"scale, {opts.scale_clients} clients",
                    lambda: run_scale(opts, tmp, open_files),
                    {"workload": "scale", "target": "broker", "clients": opts.scale_clients},
                )
            if not opts.skip_files:
                results["files"] = attempt(
                    f"file transfer, {opts.file_mb} MB, {opts.file_chat_clients} chatting at {opts.file_chat_rate:g} lines/s",
                    lambda: run_files(opts, tmp),
                    {"workload": "files", "target": "broker"},
                )
            if not opts.skip_web:
                load = WebLoad(opts.web_clients, opts.web_direct_clients, opts.web_senders, opts.web_rate,
                               opts.web_seconds)
                results["web"] = attempt(
                    f"web gateway, {load.web_clients} WebSocket and {load.direct_clients} direct clients",
                    lambda: {"workload": "web", "target": "gateway", **run_web(load)},
                    {"workload": "web", "target": "gateway"},
                )
    except KeyboardInterrupt:
        say("bench: interrupted; every process started has been ended")
        results["interrupted"] = True
    results["meta"]["seconds"] = time.monotonic() - started
    results["meta"]["load_average_end"] = os.getloadavg()
    results["targets"] = report.check_targets(results)
    results["problems"] = report.problems(results)
    print(render(results, opts))
    report.write_json(opts.json, results)
    print(f"\nresults written to {opts.json}")
    return 130 if results.get("interrupted") else (1 if results["problems"] else 0)


def render(results: dict[str, Any], opts: argparse.Namespace) -> str:
    m = results["meta"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_start"])
    parts = [
        f"chat bench: {m['cpus']} CPUs, load average {load} at start; Python {m['python']}, pyzmq {m['pyzmq']}, "
        f"libzmq {m['libzmq']}; all on 127.0.0.1; {m['seconds']:.0f} s; commit {m['commit']}",
    ]
    if "fanout" in results:
        parts.append(
            f"\n1./4. FAN-OUT: 1 sender, lines of {opts.line_bytes} bytes as fast as accepted (at most {opts.window} "
            f"unacknowledged), every receiver checks every seq; lines per run = min({opts.lines}, "
            f"{opts.max_deliveries} / receivers)\n" + report.fanout_table(results["fanout"])
        )
    if "latency" in results:
        parts.append(
            f"\n2. LATENCY: {opts.latency_clients} clients, {opts.latency_rate:g} lines/s between them for "
            f"{opts.latency_seconds:g} s, each line to every client's SUB; send -> SUB delivery\n"
            + report.latency_table(results["latency"])
        )
    if "scale" in results:
        sc = results["scale"]
        subs = "DEALER + SUB" if sc.get("with_sub", not opts.scale_no_sub) else "DEALER only"
        parts.append(
            f"\n3. SCALE: {opts.scale_clients} clients ({subs}) join at once and heartbeat; idle window "
            f"{opts.scale_idle_seconds:g} s\n" + report.scale_table(sc)
        )
    if "files" in results:
        parts.append(
            f"\n5. FILES: a {opts.file_mb} MB file up and down through client.py while {opts.file_chat_clients} clients "
            f"chat at {opts.file_chat_rate:g} lines/s\n" + files_table(results["files"])
        )
    if "web" in results:
        row = results["web"]
        parts.append("\n6. WEB GATEWAY: " + (f"FAILED: {row['failure']}" if "failure" in row else web_text(row)))
    parts.append("\nTARGETS (2-core machine, ratios from this run):\n" + report.targets_text(results["targets"]))
    loss = sum(r.get("loss", 0) for r in [*results.get("fanout", []), *results.get("latency", [])])
    parts.append(f"\nLOSS: {loss} in total" + (" (every run: 0)" if loss == 0 else " - SOME RUN LOST LINES"))
    if results["problems"]:
        parts.append("PROBLEMS: " + "; ".join(results["problems"]))
    for note in results["notes"]:
        parts.append(f"note: {note}")
    return "\n".join(parts)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {
        k: ([t.name for t in v] if isinstance(v, list) and v and isinstance(v[0], Target) else
            str(v) if isinstance(v, Path) else v)
        for k, v in options.items()
    }


if __name__ == "__main__":
    sys.exit(main())
