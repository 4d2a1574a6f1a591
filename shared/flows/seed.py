"""Demo data for the shop-floor pack: orders, machines and maintenance tickets to try every menu option.

``wapipe seed-demo --flows shopfloor`` calls :func:`seed_shopfloor`. Idempotent: rows that exist (same
order number, machine id or ticket reference) are left as they are, so a second run changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_ORDER = """
INSERT INTO orders
    (number, customer, product, quantity, status, progress, expected_date, sla_due_at, created_at)
VALUES (%(number)s, %(customer)s, %(product)s, %(quantity)s, %(status)s, %(progress)s, %(expected_date)s,
        %(sla_due_at)s, %(created_at)s)
ON CONFLICT (number) DO NOTHING
"""
_MACHINE = """
INSERT INTO machines (id, name, line) VALUES (%(id)s, %(name)s, %(line)s)
ON CONFLICT (id) DO NOTHING
"""
_TICKET = """
INSERT INTO flow_records (reference, flow, kind, data, status, due_at, created_at)
VALUES (%(reference)s, 'report_maintenance', 'maintenance', %(data)s, 'open', %(due_at)s, %(created_at)s)
ON CONFLICT (reference) DO NOTHING
"""


def _orders(now: datetime) -> list[dict[str, Any]]:
    today = now.date()

    def order(
        number: str,
        customer: str,
        product: str,
        status: str,
        progress: int,
        age_days: int,
        sla_days: int,
        expected_in: int,
    ) -> dict[str, Any]:
        return {
            "number": number, "customer": customer, "product": product, "quantity": 100 + progress,
            "status": status, "progress": progress, "created_at": now - timedelta(days=age_days),
            "sla_due_at": now - timedelta(days=age_days) + timedelta(days=sla_days),
            "expected_date": today + timedelta(days=expected_in),
        }  # fmt: skip

    return [
        order("ORD-12345", "Acme Corp", "Steel brackets", "IN PRODUCTION", 65, 2, 10, 5),  # on track
        order("ORD-12346", "Globex", "Hydraulic valves", "IN PRODUCTION", 40, 9, 10, 2),  # at risk
        order("ORD-12347", "Initech", "Gear housings", "IN PRODUCTION", 80, 12, 10, 1),  # breached
        order("ORD-12348", "Umbrella", "Pump covers", "COMPLETED", 100, 20, 14, -3),
    ]


_MACHINES = [
    {"id": "MACH-001", "name": "CNC Lathe", "line": "A"},
    {"id": "MACH-002", "name": "Hydraulic Press", "line": "A"},
    {"id": "MACH-003", "name": "Injection Moulder", "line": "B"},
    {"id": "MACH-004", "name": "Paint Robot", "line": "C"},
]


def _tickets(now: datetime) -> list[dict[str, Any]]:
    def ticket(reference: str, machine: str, issue: str, urgency: str, hours: int, age_hours: int) -> dict:
        created = now - timedelta(hours=age_hours)
        data = {"machine_id": machine, "issue_type": issue, "urgency": urgency}
        return {"reference": reference, "data": Jsonb(data), "created_at": created,
                "due_at": created + timedelta(hours=hours)}  # fmt: skip

    return [
        ticket("MAINT-555", "MACH-001", "Bearing", "High", 24, 4),  # OK: 20 of 24 hours left
        ticket("MAINT-556", "MACH-002", "Hydraulic", "Medium", 72, 60),  # WARNING: 12 of 72 hours left
        ticket("MAINT-557", "MACH-003", "Electrical", "High", 24, 30),  # BREACHED
    ]


def seed_shopfloor(conn: psycopg.Connection, now: datetime | None = None) -> dict[str, int]:
    """Create the demo orders, machines and tickets; return how many of each were new."""
    now = now or datetime.now(UTC)
    created = {"orders": 0, "machines": 0, "tickets": 0}
    with conn.transaction():
        for row in _orders(now):
            created["orders"] += conn.execute(_ORDER, row).rowcount
        for row in _MACHINES:
            created["machines"] += conn.execute(_MACHINE, row).rowcount
        for row in _tickets(now):
            created["tickets"] += conn.execute(_TICKET, row).rowcount
    return created


__all__ = ["seed_shopfloor"]


SEEDERS = {"shopfloor": seed_shopfloor}


def seed_pack(name: str) -> str:
    """``wapipe seed-demo --flows NAME``: seed that pack's demo data; return what to print."""
    from shared.db.pool import transaction

    with transaction() as conn:
        created = SEEDERS[name](conn)
    counts = ", ".join(f"{count} new {what}" for what, count in created.items())
    return (
        f"\nFlow pack {name}: {counts} (orders ORD-12345..., machines MACH-001..., ticket MAINT-555).\n"
        f"Run with WAPIPE_MODE=menu WAPIPE_FLOWS={name}, then send `hi` in `wapipe chat`."
    )
