"""Queue and history in one SQLite file (stdlib sqlite3, WAL).

A prompt row moves pending → running → (deleted, history row written) in single
transactions, so a prompt completes once and only once: `finish` writes history only if the
row is still `running`, and `recover` turns rows left `running` by a dead server back into
`pending` at start-up. Several prompts may be `running` at once (one per leased worker); each
moves on its own. Priority numbers come from a persisted counter, so they keep increasing
across restarts (the frontend sorts and reconciles its queue by them, spec §9.4).

Each history row also keeps its job (`diffmesh.server.jobs`) in list form and the columns the
jobs API filters and sorts by (status, create time, duration), with indexes, so `/api/jobs`
pages through 100,000 entries without parsing them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffmesh.server import bodies
from diffmesh.server import jobs as jobmod
from diffmesh.server.jobs_sql import JOB_COLUMNS, JOB_INDEXES, chunks, count_sql, job_columns, job_selects

HISTORY_CAP = 10000     # entries kept, as ComfyUI's MAXIMUM_HISTORY_SIZE
log = logging.getLogger("diffmesh.server.store")

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

    def __init__(self, db_path: str | Path, history_cap: int = HISTORY_CAP):
        self.path = Path(db_path)
        self.history_cap = history_cap
        self._secrets: dict[str, dict] = {}   # prompt_id -> sensitive extra_data: memory only, never the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_job_columns()

    def _add_job_columns(self) -> None:
        """Adds the jobs columns to an older database and fills them from its entries."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(history)")}
        missing = [name for name in JOB_COLUMNS if name not in have]
        for name in missing:
            self._db.execute(f"ALTER TABLE history ADD COLUMN {name} {JOB_COLUMNS[name]}")
        if missing:
            rows = self._db.execute("SELECT prompt_id, entry FROM history").fetchall()
            self._tx_unlocked(lambda: [self._db.execute(
                "UPDATE history SET status = ?, create_time = ?, duration = ?, workflow_id = ?, job = ?"
                " WHERE prompt_id = ?", (*job_columns(pid, json.loads(entry)), pid)) for pid, entry in rows])
        self._db.executescript(JOB_INDEXES)
        # counts per status (kept by triggers) start from the rows themselves at every open
        self._tx_unlocked(lambda: (self._db.execute("DELETE FROM history_counts"), self._db.execute(
            "INSERT INTO history_counts (status, n) SELECT status, COUNT(*) FROM history GROUP BY status")))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions -------------------------------------------------------------------------

    def _tx(self, fn, *args):
        with self._lock:
            return self._tx_unlocked(fn, *args)

    def _tx_unlocked(self, fn, *args):
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

    def repair(self) -> int:
        """Start-up: makes rows an older version stored servable (issue 8). History entries with
        NaN/Infinity get null there, unreadable ones are dropped; queued prompts holding such
        numbers, or no longer readable, are finished as errors that say why (their clients see them
        end); secrets an older version wrote to the file are wiped. Returns the rows changed."""
        suspect = "(entry LIKE '%NaN%' OR entry LIKE '%Infinity%' OR json_valid(entry) = 0)"

        def fix() -> int:
            changed = self._db.execute("UPDATE queue SET sensitive = '{}' WHERE sensitive != '{}'").rowcount
            for pid, entry in self._db.execute(f"SELECT prompt_id, entry FROM history WHERE {suspect}").fetchall():
                changed += 1
                try:
                    repaired = bodies.finite_or_none(json.loads(entry))
                except ValueError:
                    log.warning("dropping unreadable history entry %s", pid)
                    self._db.execute("DELETE FROM history WHERE prompt_id = ?", (pid,))
                    continue
                self._db.execute("UPDATE history SET entry = ?, status = ?, create_time = ?, duration = ?,"
                                 " workflow_id = ?, job = ? WHERE prompt_id = ?",
                                 (json.dumps(repaired), *job_columns(pid, repaired), pid))
            for row in self._db.execute("SELECT number, prompt_id, prompt, extra_data, outputs, sensitive FROM queue"
                                        " WHERE prompt LIKE '%NaN%' OR prompt LIKE '%Infinity%' OR extra_data LIKE"
                                        " '%NaN%' OR extra_data LIKE '%Infinity%' OR json_valid(prompt) = 0 OR"
                                        " json_valid(extra_data) = 0 OR json_valid(outputs) = 0").fetchall():
                changed += 1
                self._finish_refused(row)
            return changed

        with self._lock:
            return self._tx_unlocked(fix)

    def _finish_refused(self, row: tuple) -> None:
        """A queued row the server would refuse today → history, as an error naming the fault."""
        number, prompt_id = row[0], row[1]
        reason = "the stored prompt could not be read"
        for name, text in (("prompt", row[2]), ("extra_data", row[3]), ("outputs", row[4])):
            try:
                bodies.loads(text, max_depth=10_000)
            except bodies.BodyError as exc:
                reason = str(exc).replace(f" at {exc.path}", f" at {name}.{exc.path}") if exc.path else str(exc)
                break
        try:
            item = _item(row)
        except ValueError:
            item = QueueItem(number, prompt_id, {}, {}, [], {})
        log.warning("queued prompt %s cannot run (%s); it is finished as an error", prompt_id, reason)
        message = ["execution_error", {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                                       "exception_message": f"dropped at start-up: {reason}",
                                       "exception_type": "ValueError", "traceback": [], "current_inputs": {},
                                       "current_outputs": [], "timestamp": int(time.time() * 1000)}]
        self._db.execute("DELETE FROM queue WHERE prompt_id = ?", (prompt_id,))
        self._insert_history(prompt_id, history_entry(item, "error", False, [message], {}, {}))

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
                (prompt_id, float(num), json.dumps(prompt, allow_nan=False), json.dumps(extra_data, allow_nan=False),
                 json.dumps(outputs), "{}", time.time()))
            if sensitive:
                self._secrets[prompt_id] = dict(sensitive)
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
            return self._item(row)

        return self._tx(pop)

    def finish(self, prompt_id: str, entry: dict) -> bool:
        """Running → history, atomically. False (and nothing written) if it was not running."""

        def done() -> bool:
            gone = self._db.execute("DELETE FROM queue WHERE prompt_id = ? AND state = 'running'",
                                    (prompt_id,)).rowcount
            if gone != 1:
                return False
            self._secrets.pop(prompt_id, None)
            self._insert_history(prompt_id, entry)
            return True

        return self._tx(done)

    def cancel_pending(self, prompt_id: str) -> bool:
        """Pending → history as a cancelled entry (ComfyUI's shape of an interrupted prompt: status
        `error` with an `execution_interrupted` message), atomically; False if it was not pending."""

        def cancel() -> bool:
            row = self._db.execute("SELECT number, prompt_id, prompt, extra_data, outputs, sensitive FROM queue"
                                   " WHERE prompt_id = ? AND state = 'pending'", (prompt_id,)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM queue WHERE prompt_id = ?", (prompt_id,))
            self._secrets.pop(prompt_id, None)
            message = ["execution_interrupted", {"prompt_id": prompt_id, "node_id": None, "node_type": None,
                                                 "executed": [], "timestamp": int(time.time() * 1000)}]
            self._insert_history(prompt_id, history_entry(_item(row), "error", False, [message], {}, {}))
            return True

        return self._tx(cancel)

    def add_history(self, entries: list[tuple[str, dict]]) -> None:
        """Writes finished entries directly (imports, benchmarks), in one transaction."""
        self._tx(lambda: [self._insert_history(pid, entry) for pid, entry in entries])

    def _insert_history(self, prompt_id: str, entry: dict) -> None:
        text = json.dumps(bodies.finite_or_none(entry), default=str, allow_nan=False)
        self._db.execute(
            "INSERT INTO history (prompt_id, entry, status, create_time, duration, workflow_id, job)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (prompt_id, text, *job_columns(prompt_id, json.loads(text))))
        if self.history_cap is not None:
            self._db.execute("DELETE FROM history WHERE seq <= (SELECT MAX(seq) FROM history) - ?",
                             (self.history_cap,))

    def items(self, state: str) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT number, prompt_id, prompt, extra_data, outputs, sensitive FROM queue"
                " WHERE state = ? ORDER BY number, prompt_id", (state,)).fetchall()
        return [self._item(r) for r in rows]

    def pending_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM queue WHERE state = 'pending'").fetchone()[0]

    def remaining(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

    def delete_pending(self, prompt_ids: list[str] | None = None) -> int:
        """Removes pending prompts (all of them when `prompt_ids` is None); running ones stay."""
        if prompt_ids is None:
            ids = [r[0] for r in self._db.execute("SELECT prompt_id FROM queue WHERE state = 'pending'").fetchall()]
        else:
            ids = [str(p) for p in prompt_ids]

        def delete() -> int:
            gone = 0
            for pid in ids:
                if self._db.execute("DELETE FROM queue WHERE state = 'pending' AND prompt_id = ?", (pid,)).rowcount:
                    self._secrets.pop(pid, None)
                    gone += 1
            return gone

        return self._tx(delete)

    def _item(self, row: tuple) -> QueueItem:
        """The queue item of a row, with its sensitive extra_data from memory."""
        item = _item(row)
        return QueueItem(item.number, item.prompt_id, item.prompt, item.extra_data, item.outputs,
                         dict(self._secrets.get(item.prompt_id, {})))

    # -- history ------------------------------------------------------------------------------

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, dict]:
        """Entries oldest first; with offset < 0 and max_items, the last `max_items` (spec §1.2)."""
        return {pid: _strict(entry) for pid, entry in self._history_rows(max_items, offset)}

    def history_json(self, max_items: int | None = None, offset: int = -1) -> str:
        """`history(...)` as JSON text, joined from the stored entries without parsing them (each
        was written as strict JSON; `repair` fixes older rows): the whole of a large history is
        sent in a fraction of the time a parse and re-encode takes."""
        return "{" + ",".join(f"{json.dumps(pid)}:{entry}" for pid, entry in self._history_rows(max_items, offset)) + "}"

    def _history_rows(self, max_items: int | None, offset: int | None) -> list[tuple[str, str]]:
        with self._lock:
            if offset is not None and offset >= 0:
                # walk the narrow seq index to the page, then read only the page's entries
                seqs = [r[0] for r in self._db.execute(
                    "SELECT seq FROM history INDEXED BY history_order ORDER BY seq LIMIT ? OFFSET ?",
                    (max_items if max_items is not None else -1, offset))]
                rows = []
                for chunk in chunks(seqs):
                    marks = ",".join("?" * len(chunk))
                    rows += self._db.execute(f"SELECT prompt_id, entry FROM history WHERE seq IN ({marks}) ORDER BY seq",
                                             chunk).fetchall()
                return rows
            if max_items is not None:
                return self._db.execute(
                    "SELECT prompt_id, entry FROM (SELECT seq, prompt_id, entry FROM history ORDER BY seq DESC"
                    " LIMIT ?) ORDER BY seq", (max_items,)).fetchall()
            return self._db.execute("SELECT prompt_id, entry FROM history ORDER BY seq").fetchall()

    def history_entry(self, prompt_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT entry FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return _strict(row[0]) if row else None

    def history_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    # -- jobs (the /api/jobs view of queue and history) ---------------------------------------

    def jobs(self, statuses=jobmod.ALL_STATUSES, workflow_id: str | None = None, sort_by: str = "created_at",
             descending: bool = True, limit: int | None = None, offset: int = 0) -> tuple[list[dict], int]:
        """One page of jobs and the number of all that match. Queue rows (few) and history rows are
        merged by SQLite in sort order: each side is read along an index, so a page costs its
        offset in index steps and never parses an entry outside the page."""
        parts = job_selects(statuses, workflow_id, sort_by)
        if not parts:
            return [], 0
        args = [a for _, part_args in parts for a in part_args]
        offset = max(0, offset)
        with self._lock:
            total = self._count(statuses, workflow_id, parts)
            count = max(0, total - offset) if limit is None else max(0, min(limit, total - offset))
            # A page past the middle is read from the other end: the last page costs what the first does.
            backwards = count > 0 and offset + count / 2 > total / 2
            way = "DESC" if descending != backwards else "ASC"
            sql = " UNION ALL ".join(p for p, _ in parts) + f" ORDER BY 3 {way}, 4 {way}, 1 {way}, 2 {way} LIMIT ? OFFSET ?"
            start = total - offset - count if backwards else offset
            rows = self._db.execute(sql, (*args, count, start)).fetchall()
            return self._page_jobs(rows[::-1] if backwards else rows), total

    def _count(self, statuses, workflow_id: str | None, parts: list[tuple[str, list]]) -> int:
        """Matching jobs: history by status from the trigger-kept counts (no scan), the queue counted."""
        if workflow_id is not None:
            return sum(self._db.execute(count_sql(p), a).fetchone()[0] for p, a in parts)
        done = sorted(set(statuses) & set(jobmod.HISTORY_STATUSES))
        queued = sum(self._db.execute(count_sql(p), a).fetchone()[0] for p, a in parts if " FROM queue " in p)
        if not done:
            return queued
        marks = ",".join("?" * len(done))
        row = self._db.execute(f"SELECT COALESCE(SUM(n), 0) FROM history_counts WHERE status IN ({marks})",
                               done).fetchone()
        return queued + row[0]

    def _page_jobs(self, rows: list[tuple]) -> list[dict]:
        history_refs = [ref for src, ref, *_ in rows if src == 1]
        queue_ids = [ref for src, ref, *_ in rows if src == 0]
        found: dict[Any, dict] = {}
        for chunk in chunks(history_refs):
            marks = ",".join("?" * len(chunk))
            for seq, job in self._db.execute(f"SELECT seq, job FROM history WHERE seq IN ({marks})", chunk):
                found[seq] = json.loads(job)
        for chunk in chunks(queue_ids):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute("SELECT number, prompt_id, prompt, extra_data, outputs, sensitive, state"
                                        f" FROM queue WHERE prompt_id IN ({marks})", chunk):
                status = jobmod.IN_PROGRESS if row[6] == "running" else jobmod.PENDING
                found[row[1]] = jobmod.queue_job(_item(row[:6]).as_wire(), status)
        return [found[ref] for _, ref, *_ in rows if ref in found]

    def job(self, prompt_id: str) -> dict | None:
        """One job with its details (outputs, execution status, workflow), or None."""
        with self._lock:
            row = self._db.execute("SELECT number, prompt_id, prompt, extra_data, outputs, sensitive, state"
                                   " FROM queue WHERE prompt_id = ?", (prompt_id,)).fetchone()
            entry = None if row else self._db.execute("SELECT entry FROM history WHERE prompt_id = ?",
                                                      (prompt_id,)).fetchone()
        if row:
            status = jobmod.IN_PROGRESS if row[6] == "running" else jobmod.PENDING
            return jobmod.queue_job(_item(row[:6]).as_wire(), status, detail=True)
        return jobmod.history_job(prompt_id, json.loads(entry[0]), detail=True) if entry else None

    def state_of(self, prompt_id: str) -> str | None:
        """`pending`, `running`, `done` (in history) or None (unknown id)."""
        with self._lock:
            row = self._db.execute("SELECT state FROM queue WHERE prompt_id = ?", (prompt_id,)).fetchone()
            if row:
                return row[0]
            done = self._db.execute("SELECT 1 FROM history WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return "done" if done else None

    def delete_history(self, prompt_ids: list[str] | None = None) -> int:
        if prompt_ids is None:
            return self._tx(lambda: self._db.execute("DELETE FROM history").rowcount)
        ids = [str(p) for p in prompt_ids]
        return self._tx(lambda: sum(self._db.execute(
            "DELETE FROM history WHERE prompt_id = ?", (p,)).rowcount for p in ids))


def _item(row: tuple) -> QueueItem:
    number, prompt_id, prompt, extra_data, outputs, _ = row
    return QueueItem(number=number, prompt_id=prompt_id, prompt=_strict(prompt), extra_data=_strict(extra_data),
                     outputs=_strict(outputs), sensitive={})


def _strict(text: str) -> Any:
    """JSON that an older version may have written with NaN/Infinity: those become null."""
    return bodies.finite_or_none(json.loads(text))


def history_entry(item: QueueItem, status_str: str, completed: bool, messages: list,
                  outputs: dict, meta: dict) -> dict[str, Any]:
    """ComfyUI's history entry shape (spec §1.2)."""
    return {
        "prompt": item.as_wire(),
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": completed, "messages": messages},
        "meta": meta,
    }
