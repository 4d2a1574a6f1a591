"""notify's batch claim with many messages backed off ahead of the due ones (migration 0016).

    .venv/bin/python -m tests.bench.claim_scan [--history 1000000] [--backed-off 100000] [--due 400]
        [--runs 7] [--more 159]

Builds a database from the migrations and seeds ``--history`` sent messages, ``--backed-off`` queued
outbound messages (older ids) and ``--due`` queued ones after them (three quarters with no send_after,
the rest with one just passed), then EXPLAIN ANALYZEs :data:`shared.db.sending._CLAIM` (rolled back) in
three cases: the older ones backed off to a later send_after, their send_after passed, none set. Prints,
per case, the claim scan's time (the ``picked`` step) and the whole statement's, median and range, and
the index the scan walked. Then the write cost of the queued messages' index: a batch of inserts, a claim
and a release (back to queued with a send_after), with the indexes as they are and, for comparison, with
0006's messages_outbound_queued added back beside them.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import psycopg
from psycopg.rows import dict_row

from shared.db import sending
from shared.db.migrate import migrate
from tests.conftest import ADMIN_DATABASE_URL

CASES = {
    "backed off, later": "now() + interval '1 hour'",
    "backed off, passed": "now() - interval '1 minute'",
    "none set": "NULL",
}
OLD_INDEX = (
    "CREATE INDEX messages_outbound_queued ON messages (id) WHERE direction = 'out' AND status = 'queued'"
)


def seed(conn: psycopg.Connection, history: int, backed_off: int, due: int) -> None:
    contacts = max(1000, due)
    conn.execute(
        "INSERT INTO contacts (phone) SELECT '+1415' || lpad(g::text, 7, '0') FROM generate_series(1, %s) g",
        (contacts,),
    )
    conn.execute(
        "INSERT INTO messages (contact_id, direction, provider, body, status, created_at)"
        " SELECT 1 + g %% %s, CASE WHEN g %% 2 = 0 THEN 'out' ELSE 'in' END, 'twilio', 'x', 'sent',"
        " now() - interval '1 day' FROM generate_series(1, %s) g",
        (contacts, history),
    )
    conn.execute(
        "INSERT INTO messages (contact_id, direction, provider, body, status, attempts)"
        " SELECT 1 + g %% %s, 'out', 'twilio', 'x', 'queued', 1 FROM generate_series(1, %s) g",
        (contacts, backed_off),
    )
    # The due ones each to a contact of its own, so none waits behind an earlier message to its recipient.
    conn.execute(
        "INSERT INTO contacts (phone) SELECT '+1416' || lpad(g::text, 7, '0') FROM generate_series(1, %s) g",
        (due,),
    )
    conn.execute(
        "INSERT INTO messages (contact_id, direction, provider, body, status, send_after)"
        " SELECT c.id, 'out', 'twilio', 'x', 'queued',"
        "  CASE WHEN row_number() OVER (ORDER BY c.id) % 4 = 0 THEN now() - interval '1 minute' END"
        " FROM contacts c WHERE c.phone LIKE '+1416%' ORDER BY c.id"
    )


def scan_ms(plan: list[str]) -> float:
    """The ``picked`` step's time: the Limit node right under ``CTE picked``."""
    at = next(i for i, line in enumerate(plan) if line.strip() == "CTE picked")
    return float(plan[at + 1].split("actual time=")[1].split("..")[1].split()[0])


def scanned_index(plan: list[str]) -> str:
    at = next(i for i, line in enumerate(plan) if line.strip() == "CTE picked")
    return next(line.split(" using ")[1].split()[0] for line in plan[at:] if " using " in line)


def claim_case(conn: psycopg.Connection, send_after: str, runs: int, more: int) -> None:
    conn.execute(f"UPDATE messages SET send_after = {send_after} WHERE status = 'queued' AND attempts = 1")  # noqa: S608 - constants above
    conn.execute("VACUUM ANALYZE messages")
    own = conn.execute(
        "SELECT min(id) AS id FROM messages WHERE status = 'queued' AND attempts = 0 AND send_after IS NULL"
    ).fetchone()["id"]
    scans, totals, plan = [], [], []
    for _ in range(runs):
        with conn.transaction(force_rollback=True):
            rows = conn.execute("EXPLAIN ANALYZE " + sending._CLAIM, {"id": own, "more": more})
            plan = [row["QUERY PLAN"] for row in rows]
        scans.append(scan_ms(plan))
        totals.append(float(plan[-1].split()[2]))
    print(f"  scan      {figures(scans)}  ({scanned_index(plan)})")
    print(f"  statement {figures(totals)}")


def figures(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} ms (min {min(values):.2f}, max {max(values):.2f})"


NEW_INDEX = "messages_outbound_queued_due"
WRITE_SETUPS = {
    "0016's index (as migrated)": [],
    "0006's index instead": [f"DROP INDEX {NEW_INDEX}", OLD_INDEX],
    "both": [OLD_INDEX],
    "neither": [f"DROP INDEX {NEW_INDEX}"],
}
WRITE_STEPS = {
    "insert": "INSERT INTO messages (contact_id, direction, provider, body, status)"
    " SELECT 1 + g %% 1000, 'out', 'twilio', 'x', 'queued' FROM generate_series(1, %(n)s) g",
    "claim": "UPDATE messages SET status = 'sending', attempts = attempts + 1, send_after = NULL"
    " WHERE id >= %(first)s",
    "release": "UPDATE messages SET status = 'queued', send_after = now() + interval '5 s'"
    " WHERE id >= %(first)s",
}


def write_cost(conn: psycopg.Connection, rows: int, runs: int) -> None:
    """Inserting ``rows`` queued messages, claiming them, releasing them, under each set of indexes (each
    in a transaction rolled back, the sets taking turns): microseconds per message and step."""
    times: dict[str, dict[str, list[float]]] = {
        setup: {step: [] for step in WRITE_STEPS} for setup in WRITE_SETUPS
    }
    for _ in range(runs + 1):  # the first round warms the caches and is not counted
        for setup, statements in WRITE_SETUPS.items():
            with conn.transaction(force_rollback=True):
                for statement in statements:
                    conn.execute(statement)
                first = conn.execute("SELECT max(id) + 1 AS id FROM messages").fetchone()["id"]
                for step, statement in WRITE_STEPS.items():
                    started = time.perf_counter()
                    conn.execute(statement, {"n": rows, "first": first})
                    times[setup][step].append((time.perf_counter() - started) * 1_000_000 / rows)
    for setup, steps in times.items():
        print(
            f"  {setup:28s} "
            + ", ".join(f"{step} {statistics.median(v[1:]):5.2f}" for step, v in steps.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--backed-off", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--more", type=int, default=159)
    args = parser.parse_args()
    name = f"wapipe_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = psycopg.conninfo.make_conninfo(ADMIN_DATABASE_URL, dbname=name)
        migrate(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            seed(conn, args.history, args.backed_off, args.due)
            print(
                f"claim of {args.more} more, {args.history:,} sent, {args.backed_off:,} older queued,"
                f" {args.due} due after them"
            )
            for label, send_after in CASES.items():
                print(f"older queued: {label}")
                claim_case(conn, send_after, args.runs, args.more)
            print("write cost, microseconds per queued message (median):")
            write_cost(conn, 20_000, args.runs)
    finally:
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
