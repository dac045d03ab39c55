"""BENCHMARKS.md from one run's results: machine, command, tables, ratios, targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import lanes_bench, latency, memory_bench
from bench import profile as profile_mod
from bench.systems import LABELS, PEERS, TUNED

NOTES = Path(__file__).with_name("NOTES.md")


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"{a / b:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**holds**" if ok else "**does not hold**")


def e2e_medians(rows: list[dict[str, Any]]) -> dict[tuple[str, float, int], dict[str, Any]]:
    """Median rate (and its runs) per (system, latency, concurrency) over successful repeats."""
    grouped: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["system"], float(row["latency_ms"]), int(row["concurrency"]))
        grouped.setdefault(key, []).append(row)
    out = {}
    for key, runs in grouped.items():
        good = sorted((r for r in runs if r["ok"]), key=lambda r: float(r["rate"]))
        mid = good[len(good) // 2] if good else None
        out[key] = {
            "rate": float(mid["rate"]) if mid else None,
            "rates": [round(float(r["rate"])) for r in runs if r["ok"]],
            "drain_s": float(mid["drain_s"]) if mid else None,
            "cpu_us_per_msg": float(mid["cpu_us_per_msg"]) if mid else None,
            "fake_cpu_us_per_msg": float(mid.get("fake_cpu_us_per_msg", 0)) if mid else None,
            "failures": [r["error"] for r in runs if not r["ok"]],
            "duplicates": sum(int(r["duplicates"]) for r in runs),
            "errors": sum(int(r["errors"]) for r in runs),
        }
    return out


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, holds) for each target of issue 5 this run measured."""
    out: list[tuple[str, str, bool | None]] = []
    pub = {c["api"]: c for c in results.get("publish", []) if not c.get("error")}
    peers_pub = [pub[p]["median_us"] for p in PEERS if p in pub]
    for api, floor in (("smsrelay.sync", "xadd.sync"), ("smsrelay.async", "xadd.async")):
        if api in pub and floor in pub:
            ratio = pub[api]["median_us"] / pub[floor]["median_us"]
            out.append(
                (
                    f"publish median ≤ 1.5x raw XADD (`{api}` vs `{floor}`)",
                    f"{pub[api]['median_us']:.0f} µs vs {pub[floor]['median_us']:.0f} µs "
                    f"= {ratio:.2f}x",
                    ratio <= 1.5,
                )
            )
        if api in pub and peers_pub:
            best = min(peers_pub)
            out.append(
                (
                    f"publish median lower than every peer (`{api}`)",
                    f"{pub[api]['median_us']:.0f} µs vs best peer {best:.0f} µs",
                    pub[api]["median_us"] < best,
                )
            )
    med = e2e_medians(results.get("e2e", []))

    def rate(system: str, lat: float, conc: int) -> float | None:
        row = med.get((system, lat, conc))
        return row["rate"] if row else None

    def best_peer(lat: float, conc: int) -> tuple[str, float] | None:
        rates = [(p, r) for p in PEERS if (r := rate(p, lat, conc))]
        return max(rates, key=lambda x: x[1]) if rates else None

    ours, bare, peer = rate("smsrelay", 0, 64), rate("bare", 0, 64), best_peer(0, 64)
    if ours and peer:
        out.append(
            (
                "end-to-end 0 ms / 64: ≥ 2x the best peer",
                f"{ours:,.0f} vs {peer[0]} {peer[1]:,.0f} msg/s = {ours / peer[1]:.2f}x",
                ours >= 2 * peer[1],
            )
        )
    if ours and bare:
        out.append(
            (
                "end-to-end 0 ms / 64: ≥ 0.6x the bare loop",
                f"{ours:,.0f} vs {bare:,.0f} msg/s = {ours / bare:.2f}x",
                ours >= 0.6 * bare,
            )
        )
    for conc, goal in ((64, 288), (256, 1152)):
        ours = rate("smsrelay", 200, conc)
        if ours:
            bare = rate("bare", 200, conc)
            extra = f" (bare loop {bare:,.0f})" if bare else ""
            out.append(
                (
                    f"end-to-end 200 ms / {conc}: ≥ {goal:,} msg/s",
                    f"{ours:,.0f} msg/s{extra}",
                    ours >= goal,
                )
            )
    ours, peer = rate("smsrelay", 200, 256), best_peer(200, 256)
    if ours and peer:
        out.append(
            (
                "end-to-end 200 ms / 256: ≥ 2x the best peer",
                f"{ours:,.0f} vs {peer[0]} {peer[1]:,.0f} msg/s = {ours / peer[1]:.2f}x",
                ours >= 2 * peer[1],
            )
        )
    for lat, conc in ((0.0, 64), (200.0, 256)):
        ours = rate("smsrelay", lat, conc)
        tuned = [(p, r) for p in (*PEERS, *TUNED) if (r := rate(p, lat, conc))]
        if ours and any(p in TUNED for p, _ in tuned):
            name, best = max(tuned, key=lambda x: x[1])
            out.append(
                (
                    f"(beyond the issue) {lat:g} ms / {conc}: ≥ 2x the best peer, tuned "
                    "variants included",
                    f"{ours:,.0f} vs {name} {best:,.0f} msg/s = {ours / best:.2f}x",
                    ours >= 2 * best,
                )
            )
    for row in results.get("crash", []):
        if row["system"] != "smsrelay":
            continue
        idle = 30.0
        if "=" in row["setting"]:
            idle = float(row["setting"].split("=", 1)[1].split()[0])
        got = row["recovery_s"]
        out.append(
            (
                f"crash recovery ≤ claim idle + 2 s ({row['setting']})",
                f"{got:.1f} s (limit {idle + 2:g} s)"
                if got is not None
                else f"not within {row['cap_s']:g} s",
                got is not None and got <= idle + 2,
            )
        )
    return out


def _code_line(code: dict[str, Any] | None) -> str:
    if not code:
        return "- smsrelay code: not recorded"
    changed = code.get("changed") or []
    extra = (
        (
            f", with {len(changed)} uncommitted change(s) under smsrelay/ "
            f"({', '.join(changed[:8])}{', ...' if len(changed) > 8 else ''})"
        )
        if changed
        else ""
    )
    return f"- smsrelay code: commit `{code.get('commit') or '?'}`{extra}"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    lines = [
        "# Benchmarks: smsrelay vs Dramatiq, Celery, arq and a bare asyncio loop",
        "",
        "Generated by `bench/` (issue 5); every number below comes from the one run described "
        "here, all systems measured side by side on the same machine, Redis and fake Twilio.",
        "",
        "## Machine and command",
        "",
        f"- CPU: {m['cpus']} x {m['cpu_model']}; memory {m['memory_gib']} GiB; {m['os']}",
        f"- Python {m['python']}; Redis {m['redis_version']} (loopback)",
        "- " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        _code_line(results.get("code")),
        f"- Command: `{results['command']}` ({cfg['mode']} preset); started "
        f"{results['started']}, took {results['elapsed_s'] / 60:.1f} min",
        f"- {cfg['repeats']} repeat(s) of each end-to-end measurement, systems interleaved "
        "(order rotated per repeat); medians reported. The machine is shared (2 cores, other "
        "test suites running at times): read ratios within this run, not absolute numbers "
        "across runs.",
        "",
        "Setup common to all systems: the official `twilio` SDK (9.x) against the project's fake "
        "Twilio (`smsrelay.testing.fake_twilio`) in its own process; each message has a distinct "
        "E.164 number and body; workers log at WARNING (no per-message log line); concurrency "
        "is equal for all (N in flight).",
        "",
        "| system | configuration |",
        "|---|---|",
        "| smsrelay | `smsrelay worker --no-mirror` (no Postgres here; the mirror only reads "
        "dead letters), `SMSRELAY_WORKER_CONCURRENCY=N`, everything else default (rate limit "
        "5/h per number, Lua begin/sent scripts, heartbeat, claimer, mover; uvloop where "
        "installed) |",
        "| bare asyncio loop | `bench/bare_loop.py`: XREADGROUP → SDK `create_async` → XACK, "
        "nothing else; aiohttp pool sized N; on uvloop where installed, like `smsrelay worker` |",
        "| Dramatiq | `dramatiq --processes 1 --threads N`, RedisBroker defaults, default "
        "middleware; sync SDK with a requests pool of N |",
        "| Celery | `celery worker --pool threads --concurrency N`, `task_acks_late=True`, "
        "results ignored, default prefetch (4); sync SDK with a requests pool of N |",
        "| arq | `max_jobs=N`, other settings default (poll 0.5 s, job_timeout 300 s, "
        "keep_result 3600 s); async SDK, aiohttp pool sized N |",
        "| Celery, tuned | as Celery, plus a 0.1 s no-op timer on the worker's hub: the "
        "workaround of celery#6941 (threads pool: acks and prefetch refills wait for the next "
        "hub wake-up, seconds apart) |",
        "| arq, tuned | as arq, plus `poll_delay=0.05` (at 0.5 s a worker starts at most "
        "max_jobs jobs per poll) and uvloop (what smsrelay's worker runs on) |",
        "",
    ]
    verdicts = targets(results)
    if verdicts:
        lines += [
            "## Targets (issue 5), from this run",
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
        ]
        lines += [f"| {t} | {got} | {_verdict(ok)} |" for t, got, ok in verdicts]
        lines.append("")
    if results.get("ceiling"):
        lines += ["## The fake Twilio is not the bottleneck", ""]
        lines += [
            f"- its own ceiling, raw aiohttp POSTs from another process: "
            f"**{c['rate']:,.0f} req/s** at {c['concurrency']} concurrent"
            for c in results["ceiling"]
        ]
        lines += [
            "- its CPU per message during the end-to-end runs is in the table below (fake µs/msg)",
            "",
        ]
    if results.get("publish"):
        pub = results["publish"]
        floor = next((c for c in pub if c["api"] == "xadd.sync" and not c["error"]), None)
        lines += [
            "## 1. Publish cost (per call, one at a time)",
            "",
            f"{cfg['publish_count']:,} calls per round after a 200-call warm-up, "
            f"{cfg['publish_rounds']} round(s); median over rounds of each round's median "
            "and p99.",
            "",
            "| API | median µs | p99 µs | x raw XADD (median) |",
            "|---|---:|---:|---:|",
        ]
        for c in pub:
            if c["error"]:
                lines.append(f"| {c['label']} | failed: {c['error']} | | |")
                continue
            lines.append(
                f"| {c['label']} | {c['median_us']:,.1f} | {c['p99_us']:,.0f} | "
                f"{_ratio(c['median_us'], floor['median_us'] if floor else None)} |"
            )
        lines.append("")
    if results.get("e2e"):
        med = e2e_medians(results["e2e"])
        lines += [
            "## 2. End-to-end throughput",
            "",
            f"{cfg['e2e_messages']:,} SMS queued before the worker starts; rate = messages "
            "/ (last request - first request + latency), i.e. the drain, not start-up. "
            "CPU µs/msg is the worker's process tree CPU over the drain.",
            "",
        ]
        for lat, conc in [tuple(s) for s in cfg["e2e_scenarios"]]:
            ours = med.get(("smsrelay", float(lat), int(conc)), {}).get("rate")
            lines += [
                f"### {lat:g} ms provider latency, {conc} in flight"
                + (f" (ideal {conc / (lat / 1000):,.0f} msg/s)" if lat else ""),
                "",
                "| system | msg/s (median) | runs | drain s | worker CPU µs/msg | "
                "fake µs/msg | smsrelay ÷ this |",
                "|---|---:|---|---:|---:|---:|---:|",
            ]
            for name in cfg["systems"]:
                row = med.get((name, float(lat), int(conc)))
                if row is None:
                    continue
                fail = (
                    f" ({len(row['failures'])} failed: {row['failures'][0]})"
                    if row["failures"]
                    else ""
                )
                dup = f"; {row['duplicates']} duplicate sends" if row["duplicates"] else ""
                lines.append(
                    f"| {LABELS[name]} | {_fmt(row['rate'])}{fail}{dup} | "
                    f"{', '.join(map(str, row['rates']))} | {_fmt(row['drain_s'], 2)} | "
                    f"{_fmt(row['cpu_us_per_msg'])} | {_fmt(row['fake_cpu_us_per_msg'])} | "
                    f"{_ratio(ours, row['rate'])} |"
                )
            lines.append("")
    if results.get("crash"):
        lines += [
            "## 3. Crash recovery",
            "",
            f"{cfg['crash_in_flight']} SMS in flight in the victim (the fake holds every "
            "request), a second worker running; SIGKILL of the victim's process group at "
            "t0; recovery = t0 → the last of them accepted from the survivor. Cap "
            f"{cfg['crash_cap_s']:g} s. 'held' = how long before the kill the victim had "
            "taken them (timers based on delivery started then)."
            + (
                " The scenarios ran in parallel, beside the other phases (they mostly wait)."
                if cfg.get("crash_background")
                else ""
            ),
            "",
            "| system | setting | recovery s | first s | held s | recovered | "
            "mechanism (expected) |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        for r in results["crash"]:
            rec = (
                _fmt(r["recovery_s"], 1)
                if r["recovery_s"] is not None
                else f"not within {r['cap_s']:g}"
            )
            err = f" — {r['error']}" if r["error"] else ""
            label = r["setting"] + ("" if r["default"] else " *(not the default)*")
            lines.append(
                f"| {r['system']} | {label} | {rec} | {_fmt(r['first_s'], 1)} | "
                f"{r['held_before_kill_s']:.1f} | {r['recovered']}/{r['in_flight']}"
                f"{err} | {r['expected']} |"
            )
        lines.append("")
    if results.get("queued_bytes") or results.get("rss"):
        lines += ["## 4. Footprint", ""]
    if results.get("queued_bytes"):
        qb = results["queued_bytes"]
        ours = next((q["bytes_per_msg"] for q in qb if q["system"] == "smsrelay"), None)
        lines += [
            f"Redis bytes per queued message ({qb[0]['messages']:,} queued, no worker):",
            "",
            "| system | bytes/msg (MEMORY USAGE) | used_memory Δ/msg (noisy) | keys | "
            "this ÷ smsrelay |",
            "|---|---:|---:|---:|---:|",
        ]
        for q in qb:
            err = f" failed: {q['error']}" if q["error"] else ""
            lines.append(
                f"| {q['system']}{err} | {q['bytes_per_msg']:,.0f} | "
                f"{q['used_memory_per_msg']:,.0f} | {q['keys']:,} | "
                f"{_ratio(q['bytes_per_msg'], ours)} |"
            )
        lines.append("")
    if results.get("rss"):
        rs = results["rss"]
        lines += [
            f"Worker RSS (process tree) before and after {rs[0]['messages']:,} messages "
            "(0 ms latency, 64 in flight):",
            "",
            "| system | before MiB | after MiB | growth MiB | peak MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rs:
            err = f" failed: {r['error']}" if r["error"] else ""
            lines.append(
                f"| {LABELS[r['system']]}{err} | {r['before_mib']:.1f} | "
                f"{r['after_mib']:.1f} | {r['after_mib'] - r['before_mib']:+.1f} | "
                f"{r['peak_mib']:.1f} |"
            )
        lines.append("")
    if results.get("profiles"):
        lines += ["## 5. Where the smsrelay worker's time goes (py-spy)", ""]
        if results.get("profiles_from"):  # profiled in a later run than the rest
            lines += [str(results["profiles_from"]), ""]
        for p in results["profiles"]:
            lines.append(profile_mod.to_markdown(profile_mod.Profile(**p)))
    lines += _measure_sections(results)
    if NOTES.exists():
        lines += ["## Notes and analysis", "", NOTES.read_text().strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


# -- issue 16's "Measure" ---------------------------------------------------------------------
def targets16(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, holds) for each goal of issue 16's "Measure" this run measured."""
    out: list[tuple[str, str, bool | None]] = []
    if results.get("lanes"):
        s = lanes_bench.summary(results["lanes"])
        if "p99_holds" in s:
            out.append(
                (
                    f"high behind bulk: p99 ≤ 2 x {s['latency_ms']:g} ms + 50 ms",
                    f"p99 {s['pooled_p99_ms']:.0f} ms (p50 {s['pooled_p50_ms']:.0f} ms, "
                    f"{s['pooled_n']} messages) vs {s['p99_goal_ms']:g} ms",
                    s["p99_holds"],
                )
            )
        if "rate_holds" in s:
            out.append(
                (
                    "bulk throughput with the high messages ≥ 90 % of without",
                    f"{s['rate_with']:,.0f} vs {s['rate_without']:,.0f} msg/s "
                    f"= {100 * s['rate_ratio']:.0f} %",
                    s["rate_holds"],
                )
            )
    if results.get("memory"):
        m = results["memory"]
        g = memory_bench.goals(m)
        if "bytes_holds" in g:
            out.append(
                (
                    "Redis bytes per queued message ≤ payload + 200 B",
                    f"{m['used_memory_per_msg']:,.0f} B/msg (used_memory Δ, "
                    f"{m['messages']:,} queued) vs entry {m['entry_bytes']} B + 200 = "
                    f"{g['bytes_limit']} B",
                    g["bytes_holds"],
                )
            )
        if "rss_holds" in g:
            out.append(
                (
                    f"worker RSS flat while draining (end - start ≤ {memory_bench.FLAT_MIB:g} MiB)",
                    f"{m['rss_start_mib']:.1f} → peak {m['rss_peak_mib']:.1f} → "
                    f"{m['rss_end_mib']:.1f} MiB ({g['rss_growth_mib']:+.1f})",
                    g["rss_holds"],
                )
            )
    out += latency.goals(results.get("latency", []))
    return out


def _ms(row: dict[str, Any], key: str) -> str:
    if row[key] is not None:
        return _fmt(row[key], 1)
    return f"> {row['wait_s']:.0f} s wait" if row["missing"] else "—"


def _latency_section(results: dict[str, Any]) -> list[str]:
    rows = results["latency"]
    cfg = results["config"]
    lines = [
        "## 8. End-to-end latency at 50 % and 90 % of each system's own maximum",
        "",
        f"Each system's maximum throughput (one worker, {cfg.get('latency_concurrency', 64)} in "
        "flight; from the end-to-end phase of this run when it ran, else the median of "
        f"{cfg.get('latency_max_repeats', 1)} backlog drain(s) here), then for each load a "
        "worker on an empty queue (a probe message first, so it is up) and an open-loop "
        "publisher in a process of its own (`bench/openloop.py`, the system's own client) "
        "at that fraction of the maximum for "
        f"{cfg.get('latency_duration_s', '?')} s. Latency = publish call → the fake's 201 "
        "(its recorded arrival + the latency it adds); a message not sent when the wait ended "
        "counts as infinitely late.",
        "",
    ]
    for latency_ms in dict.fromkeys(float(r["latency_ms"]) for r in rows):
        lines += [
            f"### {latency_ms:g} ms provider latency",
            "",
            "| system | max msg/s | load | msg/s target / published | p50 ms | p95 ms | "
            "p99 ms | max ms | sent | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in (r for r in rows if float(r["latency_ms"]) == latency_ms):
            src = " (e2e)" if r["max_source"] == "e2e phase" else ""
            dup = f" ({r['duplicates']} dup.)" if r["duplicates"] else ""
            lines.append(
                f"| {LABELS[r['system']]} | {_fmt(r['max_rate'])}{src} | {r['load']:.0%} | "
                f"{_fmt(r['target_rate'])} / {_fmt(r['achieved_rate'])} | {_ms(r, 'p50_ms')} | "
                f"{_ms(r, 'p95_ms')} | {_ms(r, 'p99_ms')} | {_ms(r, 'max_ms')} | "
                f"{r['delivered']:,}/{r['published']:,}{dup} | {r['error']} |"
            )
        lines.append("")
    return lines


def _memory_section(m: dict[str, Any]) -> list[str]:
    g = memory_bench.goals(m)
    marks = [
        f"{int(f * 100)} %: {v:.1f}"
        for f in (0.1, 0.25, 0.5, 0.75, 1.0)
        if (v := memory_bench.at_progress(m["samples"], f)) is not None
    ]
    return [
        "## 7. Memory: Redis bytes per queued message, worker RSS while draining (smsrelay)",
        "",
        f"{m['messages']:,} messages published with `Producer.publish` (priority normal, no "
        f"worker running). Payload: a {m['body_bytes']}-byte body; the stream entry as written "
        f"is {m['fields']} fields ({', '.join(f'`{n}`' for n in m.get('field_names', []))}), "
        f"**{m['entry_bytes']} bytes** of names and values. Then one worker (fake Twilio at 0 ms, "
        f"{m['concurrency']} in flight) drained them in {m['drain_s']:.1f} s, its RSS (process "
        f"tree) sampled {len(m['samples'])} times."
        + (f" **Failed: {m['error']}**" if m.get("error") else ""),
        "",
        "| measure | value |",
        "|---|---:|",
        "| Redis `used_memory` Δ per message (server-wide) | "
        f"**{m['used_memory_per_msg']:,.0f} B** |",
        f"| `MEMORY USAGE` of the namespace's {m['keys']} key(s) per message | "
        f"{m['memory_usage_per_msg']:,.0f} B |",
        f"| goal: entry + 200 B | {g.get('bytes_limit', '—')} B: "
        f"{_verdict(g.get('bytes_holds'))} |",
        f"| worker RSS at start / peak / end | **{m['rss_start_mib']:.1f} / "
        f"{m['rss_peak_mib']:.1f} / {m['rss_end_mib']:.1f} MiB** (VmHWM {m['rss_hwm_mib']:.1f}) |",
        f"| RSS by share of the backlog sent (MiB) | {'; '.join(marks) or '—'} |",
        f"| goal: flat (end - start ≤ {memory_bench.FLAT_MIB:g} MiB) | "
        f"{g.get('rss_growth_mib', 0):+.1f} MiB: {_verdict(g.get('rss_holds'))} |",
        "",
    ]


def _lanes_section(results: dict[str, Any]) -> list[str]:
    rows = results["lanes"]
    cfg = results["config"]
    s = lanes_bench.summary(rows)
    first = rows[0]
    lines = [
        "## 6. A login code behind a campaign (priority lanes, smsrelay)",
        "",
        f'{first["bulk"]:,} messages queued with `priority="bulk"`, then one worker '
        f"(default concurrency, {first['concurrency']}), the fake Twilio answering after "
        f"{first['latency_ms']:g} ms. Once {cfg.get('lanes_start_after', '?')} sends were "
        f'accepted, {cfg.get("lanes_high", "?")} messages with `priority="high"` were '
        f"published one every {cfg.get('lanes_interval_ms', '?')} ms (open loop). Latency = "
        "publish call → the fake's 201 (its recorded arrival + the latency it adds). Bulk "
        "throughput = bulk sends arriving during the publishing window, per second; the "
        "reference is the same run without the high messages (window from the same point). "
        "Runs with and without alternate; medians over rounds, percentiles pooled over all "
        "high messages.",
        "",
        "| run | high p50 ms | high p99 ms | high max ms | high sent (dup.) | "
        "bulk msg/s in window | bulk msg/s whole drain | note |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for i, r in enumerate(rows):
        kind = "with high" if r["with_high"] else "bulk only"
        high = f"{r['high_delivered']}/{r['high']} ({r['high_duplicates']})" if r["high"] else "—"
        lines.append(
            f"| {i // 2 + 1}: {kind} | {_fmt(r['high_p50_ms'], 1)} | {_fmt(r['high_p99_ms'], 1)} "
            f"| {_fmt(r['high_max_ms'], 1)} | {high} | {_fmt(r['bulk_window_rate'])} | "
            f"{_fmt(r['bulk_drain_rate'])} | {r['error'] or ''} |"
        )
    lines.append("")
    if "pooled_p99_ms" in s:
        lines.append(
            f"Pooled over {s['pooled_n']} high messages: p50 **{s['pooled_p50_ms']:.1f} ms**, "
            f"p99 **{s['pooled_p99_ms']:.1f} ms**, max {s['pooled_max_ms']:.1f} ms "
            f"(goal p99 ≤ {s['p99_goal_ms']:g} ms: {_verdict(s['p99_holds'])})."
        )
    if "rate_ratio" in s:
        lines.append(
            f"Bulk throughput in the window, median: **{s['rate_with']:,.0f}** msg/s with the "
            f"high messages vs **{s['rate_without']:,.0f}** without = "
            f"**{100 * s['rate_ratio']:.0f} %** (goal ≥ 90 %: {_verdict(s['rate_holds'])})."
        )
    lines.append("")
    return lines


def _measure_sections(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    verdicts = targets16(results)
    if verdicts:
        lines += [
            '## Goals of issue 16 ("Measure"), from this run',
            "",
            "| goal | measured | verdict |",
            "|---|---|---|",
        ]
        lines += [f"| {t} | {got} | {_verdict(ok)} |" for t, got, ok in verdicts]
        lines.append("")
    if results.get("lanes"):
        lines += _lanes_section(results)
    if results.get("memory"):
        lines += _memory_section(results["memory"])
    if results.get("latency"):
        lines += _latency_section(results)
    return lines
