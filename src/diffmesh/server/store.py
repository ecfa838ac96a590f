"""Queue and history in one SQLite file (stdlib sqlite3, WAL).

A prompt row moves pending → running → (deleted, history row written) in single
transactions, so a prompt completes once and only once: `finish` writes history only if the
row is still `running`, and `recover` turns rows left `running` by a dead server back into
`pending` at start-up. Several prompts may be `running` at once (one per leased worker); each
moves on its own. Priority numbers come from a persisted counter, so they keep increasing
across restarts (the frontend sorts and reconciles its queue by them, spec §9.4).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HISTORY_CAP = 10000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running')),
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL,
    sensitive TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_order ON queue (state, number, prompt_id);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class QueueItem:
    """One queued prompt; `as_wire()` is ComfyUI's 5-element queue tuple (secrets left out)."""

    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list
    sensitive: dict

    def as_wire(self) -> list:
        number = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class DuplicatePromptId(ValueError):
    """A prompt with this id is already queued or in history."""


class QueueStore:
    """Thread-safe queue + history on one SQLite connection guarded by a lock."""

    def __init__(self, db_path: str | Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions -------------------------------------------------------------------------

    def _tx(self, fn, *args):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(*args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _next_number(self, front: bool) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = 'number'").fetchone()
        value = row[0] if row else 0
        self._db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('number', ?)", (value + 1,))
        return -value if front else value

    # -- queue --------------------------------------------------------------------------------

    def recover(self) -> int:
        """Start-up: prompts a dead server left `running` go back to `pending`. Returns their count."""
        return self._tx(lambda: self._db.execute(
            "UPDATE queue SET state = 'pending' WHERE state = 'running'").rowcount)

    def enqueue(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list,
                sensitive: dict | None = None, number: float | None = None, front: bool = False) -> float:
        """Adds a pending prompt and returns its number (the counter, negated for `front`)."""

        def insert() -> float:
            exists = self._db.execute(
                "SELECT 1 FROM queue WHERE prompt_id = ? UNION SELECT 1 FROM history WHERE prompt_id = ?",
                (prompt_id, prompt_id)).fetchone()
            if exists:
                raise DuplicatePromptId(prompt_id)
            num = number if number is not None else self._next_number(front)
            self._db.execute(
                "INSERT INTO queue (prompt_id, number, state, prompt, extra_data, outputs, sensitive, created)"
                " VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                (prompt_id, float(num), json.dumps(prompt), json.dumps(extra_data), json.dumps(outputs),
                 json.dumps(sensitive or {}), time.time()))
            return num

        return self._tx(insert)

    def dequeue(self) -> QueueItem | None:
        """Marks the lowest (number, prompt_id) pending prompt running and returns it, or None."""

        def pop() -> QueueItem | None:
            row = self._db.execute(
                "SELECT number, prompt_id, prompt, extra_data, outputs, sensitive FROM queue"
                " WHERE state = 'pending' ORDER BY number, prompt_id LIMIT 1").fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE queue SET state = 'running' WHERE prompt_id = ?", (row[1],))
            return _item(row)

        return self._tx(pop)

    def finish(self, prompt_id: str, entry: dict) -> bool:
        """Running → history, atomically. False (and nothing written) if it was not running."""

        def done() -> bool:
            gone = self._db.execute("DELETE FROM queue WHERE prompt_id = ? AND state = 'running'",
                                    (prompt_id,)).rowcount
            if gone != 1:
                return False
            self._db.execute("INSERT INTO history (prompt_id, entry) VALUES (?, ?)",
                             (prompt_id, json.dumps(entry, default=str)))
            self._db.execute("DELETE FROM history WHERE seq <= (SELECT MAX(seq) FROM history) - ?", (HISTORY_CAP,))
            return True

        return self._tx(done)

    def items(self, state: str) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT number, prompt_id, prompt, extra_data, outputs, sensitive FROM queue"
                " WHERE state = ? ORDER BY number, prompt_id", (state,)).fetchall()
        return [_item(r) for r in rows]

    def pending_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM queue WHERE state = 'pending'").fetchone()[0]

    def remaining(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

    def delete_pending(self, prompt_ids: list[str] | None = None) -> int:
        """Removes pending prompts (all of them when `prompt_ids` is None); running ones stay."""
        if prompt_ids is None:
            return self._tx(lambda: self._db.execute("DELETE FROM queue WHERE state = 'pending'").rowcount)
        ids = [str(p) for p in prompt_ids]
        return self._tx(lambda: sum(self._db.execute(
            "DELETE FROM queue WHERE state = 'pending' AND prompt_id = ?", (p,)).rowcount for p in ids))

    # -- history ------------------------------------------------------------------------------

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, dict]:
        """Entries oldest first; with offset < 0 and max_items, the last `max_items` (spec §1.2)."""
        with self._lock:
            if offset is not None and offset >= 0:
                limit = max_items if max_items is not None else -1
                rows = self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq LIMIT ? OFFSET ?",
                                        (limit, offset)).fetchall()
            elif max_items is not None:
                rows = self._db.execute(
                    "SELECT prompt_id, entry FROM (SELECT seq, prompt_id, entry FROM history ORDER BY seq DESC"
                    " LIMIT ?) ORDER BY seq", (max_items,)).fetchall()
            else:
                rows = self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq").fetchall()
        return {pid: json.loads(entry) for pid, entry in rows}

    def history_entry(self, prompt_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT entry FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def history_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    def delete_history(self, prompt_ids: list[str] | None = None) -> int:
        if prompt_ids is None:
            return self._tx(lambda: self._db.execute("DELETE FROM history").rowcount)
        ids = [str(p) for p in prompt_ids]
        return self._tx(lambda: sum(self._db.execute(
            "DELETE FROM history WHERE prompt_id = ?", (p,)).rowcount for p in ids))


def _item(row: tuple) -> QueueItem:
    number, prompt_id, prompt, extra_data, outputs, sensitive = row
    return QueueItem(number=number, prompt_id=prompt_id, prompt=json.loads(prompt),
                     extra_data=json.loads(extra_data), outputs=json.loads(outputs), sensitive=json.loads(sensitive))


def history_entry(item: QueueItem, status_str: str, completed: bool, messages: list,
                  outputs: dict, meta: dict) -> dict[str, Any]:
    """ComfyUI's history entry shape (spec §1.2)."""
    return {
        "prompt": item.as_wire(),
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": completed, "messages": messages},
        "meta": meta,
    }
