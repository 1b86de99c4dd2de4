#!/usr/bin/env python3
"""Prints the results table of bench/README.md from bench/run.sh's JSON
files: per scenario and metric, the median of the runs and their spread."""

import glob
import json
import os
import re
import statistics
import sys


def procs(r, prefix):
    """Summed CPU cores of the processes whose label starts with prefix."""
    return sum(p["cpu_cores"] for p in r.get("processes", []) if p["label"].startswith(prefix))


def lat(r, q):
    return r["latency_ms"][q]


# scenario -> [(metric, function of one result, format, target)]
METRICS = {
    "chat": [
        ("messages/s", lambda r: r["messages_per_second"], "{:,.0f}", "≥ 8,000"),
        ("deliveries/s", lambda r: r["deliveries_per_second"], "{:,.0f}", "≥ 80,000"),
        ("delivered %", lambda r: 100 * r["delivery_ratio"], "{:.3f}", "100"),
        ("p50 ms", lambda r: lat(r, "p50"), "{:.1f}", ""),
        ("p99 ms", lambda r: lat(r, "p99"), "{:.1f}", "≤ 50"),
        ("max ms", lambda r: lat(r, "max"), "{:.1f}", ""),
        ("persisted %", lambda r: 100 * r["persisted"]["found"] / max(1, r["persisted"]["acked"]), "{:.2f}", "100"),
        ("gateways, cores", lambda r: procs(r, "gateway") + procs(r, "all"), "{:.2f}", ""),
        ("nats-server, cores", lambda r: procs(r, "nats"), "{:.2f}", ""),
        ("persister, cores", lambda r: procs(r, "persister"), "{:.2f}", ""),
        ("mariadbd, cores", lambda r: procs(r, "mariadbd"), "{:.2f}", ""),
        ("generator, cores", lambda r: r["generator"]["cpu_cores"], "{:.2f}", ""),
    ],
    "chat-max": [
        ("best rate passing (p99 ≤ 250 ms, ≥ 99.9 %)", lambda r: r["best_passing_rate"] or 0, "{:,.0f}", ""),
        ("messages/s at that rate", lambda r: r["messages_per_second"], "{:,.0f}", ""),
        ("p99 ms at that rate", lambda r: lat(r, "p99"), "{:.1f}", ""),
    ],
    "fanout-max": [
        ("best rate passing (p99 ≤ 250 ms, ≥ 99.9 %), messages/s", lambda r: r["best_passing_rate"] or 0, "{:,.0f}", ""),
        ("deliveries/s at that rate", lambda r: r["deliveries_per_second"], "{:,.0f}", ""),
        ("p99 ms at that rate", lambda r: lat(r, "p99"), "{:.1f}", ""),
    ],
    "fanout": [
        ("deliveries/s", lambda r: r["deliveries_per_second"], "{:,.0f}", "≥ 150,000"),
        ("delivered %", lambda r: 100 * r["delivery_ratio"], "{:.3f}", "100"),
        ("p50 ms", lambda r: lat(r, "p50"), "{:.1f}", ""),
        ("p99 ms", lambda r: lat(r, "p99"), "{:.1f}", ""),
        ("gateways, cores", lambda r: procs(r, "gateway") + procs(r, "all"), "{:.2f}", ""),
        ("generator, cores", lambda r: r["generator"]["cpu_cores"], "{:.2f}", ""),
    ],
    "idle": [
        ("connections held", lambda r: r["connected"], "{:,.0f}", "100,000"),
        ("gateway RSS per connection, KB", lambda r: r["gateway_rss_kb_per_connection"], "{:.1f}", "≤ 10"),
        ("heartbeats/s handled", lambda r: r["heartbeats_per_second"], "{:,.0f}", "= connections"),
        ("presence correct (all online, all offline after close)", lambda r: 1 if r["presence"]["correct"] else 0, "{:.0f}", "1"),
        ("gateway, cores", lambda r: procs(r, "gateway:6002") + procs(r, "all"), "{:.2f}", ""),
        ("presence, cores", lambda r: procs(r, "presence"), "{:.2f}", ""),
        ("generator, cores", lambda r: r["generator"]["cpu_cores"], "{:.2f}", ""),
    ],
    "presence": [
        ("heartbeats processed %", lambda r: 100 * r["processed_ratio"], "{:.2f}", "100"),
        ("heartbeats/s absorbed", lambda r: r["absorbed_per_second"], "{:,.0f}", "100,000"),
        ("presence, cores", lambda r: r["presence_cpu_cores"], "{:.2f}", "≤ 1"),
        ("redis-server, cores", lambda r: procs(r, "redis"), "{:.2f}", ""),
        ("presence RSS, MB", lambda r: r["presence_rss_kb"] / 1024, "{:.0f}", ""),
        ("came online / users", lambda r: r["came_online"] / r["expected_online"], "{:.3f}", "1"),
    ],
    "rest": [
        ("GET /api/rooms requests/s", lambda r: r["rooms"]["requests"]["per_second"], "{:,.0f}", "≥ 20,000"),
        ("GET /api/rooms p99 ms", lambda r: r["rooms"]["requests"]["latency_ms"]["p99"], "{:.2f}", ""),
        ("api, cores", lambda r: procs(r["rooms"], "api"), "{:.2f}", ""),
        ("mariadbd, cores", lambda r: procs(r["rooms"], "mariadbd"), "{:.2f}", ""),
        ("generator, cores", lambda r: r["rooms"]["generator"]["cpu_cores"], "{:.2f}", ""),
        ("logins/s during the flood", lambda r: r["login_flood"]["login"]["per_second"], "{:.0f}", "argon2-bound"),
        ("login p50 ms", lambda r: r["login_flood"]["login"]["latency_ms"]["p50"], "{:.0f}", ""),
        ("probe GET /api/rooms p99 ms, quiet → flood", lambda r: (r["probe_quiet"]["rooms"]["latency_ms"]["p99"], r["login_flood"]["probe_during"]["rooms"]["latency_ms"]["p99"]), "pair", "unaffected"),
        ("probe GET /api/user_rooms p99 ms, quiet → flood", lambda r: (r["probe_quiet"]["user_rooms"]["latency_ms"]["p99"], r["login_flood"]["probe_during"]["user_rooms"]["latency_ms"]["p99"]), "pair", "unaffected"),
    ],
}


def main(directory):
    groups = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = re.sub(r"-\d+$", "", os.path.basename(path)[:-5])
        groups.setdefault(name, []).append(json.load(open(path)))
    print("| scenario | metric | median | spread (min – max) | runs | target |")
    print("|---|---|---|---|---|---|")
    for name, results in groups.items():
        kind = name.removeprefix("all-")
        for metric, f, fmt, target in METRICS.get(kind, []):
            try:
                values = [f(r) for r in results]
            except (KeyError, TypeError, ZeroDivisionError):
                continue
            if fmt == "pair":
                a = statistics.median(v[0] for v in values)
                b = statistics.median(v[1] for v in values)
                med, spread = f"{a:.1f} → {b:.1f}", " ; ".join(f"{x:.1f} → {y:.1f}" for x, y in values)
            else:
                med = fmt.format(statistics.median(values))
                spread = f"{fmt.format(min(values))} – {fmt.format(max(values))}"
            print(f"| {name} | {metric} | {med} | {spread} | {len(values)} | {target} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
