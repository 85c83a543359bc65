"""A rule pack file that is re-read when it changes, without a restart.

A bad edit never replaces a working ruleset: the previous one keeps running and the error is
kept in ``last_error`` (and handed to ``on_error``) until the file is fixed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from riskguard.engine.decide import Engine
from riskguard.engine.rules import PackIssue, RulePackError, Ruleset, load_ruleset_text


def default_pack_text() -> str:
    """The text of the default rule pack shipped with riskguard."""
    return resources.files("riskguard.packs").joinpath("default.yaml").read_text("utf-8")


def load_pack_file(path: str | Path | None) -> Ruleset:
    """Load a pack from ``path`` (or the default pack when None); raises RulePackError."""
    if path is None:
        return load_ruleset_text(default_pack_text(), source="default.yaml")
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise RulePackError([PackIssue("pack", f"cannot read the file: {reason}")]) from None
    return load_ruleset_text(text, source=p.name)


class WatchedRuleset:
    """The ruleset of a file, checked for changes at most every ``interval`` seconds."""

    def __init__(
        self,
        path: str | Path,
        *,
        interval: float = 1.0,
        on_reload: Callable[[Ruleset], None] | None = None,
        on_error: Callable[[RulePackError], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.on_reload = on_reload
        self.on_error = on_error
        self.last_error: RulePackError | None = None
        self._stamp = self._file_stamp()
        self._ruleset = load_pack_file(self.path)  # the first load must succeed
        self._engine = Engine(self._ruleset)
        self._next_check = time.monotonic() + interval

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def ruleset(self) -> Ruleset:
        self.refresh()
        return self._ruleset

    def engine(self) -> Engine:
        """The engine for the current ruleset (re-reading the file if it changed)."""
        self.refresh()
        return self._engine

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed; True when a new ruleset was installed."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.interval
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            ruleset = load_pack_file(self.path)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, RulePackError)
                else RulePackError([PackIssue("pack", f"could not be loaded: {exc!r}")])
            )
            self.last_error = error
            if self.on_error is not None:
                self.on_error(error)
            return False
        self.last_error = None
        if ruleset.version == self._ruleset.version:
            return False
        self._ruleset = ruleset
        self._engine = Engine(ruleset)
        if self.on_reload is not None:
            self.on_reload(ruleset)
        return True
