"""``riskguard demo``: simulated traffic through the engine, shown live in the terminal.

The stream comes from the simulator (benign behaviour with labelled attacks), is scored by the
default pack on in-memory state, and is paced so the run lasts the requested seconds. The view
shows decisions per outcome, the latest challenged/reviewed/blocked events with their
explanation, throughput and latency, and how many attack episodes were caught so far.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from riskguard.engine.decide import Decision, Engine
from riskguard.engine.events import Event, parse_event
from riskguard.engine.policy import Outcome
from riskguard.engine.state import InMemoryStateStore
from riskguard.rulefile import WatchedRuleset, load_pack_file
from riskguard.scoring import Scorer
from riskguard.simulate import simulate

_STYLE = {
    Outcome.ALLOW: "green",
    Outcome.CHALLENGE: "yellow",
    Outcome.REVIEW: "dark_orange",
    Outcome.BLOCK: "bold red",
}
_ENTITY_FIELDS = ("data.account_id", "data.user_id", "data.service_id")


@dataclass
class DemoStats:
    """What the live view and the summary show."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    latest: deque[tuple[Event, Decision]] = field(default_factory=lambda: deque(maxlen=8))
    latencies_us: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    episodes: dict[str, str] = field(default_factory=dict)  # episode -> attack type
    caught: set[str] = field(default_factory=set)
    benign: int = 0
    benign_flagged: int = 0

    @property
    def decided(self) -> int:
        return sum(self.outcomes.values())

    def percentile(self, q: float) -> float:
        if not self.latencies_us:
            return 0.0
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_demo(
    *, seconds: float, users: int, days: int, seed: int, rules: Path | None = None
) -> DemoStats:
    """Run the live demo for ``seconds`` and print a summary; returns the figures shown.

    With ``rules``, the pack file is watched: save an edit while the demo runs and the next
    events are decided by the new ruleset (a bad edit keeps the previous one and is shown).
    """
    console = Console()
    console.print(f"[bold]riskguard demo[/] — simulating {days} days of {users} users ...")
    raw_events, labels = simulate(days=days, users=users, seed=seed)
    label_of = {row["event_id"]: row for row in labels}
    events = [parse_event(e) for e in raw_events]
    watched = WatchedRuleset(rules) if rules is not None else None
    scorer = Scorer(
        watched.engine if watched is not None else Engine(load_pack_file(None)),
        InMemoryStateStore(),
    )
    stats = DemoStats()
    stats.episodes = {row["episode"]: row["attack"] for row in labels}

    ticks = max(1, int(seconds * 4))
    per_tick = max(1, -(-len(events) // ticks))
    started = time.monotonic()
    position = 0
    with Live(_view(stats, scorer, watched, None), console=console, refresh_per_second=4) as live:
        for tick in range(ticks):
            chunk = events[position : position + per_tick]
            position += len(chunk)
            for event in chunk:
                t0 = time.perf_counter_ns()
                decision = scorer.score(event)
                elapsed = (time.perf_counter_ns() - t0) / 1000.0
                _record(stats, event, decision, elapsed, label_of)
            live.update(_view(stats, scorer, watched, chunk[-1] if chunk else None))
            delay = started + (tick + 1) * seconds / ticks - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    console.print()
    _summary(console, stats, len(events))
    return stats


def _record(
    stats: DemoStats,
    event: Event,
    decision: Decision,
    elapsed_us: float,
    label_of: dict[str, dict[str, str]],
) -> None:
    stats.outcomes[decision.outcome] += 1
    stats.latencies_us.append(elapsed_us)
    stats.busy_s += elapsed_us / 1e6
    label = label_of.get(event.event_id)
    flagged = decision.outcome is not Outcome.ALLOW
    if label is None:
        stats.benign += 1
        stats.benign_flagged += flagged
    elif flagged:
        stats.caught.add(label["episode"])
    if flagged:
        stats.latest.appendleft((event, decision))


def _entity(event: Event) -> str:
    fields = event.fields()
    for path in _ENTITY_FIELDS:
        if path in fields:
            return str(fields[path])
    return "-"


def _view(
    stats: DemoStats, scorer: Scorer, watched: WatchedRuleset | None, last: Event | None
) -> Group:
    clock = last.occurred_at.strftime("%Y-%m-%d %H:%M") if last is not None else "-"
    rate = stats.decided / stats.busy_s if stats.busy_s else 0.0
    head = Text.assemble(
        ("decisions ", "bold"),
        f"{stats.decided:,}   ",
        ("engine ", "bold"),
        f"{rate:,.0f}/s on one core   ",
        ("p50/p99 ", "bold"),
        f"{stats.percentile(0.5):.0f}/{stats.percentile(0.99):.0f} µs   ",
        ("simulated clock ", "bold"),
        clock,
        ("   ruleset ", "bold"),
        scorer.engine.ruleset.version,
    )
    outcomes = Table.grid(padding=(0, 2))
    total = max(1, stats.decided)
    for outcome in Outcome:
        n = stats.outcomes[outcome]
        bar = "█" * max(0, round(40 * n / total)) if n else ""
        outcomes.add_row(
            Text(outcome.label, style=_STYLE[outcome]), f"{n:>8,}", Text(bar, style=_STYLE[outcome])
        )
    latest = Table(expand=True, show_lines=False)
    latest.add_column("time", no_wrap=True)
    latest.add_column("type", no_wrap=True)
    latest.add_column("entity", no_wrap=True)
    latest.add_column("outcome", no_wrap=True)
    latest.add_column("why")
    for event, decision in stats.latest:
        latest.add_row(
            event.occurred_at.strftime("%m-%d %H:%M:%S"),
            decision.event_type,
            _entity(event),
            Text(decision.outcome.label, style=_STYLE[decision.outcome]),
            decision.explanation,
        )
    caught = f"attack episodes caught: {len(stats.caught)} of those started so far"
    parts: list[ConsoleRenderable] = [
        Panel(head, title="riskguard — live decisions"),
        Panel(outcomes, title="outcomes"),
        Panel(latest, title="latest challenged, reviewed and blocked"),
        Text(caught, style="bold"),
    ]
    if watched is not None and watched.last_error is not None:
        error = f"rule pack edit rejected, previous ruleset still running:\n{watched.last_error}"
        parts.append(Text(error, style="red"))
    return Group(*parts)


def _summary(console: Console, stats: DemoStats, total_events: int) -> None:
    table = Table(title="summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("events decided", f"{stats.decided:,} of {total_events:,}")
    for outcome in Outcome:
        table.add_row(f"  {outcome.label}", f"{stats.outcomes[outcome]:,}")
    rate = stats.decided / stats.busy_s if stats.busy_s else 0.0
    table.add_row("engine throughput (one core)", f"{rate:,.0f} decisions/s")
    table.add_row(
        "latency p50 / p99", f"{stats.percentile(0.5):.0f} / {stats.percentile(0.99):.0f} µs"
    )
    table.add_row("attack episodes caught", f"{len(stats.caught)} of {len(stats.episodes)}")
    share = stats.benign_flagged / stats.benign if stats.benign else 0.0
    table.add_row("benign events not allowed", f"{stats.benign_flagged:,} ({share:.2%})")
    console.print(table)
