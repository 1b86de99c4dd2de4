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


def server_cpu_per_1000(r):
    """CPU seconds of every server-side process (Komunikator or the peer,
    NATS, MariaDB, Redis) per 1,000 deliveries, over the measured window."""
    cpu = sum(p["cpu_seconds"] for p in r.get("processes", []))
    return 1000 * cpu / max(1, r["delivered"])


# scenario -> [(metric, function of one result, format, target)]
METRICS = {
    "chat": [
        ("messages/s", lambda r: r["messages_per_second"], "{:,.0f}", "≥ 8,000"),
        ("deliveries/s", lambda r: r["deliveries_per_second"], "{:,.0f}", "≥ 80,000"),
        ("delivered %", lambda r: 100 * r["delivery_ratio"], "{:.3f}", "100"),
        ("p50 ms", lambda r: lat(r, "p50"), "{:.1f}", ""),
        ("p95 ms", lambda r: lat(r, "p95"), "{:.1f}", ""),
        ("p99 ms", lambda r: lat(r, "p99"), "{:.1f}", "≤ 50"),
        ("max ms", lambda r: lat(r, "max"), "{:.1f}", ""),
        ("server CPU s per 1,000 deliveries", server_cpu_per_1000, "{:.3f}", ""),
        ("persisted %", lambda r: 100 * r["persisted"]["found"] / max(1, r["persisted"]["acked"]), "{:.2f}", "100"),
        ("gateways, cores", lambda r: procs(r, "gateway") + procs(r, "all") + procs(r, "peer"), "{:.2f}", ""),
        ("nats-server, cores", lambda r: procs(r, "nats"), "{:.2f}", ""),
        ("persister, cores", lambda r: procs(r, "persister"), "{:.2f}", ""),
        ("mariadbd, cores", lambda r: procs(r, "mariadbd"), "{:.2f}", ""),
        ("generator, cores", lambda r: r["generator"]["cpu_cores"], "{:.2f}", ""),
    ],
    "chat-max": [
        ("best rate passing (p99 ≤ max_p99_ms, ≥ 99.9 %)", lambda r: r["best_passing_rate"] or 0, "{:,.0f}", ""),
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
        ("gateways, cores", lambda r: procs(r, "gateway") + procs(r, "all") + procs(r, "peer"), "{:.2f}", ""),
        ("server CPU s per 1,000 deliveries", server_cpu_per_1000, "{:.3f}", ""),
        ("generator, cores", lambda r: r["generator"]["cpu_cores"], "{:.2f}", ""),
    ],
    "idle": [
        ("connections held", lambda r: r["connected"], "{:,.0f}", "100,000"),
        ("gateway RSS per connection, KB", lambda r: r["gateway_rss_kb_per_connection"], "{:.1f}", "≤ 10"),
        ("heartbeats/s handled", lambda r: r["heartbeats_per_second"], "{:,.0f}", "= connections"),
        ("presence correct (all online, all offline after close)", lambda r: 1 if r["presence"]["correct"] else 0, "{:.0f}", "1"),
        ("gateway, cores", lambda r: procs(r, "gateway:6002") + procs(r, "all") + procs(r, "peer"), "{:.2f}", ""),
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


# The same kind of result under another scenario name.
KINDS = {"light-400": "chat", "light-1000": "chat", "fanout-cold": "fanout", "chat-max-fine": "chat-max", "chat-6000": "chat"}

# The comparison table: (scenario, metric, function, format, target).
COMPARED = [
    ("light-400", "p50 / p95 / p99 ms at 400 msg/s", lambda r: (lat(r, "p50"), lat(r, "p95"), lat(r, "p99")), "triple", ""),
    ("light-1000", "p50 / p95 / p99 ms at 1,000 msg/s", lambda r: (lat(r, "p50"), lat(r, "p95"), lat(r, "p99")), "triple", "p99 ≤ 5"),
    ("light-1000", "server CPU s per 1,000 deliveries (at 1,000 msg/s)", server_cpu_per_1000, "{:.3f}", ""),
    ("chat-max", "highest rate at p99 ≤ 50 ms, 100 % delivered, msg/s", lambda r: r["best_passing_rate"] or 0, "{:,.0f}", "≥ 12,000"),
    ("fanout", "fan-out 1×1,000 warmed up, 100 msg/s: p99 ms", lambda r: lat(r, "p99"), "{:.1f}", "≤ 25"),
    ("fanout-max", "fan-out: most deliveries/s at p99 ≤ 250 ms", lambda r: (r["best_passing_rate"] or 0) * r["users_per_room"], "{:,.0f}", "≥ 250,000"),
    ("fanout-cold", "fan-out cold (right after 1,000 joins), 100 msg/s: p99 ms", lambda r: lat(r, "p99"), "{:.1f}", ""),
    ("idle", "idle socket, RSS per connection, KB", lambda r: r["gateway_rss_kb_per_connection"], "{:.1f}", "≤ 10"),
]
SYSTEMS = [("peer-", "Socket.IO 4 Node"), ("all-", "Komunikator all"), ("", "Komunikator distributed")]


def load(directory):
    groups = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = re.sub(r"-\d+$", "", os.path.basename(path)[:-5])
        groups.setdefault(name, []).append(json.load(open(path)))
    return groups


def median_of(values, fmt):
    if fmt == "triple":
        return tuple(statistics.median(v[i] for v in values) for i in range(3))
    return statistics.median(values)


def show(value, fmt):
    if fmt == "triple":
        return " / ".join(f"{x:.1f}" for x in value)
    return fmt.format(value)


def comparison(groups):
    """Peer beside Komunikator: median (min – max) of the runs, and the
    ratio peer / Komunikator of the medians (of p99 for latency triples)."""
    print("| | " + " | ".join(label for _, label in SYSTEMS) + " | peer ÷ all | peer ÷ distributed | target |")
    print("|---|---|---|---|---|---|---|")
    for scenario, metric, f, fmt, target in COMPARED:
        cells, medians = [], []
        for prefix, _ in SYSTEMS:
            try:
                values = [f(r) for r in groups.get(prefix + scenario, [])]
            except (KeyError, TypeError, ZeroDivisionError):
                values = []
            if not values:
                cells.append("–")
                medians.append(None)
                continue
            med = median_of(values, fmt)
            medians.append(med)
            if fmt == "triple":
                lo, hi = min(v[2] for v in values), max(v[2] for v in values)
                cells.append(f"{show(med, fmt)} (p99 {lo:.1f} – {hi:.1f})")
            else:
                cells.append(f"{show(med, fmt)} ({show(min(values), fmt)} – {show(max(values), fmt)})")
        ratios = []
        for ours in medians[1:]:
            peer = medians[0]
            if peer is None or ours is None:
                ratios.append("–")
                continue
            a, b = (peer[2], ours[2]) if fmt == "triple" else (peer, ours)
            ratios.append(f"{a / b:.2f}" if b else "–")
        print(f"| {metric} | " + " | ".join(cells + ratios) + f" | {target} |")


def main(directory):
    groups = load(directory)
    if any(name.startswith("peer-") for name in groups):
        comparison(groups)
        print()
    print("| scenario | metric | median | spread (min – max) | runs | target |")
    print("|---|---|---|---|---|---|")
    for name, results in groups.items():
        kind = name.removeprefix("all-").removeprefix("peer-")
        kind = KINDS.get(kind, kind)
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
