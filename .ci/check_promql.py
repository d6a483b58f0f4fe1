#!/usr/bin/env python3
"""Evaluates every PromQL expression of the Grafana dashboards and of the alert rules against a
running Prometheus that scrapes a Tally under load (.ci/observability-check starts both).

A dashboard expression must be valid and return data, unless every Tally metric it uses is one
of the RESERVED names (counters of events a healthy load does not produce, such as 429s): then
"valid, no data" is accepted. An alert rule must be loaded and evaluated without error, and every metric it
uses must exist in Prometheus (again except the reserved ones); its condition itself is normally
false on a healthy system, so its result may be empty.

Prints one line per expression with what it returned. Exits 1 on any failure.
Standard library only.
"""

import argparse
import glob
import json
import re
import sys
import time
import urllib.parse
import urllib.request

# Counters that only appear once their event happened, which a healthy load does not produce:
# "valid, no data" is accepted for them. Empty since Tally registers its event counters at zero at start (telemetry::init): keep the
# mechanism for a series that can only appear after its first event.
RESERVED: set[str] = set()
# Grafana's variables, replaced as Grafana would for a short range at a 1 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
METRIC_NAME = re.compile(r"\b(tally_[a-z0-9_]+|up)\b")


def api(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as error:
        return json.load(error)


def query(base, expr):
    return api(base, "/api/v1/query", query=expr)


def metrics_of(expr):
    """Metric names used by expr (Tally's, and `up`), without duplicates, in order."""
    seen = []
    for name in METRIC_NAME.findall(expr):
        if name not in seen:
            seen.append(name)
    return seen


def is_reserved(name):
    return name in RESERVED


def describe(result):
    """A short text of an instant query's result: series count and a few values."""
    data = result["data"]
    if data["resultType"] in ("scalar", "string"):
        return f"{data['resultType']} {data['result'][1]}"
    series = data["result"]
    shown = []
    for item in series[:4]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(item["metric"].items()) if k != "__name__")
        value = float(item["value"][1])
        shown.append(f"{{{labels}}} {value:.4g}" if labels else f"{value:.4g}")
    more = f" (+{len(series) - 4} more)" if len(series) > 4 else ""
    return f"{len(series)} series: " + "; ".join(shown) + more


def dashboard_targets(path):
    board = json.load(open(path))
    panels = []
    for panel in board["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            yield f"{board['title']} / {panel['title']} [{target['refId']}]", expr


def wait_for_data(base, min_samples, timeout):
    """Waits until Prometheus has min_samples scrapes of Tally with commits, and every rule
    has been evaluated."""
    give_up = time.time() + timeout
    while True:
        samples = query(base, "count_over_time(tally_batches_total[2m])")
        moving = query(base, "increase(tally_batches_total[30s]) > 0")
        rules = api(base, "/api/v1/rules")
        enough = (
            samples.get("status") == "success"
            and samples["data"]["result"]
            and float(samples["data"]["result"][0]["value"][1]) >= min_samples
            and moving.get("status") == "success"
            and moving["data"]["result"]
        )
        evaluated = rules.get("status") == "success" and all(
            not rule["lastEvaluation"].startswith("0001")
            for group in rules["data"]["groups"]
            for rule in group["rules"]
        )
        if enough and evaluated:
            return
        if time.time() > give_up:
            sys.exit(f"no data in Prometheus after {timeout} s: {samples} {moving}")
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--dashboards", default="grafana/dashboards")
    parser.add_argument("--min-samples", type=int, default=15)
    parser.add_argument("--timeout", type=int, default=120)
    args = parser.parse_args()
    base = args.prometheus.rstrip("/")

    wait_for_data(base, args.min_samples, args.timeout)
    failures = []

    print("== dashboard panels")
    for path in sorted(glob.glob(f"{args.dashboards}/*.json")):
        for source, expr in dashboard_targets(path):
            result = query(base, expr)
            if result.get("status") != "success":
                failures.append(f"{source}: invalid: {result.get('error')}\n    {expr}")
                print(f"FAIL {source}: {result.get('error')}")
                continue
            used = metrics_of(expr)
            if result["data"]["result"] or result["data"]["resultType"] == "scalar":
                print(f"ok   {source}: {describe(result)}")
            elif used and all(is_reserved(name) for name in used):
                print(f"ok   {source}: valid, no data (reserved: {', '.join(used)})")
            else:
                failures.append(f"{source}: no data\n    {expr}")
                print(f"FAIL {source}: no data: {expr}")

    print("== alert rules")
    rules = api(base, "/api/v1/rules")
    alert_count = 0
    for group in rules["data"]["groups"]:
        for rule in group["rules"]:
            if rule["type"] != "alerting":
                continue
            alert_count += 1
            name, expr = rule["name"], rule["query"]
            if rule["health"] != "ok":
                failures.append(f"alert {name}: {rule['health']}: {rule.get('lastError')}")
                print(f"FAIL alert {name}: {rule['health']} {rule.get('lastError')}")
                continue
            result = query(base, expr)
            if result.get("status") != "success":
                failures.append(f"alert {name}: invalid: {result.get('error')}")
                print(f"FAIL alert {name}: {result.get('error')}")
                continue
            missing = []
            for metric in metrics_of(expr):
                if is_reserved(metric):
                    continue
                present = query(base, f"count({{__name__={json.dumps(metric)}}})")
                if not present["data"]["result"]:
                    missing.append(metric)
            if missing:
                failures.append(f"alert {name}: no series for {', '.join(missing)}")
                print(f"FAIL alert {name}: no series for {', '.join(missing)}")
                continue
            reserved = [m for m in metrics_of(expr) if is_reserved(m)]
            note = f" (reserved: {', '.join(reserved)})" if reserved else ""
            state = "condition true now" if result["data"]["result"] else "condition false now"
            print(f"ok   alert {name} [{rule['state']}]: valid, metrics present{note}, {state}")
    if alert_count == 0:
        failures.append("no alerting rules loaded")

    for name in sorted(RESERVED):
        present = query(base, f"count({{__name__=~{json.dumps(name + '.*')}}})")
        if present["data"]["result"]:
            print(f"note {name} now has data: remove it from RESERVED (here and in telemetry.rs)")

    if failures:
        print(f"\n{len(failures)} failure(s):\n" + "\n".join(failures))
        sys.exit(1)
    print(f"\nall dashboard expressions and {alert_count} alert rules check out")


if __name__ == "__main__":
    main()
