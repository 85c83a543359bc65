"""The gateway scene (`make eval`): lateral movement blocked, normal service traffic allowed.

The simulator's gateway scene (`riskguard simulate --scene gateway`: internal services calling
each other for days, releases that start calling new routes, compromised long-running services
reaching for sensitive routes they never called) is replayed call by call through the gateway's
own decision path — `riskguard.gateway_scene.replay`: the real `Gateway` (route table, declared
routes, JWT verification of a token per calling service and deployment, GCRA rate limit, the
risk engine with the tenant's ruleset, in-memory state, decision records in SQLite) with each
event's time given to `Gatekeeper.check`. Targets (issue "Zero-trust gateway"):

- every lateral-movement episode blocked (403) within its first 5 never-seen calls — calls of
  routes the service had not called before the episode, repeats included; a 401 step-up
  challenge does not count as blocked;
- at least 99.9 % of normal service calls allowed (outcome `allow`, forwarded) once the gateway
  has known the services for a day. Strict: challenges count against it, those of routes a new
  release started calling too. The learning day is reported apart.

    python bench/gateway_scene.py                      # 7 days, 12 services, seed 1
    python bench/gateway_scene.py --seeds 1 2 3 4 5    # several scenes, pooled
    python bench/gateway_scene.py --data scene.jsonl   # a scene on disk (labels and
                                                       # scene.gateway.json beside it)
    python bench/gateway_scene.py --rules pack.yaml    # another pack for the gateway tenant

Prints a table and a JSON summary (with the machine it ran on) on the last line; exits 1 when
a target is missed.
"""

# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is sys.path[0] when this runs, and bench/http.py there would shadow the standard
# library's ``http`` package: put bench/ last, where _machine is still found.
BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR] + [str(BENCH_DIR)]

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from _machine import describe_machine, load_average
from riskguard.engine.rules import RulePackError, parse_pack_text
from riskguard.gateway_scene import SceneTally, evaluate, replay
from riskguard.settings import load_settings
from riskguard.simulate import gateway_config_path_for, labels_path_for, simulate_gateway
from riskguard.wiring import configure_logging

Row = dict[str, Any]


def _read_jsonl(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def scenes(args: argparse.Namespace) -> Iterator[tuple[str, list[Row], list[Row], Row]]:
    """(name, events, labels, gateway configuration) of each scene to replay."""
    if args.data is not None:
        path = Path(args.data)
        config = json.loads(gateway_config_path_for(path).read_text("utf-8"))
        yield path.name, _read_jsonl(path), _read_jsonl(labels_path_for(path)), config
        return
    for seed in args.seeds:
        scene = simulate_gateway(days=args.days, seed=seed, services=args.services)
        yield f"seed {seed}", scene.events, scene.labels, scene.gateway_config()


def report(tally: SceneTally, names: list[str]) -> dict[str, Any]:
    """Print the tables; return the JSON summary."""
    figures = tally.summary()
    print(f"\nGateway scene on {', '.join(names)}: {tally.calls:,} calls replayed")
    print(
        f"\n{'episode':<24}{'service':<20}{'started':<18}{'calls':>6}{'never-seen':>11}"
        f"{'1st blocked':>12}{'1st refused':>12}  outcomes"
    )
    for e in tally.episodes:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(e["outcomes"].items()))
        blocked = "never" if e["first_blocked"] is None else f"#{e['first_blocked']}"
        refused = "never" if e["first_refused"] is None else f"#{e['first_refused']}"
        print(
            f"{e['episode'][-20:]:<24}{e['service']:<20}{e['started'][5:16]:<18}"
            f"{e['calls']:>6}{e['never_seen']:>11}{blocked:>12}{refused:>12}  {outcomes}"
        )
    distribution = ", ".join(f"#{k}: {v}" for k, v in figures["first_blocked_call"].items())
    print(f"\nfirst blocked never-seen call, per episode: {distribution}")
    lateral_ok = figures["targets"]["lateral_movement_blocked_within_5"]
    print(
        f"  episodes blocked within 5 never-seen calls  {figures['episodes_blocked_within_5']}"
        f" of {figures['episodes']}   target all   {'PASS' if lateral_ok else 'FAIL'}"
    )
    normal_ok = figures["targets"]["normal_allowed_at_least_99_9"]
    print(
        f"\nnormal calls after the learning day: {figures['normal_calls']:,}, allowed "
        f"{figures['normal_allowed']:,} = {figures['normal_allowed_share']:.3%}"
        f"   target >= 99.9%   {'PASS' if normal_ok else 'FAIL'}"
    )
    print(f"  outcomes: {figures['normal_outcomes']}")
    print(f"  reasons on refused normal calls: {figures['normal_refusal_reasons']}")
    print(
        f"  of which calls of routes a release started calling: "
        f"{figures['release_route_calls']:,}, allowed "
        f"{figures['release_route_allowed_share']:.3%} {figures['release_route_outcomes']}"
    )
    print(
        f"learning day (the gateway meets every service for the first time): "
        f"{figures['learning_day_calls']:,} normal calls, allowed "
        f"{figures['learning_day_allowed_share']:.3%} {figures['learning_day_outcomes']}"
    )
    print(
        f"replay: {figures['replay_seconds']:.1f} s, {figures['calls_per_second']:,.0f} calls/s "
        f"through the gatekeeper (one process, decisions recorded in SQLite)"
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", help="scene JSONL (labels and .gateway.json beside it)")
    parser.add_argument("--rules", help="rule pack for the gateway tenant (default: built-in)")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--services", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--json", help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    pack = None
    if args.rules is not None:
        try:
            pack = parse_pack_text(Path(args.rules).read_text("utf-8"), source=args.rules)
        except (OSError, RulePackError) as exc:
            print(f"gateway_scene: cannot use {args.rules}: {exc}", file=sys.stderr)
            return 2
    configure_logging(load_settings(log_level="warning"), stream=sys.stderr)
    machine = describe_machine()
    load_before = load_average()
    print(f"machine: {machine.summary()}; load average {load_before}")
    tally, names = SceneTally(), []
    started = time.perf_counter()
    for name, events, labels, config in scenes(args):
        with tempfile.TemporaryDirectory(prefix="rg-scene-") as folder:
            result = asyncio.run(replay(events, labels, config, Path(folder), pack=pack))
        tally += evaluate(events, labels, result)
        names.append(name)
    figures = report(tally, names)
    summary = {
        "bench": "gateway_scene",
        "scenes": names,
        "days": None if args.data else args.days,
        "services": None if args.data else args.services,
        **figures,
        "episodes_detail": tally.episodes,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": machine.to_dict(),
        "load_average": {"start": load_before, "end": load_average()},
        "pass": all(figures["targets"].values()),
    }
    line = json.dumps(summary)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
