"""Batch size and deadline per execution provider, from a measured table; the batcher itself.

Contract:

* ``batch_table.json`` (next to this module; written by ``bench/batch_table.py``) holds,
  per execution provider, the measured windows/s and milliseconds per call of the bundled
  model by batch size, where the figures came from, and the ``max_batch`` /
  ``max_delay_ms`` chosen from them by :func:`choose_from_rows` (the one rule, used by the
  bench when it writes the table and checked against the table by a test).
* :func:`resolve_batching` turns the ``[batcher]`` config (``"auto"`` or a number, each
  key on its own) and the provider that actually serves into a :class:`BatchChoice` that
  says where each value came from. A provider without an entry uses its alias's entry
  (TensorRT: CUDA's), else the CPU entry, and says so.
* :class:`Batcher` collects due windows: a batch runs when it holds ``max_batch`` windows
  or when its oldest window has waited ``max_delay_s`` (so a lone reading at a low rate
  decides within the deadline). It takes a clock, so its logic is tested without sleeping.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

TABLE_PATH = Path(__file__).resolve().parent / "batch_table.json"
CPU = "CPUExecutionProvider"
TABLE_FORMAT = 1

# The rule that turns measured rows into a choice (bench/batch_table.py writes its result).
THROUGHPUT_SHARE = 0.9    # max_batch: the smallest measured batch reaching 90 % of the best windows/s ...
MAX_CALL_MS = 10.0        # ... among those whose one call takes at most this long
OVERHEAD_SHARE = 0.1      # deadline: wait long enough that the fixed cost of a call is <= 10 % of the time
DEADLINE_MIN_MS = 1.0
DEADLINE_MAX_MS = 20.0

_EPSILON_S = 1e-9  # float slack: a batch is due when wait_s() says 0
Auto = Literal["auto"]
T = TypeVar("T")


class BatchTableError(Exception):
    """The batch table cannot be read or is malformed; one-line reason."""


@dataclass(frozen=True)
class Row:
    """One measured batch size: windows per second and milliseconds per call."""

    batch: int
    windows_per_s: float
    ms_per_call: float


@dataclass(frozen=True)
class BatchChoice:
    """What the batcher will use and why: ``source`` is one human-readable line."""

    max_batch: int
    max_delay_ms: float
    provider: str
    source: str


def choose_from_rows(rows: Sequence[Row]) -> tuple[int, float]:
    """``(max_batch, max_delay_ms)`` from measured rows (the rule, see the module constants).

    max_batch: the smallest batch whose windows/s is at least ``THROUGHPUT_SHARE`` of the
    best row's, among rows whose call takes at most ``MAX_CALL_MS`` (if none does, the
    smallest batch). Deadline: the fixed cost of one call (the smallest batch's ms per
    call) divided by ``OVERHEAD_SHARE``, clamped to [DEADLINE_MIN_MS, DEADLINE_MAX_MS]:
    batches that wait that long spend at most about 10 % of the time on per-call overhead,
    at any arrival rate, and a lone reading waits no longer than that.
    """
    if not rows:
        raise BatchTableError("no measured rows")
    ordered = sorted(rows, key=lambda r: r.batch)
    fast_enough = [r for r in ordered if r.ms_per_call <= MAX_CALL_MS] or [ordered[0]]
    best = max(r.windows_per_s for r in fast_enough)
    max_batch = next(r.batch for r in fast_enough if r.windows_per_s >= THROUGHPUT_SHARE * best)
    fixed_ms = ordered[0].ms_per_call
    deadline = min(DEADLINE_MAX_MS, max(DEADLINE_MIN_MS, fixed_ms / OVERHEAD_SHARE))
    return max_batch, round(deadline, 2)


@dataclass(frozen=True)
class Entry:
    """A provider's table entry."""

    provider: str
    rows: tuple[Row, ...]
    max_batch: int
    max_delay_ms: float
    source: str


class BatchTable:
    """The parsed table: entries by provider, plus aliases (provider -> provider whose entry it uses)."""

    def __init__(self, entries: Mapping[str, Entry], aliases: Mapping[str, str]) -> None:
        self.entries = dict(entries)
        self.aliases = dict(aliases)

    def entry_for(self, provider: str) -> tuple[Entry, str]:
        """The entry serving ``provider`` and a note on how it was found (empty: its own)."""
        if provider in self.entries:
            return self.entries[provider], ""
        alias = self.aliases.get(provider)
        if alias in self.entries:
            return self.entries[alias], f"{provider} has no entry of its own, {alias}'s is used"
        if CPU in self.entries:
            return self.entries[CPU], f"{provider} has no entry, {CPU}'s is used"
        raise BatchTableError(f"no entry for {provider} and no {CPU} entry")


def parse_table(data: Any) -> BatchTable:
    """Validate a decoded table (see ``batch_table.json``). Raises BatchTableError."""
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise BatchTableError(f"expected an object with \"format\": {TABLE_FORMAT}")
    providers = data.get("providers")
    if not isinstance(providers, dict) or not providers:
        raise BatchTableError("\"providers\" must be a non-empty object")
    entries: dict[str, Entry] = {}
    for name, raw in providers.items():
        try:
            rows = tuple(Row(int(r["batch"]), float(r["windows_per_s"]), float(r["ms_per_call"])) for r in raw["rows"])
            entry = Entry(name, rows, int(raw["max_batch"]), float(raw["max_delay_ms"]), str(raw["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BatchTableError(f"provider {name}: malformed entry ({type(exc).__name__}: {exc})") from exc
        if entry.max_batch < 1 or entry.max_delay_ms < 0 or not rows:
            raise BatchTableError(f"provider {name}: max_batch must be >= 1, max_delay_ms >= 0, rows non-empty")
        entries[name] = entry
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict):
        raise BatchTableError("\"aliases\" must be an object")
    return BatchTable(entries, {str(k): str(v) for k, v in aliases.items()})


def load_table(path: Path = TABLE_PATH) -> BatchTable:
    """Read and validate the table file. Raises BatchTableError with a one-line reason."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BatchTableError(f"{path}: {type(exc).__name__}: {exc}") from exc
    try:
        return parse_table(data)
    except BatchTableError as exc:
        raise BatchTableError(f"{path}: {exc}") from exc


def resolve_batching(max_batch: int | Auto, max_delay_ms: float | Auto, provider: str,
                     table: BatchTable | None = None) -> BatchChoice:
    """The batch size and deadline for ``provider`` (the one serving, ``providers_in_use[0]``).

    Numbers from the config are used as they are; ``"auto"`` takes the table's value for
    the provider. ``table`` defaults to the shipped table (read only if a key is auto).
    Raises BatchTableError when a key is auto and the table is unusable.
    """
    if max_batch != "auto" and max_delay_ms != "auto":
        return BatchChoice(int(max_batch), float(max_delay_ms), provider, "[batcher] config")
    table = table if table is not None else load_table()
    entry, note = table.entry_for(provider)
    size = entry.max_batch if max_batch == "auto" else int(max_batch)
    delay = entry.max_delay_ms if max_delay_ms == "auto" else float(max_delay_ms)
    keys = [k for k, v in (("max_batch", max_batch), ("max_delay_ms", max_delay_ms)) if v == "auto"]
    source = f"table entry {entry.provider} for {' and '.join(keys)} ({entry.source})" + (f"; {note}" if note else "")
    return BatchChoice(size, delay, provider, source)


class Batcher(Generic[T]):
    """Due windows waiting for their batch. Owned by one thread (no lock).

    ``add`` returns a full batch at once; ``due`` returns the pending batch once its oldest
    item has waited ``max_delay_s``; ``take`` returns whatever is pending (a flush);
    ``wait_s`` says how long the owner may block before calling ``due`` again.
    """

    def __init__(self, max_batch: int, max_delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_s >= 0 (got {max_batch}, {max_delay_s})")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._items: list[T] = []
        self._since: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> list[T] | None:
        """Queue one item; the batch if it is now full, else None."""
        if not self._items:
            self._since = self._clock()
        self._items.append(item)
        return self.take() if len(self._items) >= self.max_batch else None

    def due(self) -> list[T] | None:
        """The pending batch if its oldest item has waited the deadline, else None."""
        if self._since is not None and self._clock() + _EPSILON_S >= self._since + self.max_delay_s:
            return self.take()
        return None

    def take(self) -> list[T]:
        """Everything pending (possibly empty); the batcher is empty afterwards."""
        items, self._items, self._since = self._items, [], None
        return items

    def wait_s(self, idle_s: float) -> float:
        """Seconds until the pending batch is due (0 if overdue); ``idle_s`` when none is pending."""
        if self._since is None:
            return idle_s
        return max(0.0, self._since + self.max_delay_s - self._clock())
