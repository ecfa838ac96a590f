"""The SQL behind the jobs API (`/api/jobs`) over the store's queue and history tables: the job
columns and indexes of `history`, and the SELECTs one jobs query is made of. Kept apart from
`store.py`, which owns the transactions; these are plain data and pure functions.
"""

from __future__ import annotations

import json

from diffmesh.server import jobs as jobmod

# Columns of `history` the jobs API reads (added to databases written before it existed).
JOB_COLUMNS = {"status": "TEXT", "create_time": "INTEGER", "duration": "INTEGER", "workflow_id": "TEXT",
                "job": "TEXT"}
JOB_INDEXES = """
CREATE INDEX IF NOT EXISTS history_created ON history (create_time, seq);
CREATE INDEX IF NOT EXISTS history_status_created ON history (status, create_time, seq);
CREATE INDEX IF NOT EXISTS history_duration ON history (duration, seq);
CREATE INDEX IF NOT EXISTS history_status_duration ON history (status, duration, seq);
CREATE INDEX IF NOT EXISTS history_order ON history (seq);
CREATE TABLE IF NOT EXISTS history_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS history_counts_insert AFTER INSERT ON history BEGIN
    INSERT INTO history_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS history_counts_delete AFTER DELETE ON history BEGIN
    UPDATE history_counts SET n = n - 1 WHERE status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS history_counts_update AFTER UPDATE OF status ON history BEGIN
    UPDATE history_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO history_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
"""


def job_selects(statuses, workflow_id: str | None, sort_by: str) -> list[tuple[str, list]]:
    """The queue and history SELECTs of a jobs query, each with its parameters. Columns: source
    (0 queue, 1 history), reference (queue: prompt id; history: seq), sort key, order within the
    source. The history SELECT reads only columns of one index (seq is in every index), so
    walking past an offset never touches the table."""
    parts = []
    states = [jobmod.QUEUE_STATES[s] for s in statuses if s in jobmod.QUEUE_STATES]
    if states:
        where, args = f"state IN ({','.join('?' * len(states))})", list(states)
        if workflow_id is not None:
            where, args = f"{where} AND json_extract(extra_data, '$.extra_pnginfo.workflow.id') = ?", [*args, workflow_id]
        key = "COALESCE(CAST(json_extract(extra_data, '$.create_time') AS INTEGER), 0)" if sort_by == "created_at" else "0"
        parts.append((f"SELECT 0, prompt_id, {key}, number FROM queue WHERE {where}", args))
    done = [s for s in statuses if s in jobmod.HISTORY_STATUSES]
    if done:
        # All three statuses: no condition, so the (key, seq) index serves. Fewer: one SELECT per
        # status along its (status, key, seq) range, merged like the rest (an IN list would sort).
        conditions = [("1", [])] if len(set(done)) == len(jobmod.HISTORY_STATUSES) else [
            ("status = ?", [status]) for status in dict.fromkeys(done)]
        key = "create_time" if sort_by == "created_at" else "duration"
        for where, args in conditions:
            if workflow_id is not None:
                where, args = f"{where} AND workflow_id = ?", [*args, workflow_id]
            parts.append((f"SELECT 1, seq, {key}, seq FROM history WHERE {where}", args))
    return parts


def count_sql(select: str) -> str:
    """COUNT(*) over one part's table and condition: counting from a subquery would make SQLite
    produce every row first (100,000 rows: milliseconds instead of a fraction of one)."""
    return "SELECT COUNT(*) " + select[select.index(" FROM "):]


def chunks(ids: list[str], size: int = 500):
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def job_columns(prompt_id: str, entry: dict) -> tuple:
    """(status, create_time, duration, workflow_id, job JSON) of a history entry."""
    job = jobmod.history_job(prompt_id, entry)
    return (job["status"], int(job.get("create_time") or 0), jobmod.duration(job), job.get("workflow_id"),
            json.dumps(job, default=str))
