"""The bench's results as tables, as target checks, and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

# The targets (2-core machine, ratios from one run).
INPUT_VS_FLOOR = 0.5  # broker+history input lines/s at the fewest receivers, as a share of the floor's
CPU_GROWTH = 1.5  # broker CPU per input line, most receivers over fewest
LATENCY_P99_MS = 5.0
JOIN_SECONDS = 10.0
KIB_PER_CLIENT = 64.0
IDLE_CPU_PCT = 10.0
FILE_MB_S = 200.0  # issue 18: a file on loopback, up and down
FILE_P99_GROWTH = 2.0  # issue 18: chat p99 during a transfer over without

Row = dict[str, Any]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns right-aligned but the first; each as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _failed(row: Row) -> str | None:
    return row.get("failure")


def fanout_table(rows: list[Row]) -> str:
    floors = {r["receivers"]: r for r in rows if r["target"] == "floor" and not _failed(r)}
    by_key = {(r["target"], r["receivers"]): r for r in rows if not _failed(r)}
    fewest = min((r["receivers"] for r in rows), default=0)
    out = []
    for r in rows:
        if _failed(r):
            out.append([r["target"], str(r["receivers"]), "FAILED: " + r["failure"].splitlines()[0][:70]] + [""] * 8)
            continue
        floor = floors.get(r["receivers"])
        vs_floor = _ratio(r["input_lines_per_s"], floor["input_lines_per_s"]) if floor else None
        base = by_key.get((r["target"], fewest))
        growth = _ratio(r["cpu_us_per_line"], base["cpu_us_per_line"]) if base and r["receivers"] != fewest else None
        loss = str(r["loss"]) + (f" ({r['disorder']} out of order)" if r["disorder"] else "")
        loss += f" ({r['errors']} refused)" if r["errors"] else ""
        loss += " TIMED OUT" if r["timed_out"] else ""
        out.append([
            r["target"], str(r["receivers"]), _n(r["lines"]), _n(r["input_lines_per_s"]),
            _n(vs_floor, 2) + "x" if vs_floor else "-", _n(r["deliveries_per_s"]), _n(r["cpu_us_per_line"], 1),
            _n(growth, 2) + "x" if growth else "-", _n(r.get("main_thread_us_per_line", 0.0), 1),
            _n(r["rss_kib_peak"] / 1024, 1), loss,
        ])
    headers = ["target", "recv", "lines", "input lines/s", "vs floor", "deliveries/s", "CPU us/line",
               f"vs {fewest} recv", "main thread us/line", "peak RSS MiB", "loss"]
    return table(headers, out)


def latency_table(rows: list[Row]) -> str:
    out = []
    for r in rows:
        if _failed(r):
            out.append([r["target"], "FAILED: " + r["failure"].splitlines()[0][:70]] + [""] * 8)
            continue
        lat, ack, lag = r["latency_ms"], r["ack_ms"], r["send_lag_ms"]
        loss = str(r["loss"]) + (f" ({r['disorder']} out of order)" if r["disorder"] else "")
        loss += f" ({r['errors']} refused)" if r["errors"] else ""
        out.append([
            r["target"], _n(r["sent"]), _n(r["deliveries"]), _n(lat["p50"], 2), _n(lat["p99"], 2), _n(lat["max"], 2),
            _n(ack["p99"], 2) if ack else "-", _n(lag["p99"], 2), _n(r["cpu_pct"], 1), loss,
        ])
    headers = ["target", "lines", "deliveries", "p50 ms", "p99 ms", "max ms", "ACK p99 ms", "send lag p99 ms",
               "relay CPU %", "loss"]
    return table(headers, out)


def scale_table(r: Row) -> str:
    if _failed(r) and "joined" not in r:
        return table(["target", "result"], [[r["target"], "FAILED: " + r["failure"].splitlines()[0][:100]]])
    idle = "idle_cpu_pct" in r
    row = [
        r["target"], _n(r["clients"]), _n(r["joined"]), _n(r["join_seconds"], 2),
        f"{_n(r['rss_kib_per_client'], 1)} ({_n(r['rss_kib_per_client_joined'], 1)})" if idle else "-", _n(r["idle_cpu_pct"], 1) if idle else "-",
        f"{_n(r['pongs'])} of {_n(r['pings'])}" if idle else "-",
        str(r["join_errors"] + r.get("idle_errors", 0)), str(r["events_while_idle"]) if idle else "-",
    ]
    headers = ["target", "clients", "joined", "join s", "RSS/client KiB (DEALER only)", "idle CPU %", "PINGs answered",
               "errors", "dropped"]
    text = table(headers, [row])
    if _failed(r):
        text += f"\nFAILED: {r['failure']}"
    return text


def check_targets(results: dict[str, Any]) -> list[Row]:
    """Each target of the issue: met (True/False), or None when its workload did not run."""
    checks: list[Row] = []

    def check(name: str, met: bool | None, detail: str, info: bool = False) -> None:
        checks.append({"target": name, "met": met, "detail": detail, "info": info})

    fan = [r for r in results.get("fanout", []) if not _failed(r)]
    counts = sorted({r["receivers"] for r in fan})
    if counts:
        fewest, most = counts[0], counts[-1]
        get = {(r["target"], r["receivers"]): r for r in fan}
        hist, floor = get.get(("broker+history", fewest)), get.get(("floor", fewest))
        name = f"fan-out, history on, {fewest} receivers: input >= {INPUT_VS_FLOOR:g}x floor, 0 loss"
        if hist and floor:
            ratio = _ratio(hist["input_lines_per_s"], floor["input_lines_per_s"]) or 0.0
            check(name, ratio >= INPUT_VS_FLOOR and hist["loss"] == 0,
                  f"{hist['input_lines_per_s']:,.0f} vs {floor['input_lines_per_s']:,.0f} lines/s = {ratio:.2f}x, "
                  f"loss {hist['loss']}")
        else:
            check(name, None, "not run")
        for target in ("broker", "broker+history", "broker+secure"):
            lo, hi = get.get((target, fewest)), get.get((target, most))
            # CURVE encrypts each message once per subscriber (each connection has its own key), so with
            # --secure the growth is what encryption costs, shown beside the target rather than as one.
            secure = target == "broker+secure"
            name = f"{target}: CPU per input line at {most} receivers <= {CPU_GROWTH:g}x that at {fewest}"
            if secure:
                name = f"{target}, not a target (CURVE encrypts once per subscriber): CPU per line {most} vs {fewest} receivers"
            if lo and hi and most != fewest:
                growth = _ratio(hi["cpu_us_per_line"], lo["cpu_us_per_line"]) or float("inf")
                main = _ratio(hi.get("main_thread_us_per_line", 0.0), lo.get("main_thread_us_per_line", 0.0))
                main_note = (
                    f"; main (Python) thread alone {hi['main_thread_us_per_line']:.1f} vs "
                    f"{lo['main_thread_us_per_line']:.1f} = {main:.2f}x" if main else ""
                )
                check(name, None if secure else growth <= CPU_GROWTH,
                      f"{hi['cpu_us_per_line']:.1f} vs {lo['cpu_us_per_line']:.1f} us/line = {growth:.2f}x{main_note}",
                      info=secure)
            elif target == "broker+history":
                check(name, None, "needs two receiver counts" if most == fewest else "not run")
    lat = next((r for r in results.get("latency", []) if r["target"] == "broker" and not _failed(r)), None)
    name = f"latency p99 <= {LATENCY_P99_MS:g} ms"
    if lat:
        name += f" at {lat['rate']:g} lines/s with {lat['clients']} clients"
        p99 = lat["latency_ms"]["p99"]
        check(name, p99 <= LATENCY_P99_MS and lat["loss"] == 0, f"p99 {p99:.2f} ms, loss {lat['loss']}")
    else:
        check(name, None, "not run")
    sc = results.get("scale")
    if sc and "joined" in sc:
        n = sc["clients"]
        js = sc["join_seconds"]
        check(f"{n} clients joined within {JOIN_SECONDS:g} s", js is not None and js <= JOIN_SECONDS,
              f"{sc['joined']} joined" + (f" in {js:.2f} s" if js is not None else ""))
        if "rss_kib_per_client" in sc:
            kib, cpu = sc["rss_kib_per_client"], sc["idle_cpu_pct"]
            check(f"<= {KIB_PER_CLIENT:g} KiB broker memory per client", kib <= KIB_PER_CLIENT, f"{kib:.1f} KiB")
            check(f"idle CPU with {n} clients heartbeating < {IDLE_CPU_PCT:g}% of one core", cpu < IDLE_CPU_PCT,
                  f"{cpu:.1f}%")
    else:
        check("scale targets", None, "not run" if not sc else "FAILED: " + sc.get("failure", "?").splitlines()[0])
    files = results.get("files")
    if files is not None and not _failed(files):
        check(f"files: transfer >= {FILE_MB_S:g} MB/s on loopback", min(files["upload_mb_s"], files["download_mb_s"]) >= FILE_MB_S,
              f"upload {files['upload_mb_s']:.0f}, download {files['download_mb_s']:.0f} MB/s (cp {files['cp_mb_s']:.0f})")
        check(f"files: chat p99 during a transfer <= {FILE_P99_GROWTH:g}x without", files["p99_ratio"] <= FILE_P99_GROWTH,
              f"{files['p99_busy_ms']:.2f} vs {files['p99_quiet_ms']:.2f} ms = {files['p99_ratio']:.2f}x")
    elif files is not None:
        check(f"files: transfer >= {FILE_MB_S:g} MB/s on loopback", None, "failed")
    return checks


def targets_text(checks: list[Row]) -> str:
    word = {True: "met   ", False: "MISSED", None: "n/a   "}
    return "\n".join(f"  {'info  ' if c.get('info') else word[c['met']]}  {c['target']}: {c['detail']}" for c in checks)


def problems(results: dict[str, Any]) -> list[str]:
    """What makes a run fail, whatever the targets: loss, disorder, refusals, time-outs, failed runs."""
    found = []
    for r in [*results.get("fanout", []), *results.get("latency", [])]:
        label = f"{r['workload']} {r['target']}" + (f" {r['receivers']} receivers" if "receivers" in r else "")
        if _failed(r):
            found.append(f"{label}: failed")
            continue
        for key in ("loss", "disorder", "bad_frames", "errors"):
            if r.get(key):
                found.append(f"{label}: {key} {r[key]}")
        if r.get("timed_out"):
            found.append(f"{label}: timed out")
    files = results.get("files")
    if files is not None:
        if _failed(files):
            found.append("files: failed")
        elif files.get("loss"):
            found.append(f"files: chat loss {files['loss']}")
    sc = results.get("scale")
    if sc:
        if _failed(sc):
            found.append("scale: failed")
        for key in ("join_errors", "idle_errors", "events_while_idle"):
            if sc.get(key):
                found.append(f"scale: {key} {sc[key]}")
    return found


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
