"""Static checks of the Grafana dashboard and the Prometheus alerts: promtool
checks and unit-tests the rules, every panel and alert is complete, and every
metric they query is one the services export (found in the given /metrics
dumps), so a renamed metric cannot leave a panel blank or an alert silent.

usage: check_observability.py [--promtool PATH] METRICS_FILE...
       check_observability.py [--promtool PATH] --static-only

--promtool defaults to $KOM_PROMTOOL, then `promtool` on the PATH.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = "deploy/grafana/komunikator.json"
RULES = "deploy/prometheus/alerts.yaml"
RULE_TESTS = "deploy/prometheus/alerts.test.yaml"

# Loose on purpose, no PromQL parser: outside string literals (label
# values), any identifier with our prefix is a metric name. The look-behind
# keeps it from matching inside a longer identifier.
METRIC = re.compile(r"(?<![a-zA-Z0-9_:])komunikator_[a-zA-Z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")

# The series names a metric family of each type is exposed as; a gauge's (or
# an untyped family's) is its own.
SUFFIXES = {
    "counter": ["_total", "_created"],
    "histogram": ["_bucket", "_sum", "_count", "_created"],
    "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    "summary": ["", "_sum", "_count", "_created"],
    "info": ["_info"],
}

failures = []


def fail(what):
    failures.append(what)
    print(f"  FAILED: {what}")


def run_promtool(promtool, *args):
    done = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        fail(f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}")
    else:
        print(f"promtool {' '.join(args)}: ok")


def panels(dashboard):
    """Every panel, rows' own panels included (a collapsed row holds them)."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard):
    """(where, expr) for every query the dashboard sends, checking each panel
    on the way."""
    queries = []
    count = 0
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        count += 1
        title = panel.get("title")
        if not title:
            fail(f"dashboard panel {panel.get('id')} has no title")
        targets = [t for t in panel.get("targets", []) if t.get("expr")]
        if not targets:
            fail(f"dashboard panel {title or panel.get('id')!r} has no target")
        queries += [(f"panel {title!r}", t["expr"]) for t in targets]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            queries.append((f"variable ${variable['name']}", query))
    print(f"dashboard: {count} panels checked for a title and a query")
    return queries


def alert_queries(rules):
    queries = []
    count = 0
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            if "alert" in rule:
                count += 1
                for key, where in (("severity", "labels"), ("summary", "annotations"), ("description", "annotations")):
                    if not rule.get(where, {}).get(key):
                        fail(f"alert {name} has no {key} in its {where}")
            queries.append((f"alert {name}", rule.get("expr", "")))
    print(f"alerts: {count} checked for a severity, a summary and a description")
    return queries


def exported_names(path):
    """The series names a text exposition (Prometheus or OpenMetrics) holds or
    declares. A family declared by `# TYPE` counts even without samples: a
    labelled counter nothing has incremented yet has none."""
    names = set()
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = (line.split() + [""])[:4]
            # Prometheus's own text format names a counter family with its
            # `_total`, OpenMetrics without.
            if kind == "counter":
                family = family.removesuffix("_total")
            names.update(family + suffix for suffix in SUFFIXES.get(kind, [""]))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promtool", default=os.environ.get("KOM_PROMTOOL") or "promtool")
    parser.add_argument("--static-only", action="store_true",
                        help="check the files and run promtool, without comparing to metrics dumps")
    parser.add_argument("metrics_files", nargs="*", metavar="METRICS_FILE",
                        help="a /metrics dump of a running service")
    args = parser.parse_args()
    if args.static_only == bool(args.metrics_files):
        parser.error("give the metrics dumps of the services, or --static-only")

    promtool = shutil.which(args.promtool)
    if promtool:
        run_promtool(promtool, "check", "rules", RULES)
        run_promtool(promtool, "test", "rules", RULE_TESTS)
    else:
        fail(f"no promtool at {args.promtool!r} (Debian: apt-get install prometheus)")
    queries = dashboard_queries(json.loads((ROOT / DASHBOARD).read_text()))
    queries += alert_queries(yaml.safe_load((ROOT / RULES).read_text()))

    used = {}
    for where, expr in queries:
        for name in METRIC.findall(STRING.sub('""', expr)):
            used.setdefault(name, []).append(where)
    if args.metrics_files:
        exported = set().union(*(exported_names(f) for f in args.metrics_files))
        missing = sorted(set(used) - exported)
        for name in missing:
            fail(f"{name} is not exported (used by {', '.join(sorted(set(used[name])))})")
        print(f"metrics: {len(used) - len(missing)} of {len(used)} used names found in "
              f"{len(args.metrics_files)} dump(s): {' '.join(sorted(set(used) - set(missing)))}")
    else:
        print(f"metrics: {len(used)} names used, not compared (--static-only)")

    if failures:
        print(f"observability files: {len(failures)} problem(s)")
        sys.exit(1)
    print("observability files: ok")


if __name__ == "__main__":
    main()
