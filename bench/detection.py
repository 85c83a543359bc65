"""Detection quality of a rule pack on the labelled simulated stream (`make eval`).

For each attack type: how many attack episodes were flagged (at least one of the episode's
events decided other than allow) and the share of attack events flagged; for benign events: the
share not allowed and the share blocked. Targets (issue "Foundation and the decision engine
core"): >= 95% of attack episodes flagged, <= 1% of benign events not allowed, <= 0.1% blocked.

    python bench/detection.py                       # simulate 7 days x 1000 users, seed 1
    python bench/detection.py --seeds 1 2 3         # several independent streams, pooled
    python bench/detection.py --data events.jsonl   # a stream on disk (labels beside it)
    python bench/detection.py --rules my-pack.yaml  # another pack

Prints a table and a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from riskguard.engine.decide import Engine
from riskguard.engine.events import parse_event
from riskguard.engine.policy import Outcome
from riskguard.engine.state import InMemoryStateStore
from riskguard.rulefile import load_pack_file
from riskguard.scoring import Scorer
from riskguard.simulate import labels_path_for, simulate

TARGET_EPISODES = 0.95
TARGET_BENIGN_NOT_ALLOWED = 0.01
TARGET_BENIGN_BLOCKED = 0.001


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def streams(
    args: argparse.Namespace,
) -> Iterable[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    """(name, events, labels) for each stream to evaluate."""
    if args.data is not None:
        path = Path(args.data)
        yield path.name, _read_jsonl(path), _read_jsonl(labels_path_for(path))
        return
    for seed in args.seeds:
        events, labels = simulate(days=args.days, users=args.users, seed=seed)
        yield f"seed {seed}", events, labels


def evaluate(
    events: list[dict[str, Any]], labels: list[dict[str, Any]], rules: str | None
) -> dict[str, Any]:
    """Score one stream in order and tally detection per attack type and on benign traffic."""
    scorer = Scorer(Engine(load_pack_file(rules)), InMemoryStateStore())
    label_of = {row["event_id"]: row for row in labels}
    episode_flagged: dict[tuple[str, str], bool] = {}
    attack_events: Counter[str] = Counter()
    attack_flagged: Counter[str] = Counter()
    benign = Counter[str]()
    benign_reasons: Counter[str] = Counter()
    started = time.perf_counter()
    for raw in events:
        decision = scorer.score(parse_event(raw))
        flagged = decision.outcome is not Outcome.ALLOW
        label = label_of.get(raw["event_id"])
        if label is None:
            benign["events"] += 1
            benign["not_allowed"] += flagged
            benign["blocked"] += decision.outcome is Outcome.BLOCK
            if flagged:
                benign_reasons.update(r.code for r in decision.reasons[:2])
            continue
        key = (label["attack"], label["episode"])
        episode_flagged[key] = episode_flagged.get(key, False) or flagged
        attack_events[label["attack"]] += 1
        attack_flagged[label["attack"]] += flagged
    elapsed = time.perf_counter() - started
    per_attack: dict[str, dict[str, int]] = defaultdict(lambda: {"episodes": 0, "caught": 0})
    for (attack, _episode), caught in episode_flagged.items():
        per_attack[attack]["episodes"] += 1
        per_attack[attack]["caught"] += caught
    for attack in per_attack:
        per_attack[attack]["events"] = attack_events[attack]
        per_attack[attack]["events_flagged"] = attack_flagged[attack]
    return {
        "events": len(events),
        "seconds": elapsed,
        "attacks": dict(per_attack),
        "benign": dict(benign),
        "benign_reasons": dict(benign_reasons.most_common(10)),
    }


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the tallies of several streams."""
    attacks: dict[str, Counter[str]] = defaultdict(Counter)
    benign: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for r in results:
        for attack, tally in r["attacks"].items():
            attacks[attack].update(tally)
        benign.update(r["benign"])
        reasons.update(r["benign_reasons"])
    return {
        "events": sum(r["events"] for r in results),
        "seconds": sum(r["seconds"] for r in results),
        "attacks": {a: dict(t) for a, t in sorted(attacks.items())},
        "benign": dict(benign),
        "benign_reasons": dict(reasons.most_common(10)),
    }


def report(pooled: dict[str, Any], streams_used: list[str]) -> dict[str, Any]:
    """Print the table; return the JSON summary."""
    print(f"\nDetection on {', '.join(streams_used)}: {pooled['events']:,} events")
    print(f"{'attack':<30}{'episodes':>10}{'caught':>8}{'rate':>8}{'events':>9}{'flagged':>9}")
    episodes = caught = 0
    rows = {}
    for attack, t in pooled["attacks"].items():
        rate = t["caught"] / t["episodes"] if t["episodes"] else 0.0
        ev_rate = t["events_flagged"] / t["events"] if t["events"] else 0.0
        episodes += t["episodes"]
        caught += t["caught"]
        rows[attack] = {**t, "episode_rate": round(rate, 4), "event_rate": round(ev_rate, 4)}
        print(
            f"{attack:<30}{t['episodes']:>10}{t['caught']:>8}{rate:>8.1%}"
            f"{t['events']:>9}{ev_rate:>9.1%}"
        )
    b = pooled["benign"]
    total_rate = caught / episodes if episodes else 0.0
    not_allowed = b.get("not_allowed", 0) / b["events"] if b.get("events") else 0.0
    blocked = b.get("blocked", 0) / b["events"] if b.get("events") else 0.0
    checks = {
        "attack_episodes_flagged": (total_rate, total_rate >= TARGET_EPISODES, ">= 95%"),
        "benign_not_allowed": (not_allowed, not_allowed <= TARGET_BENIGN_NOT_ALLOWED, "<= 1%"),
        "benign_blocked": (blocked, blocked <= TARGET_BENIGN_BLOCKED, "<= 0.1%"),
    }
    print(f"{'all attacks':<30}{episodes:>10}{caught:>8}{total_rate:>8.1%}")
    print(f"\nbenign events: {b.get('events', 0):,}")
    for name, (value, ok, target) in checks.items():
        print(f"  {name:<26}{value:>9.3%}   target {target:<8} {'PASS' if ok else 'FAIL'}")
    print(f"  most common reasons on flagged benign events: {pooled['benign_reasons']}")
    print(f"  scoring time: {pooled['seconds']:.1f} s for {pooled['events']:,} events (one core)")
    return {
        "streams": streams_used,
        "events": pooled["events"],
        "attacks": rows,
        "attack_episode_rate": round(total_rate, 4),
        "benign_events": b.get("events", 0),
        "benign_not_allowed_rate": round(not_allowed, 5),
        "benign_blocked_rate": round(blocked, 5),
        "pass": all(ok for _, ok, _ in checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", help="events JSONL (labels in X.labels.jsonl beside it)")
    parser.add_argument("--rules", help="rule pack (default: the built-in pack)")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--json", help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    results, names = [], []
    for name, events, labels in streams(args):
        results.append(evaluate(events, labels, args.rules))
        names.append(name)
    summary = report(merge(results), names)
    line = json.dumps(summary)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
