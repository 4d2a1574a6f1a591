"""Service-level states of orders and tickets, as pure functions of their dates and the time now.

One rule for both, so the two menus agree: a deadline is *at risk* / *WARNING* when less than a quarter
of its window (from creation to due) is left, and *breached* once it has passed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.flows.pack import render

WARNING_FRACTION = 0.25
# Maintenance tickets: how long the shop floor has to fix a machine, by the urgency reported.
MAINTENANCE_SLA = {"High": timedelta(hours=24), "Medium": timedelta(hours=72), "Low": timedelta(hours=168)}
DONE_ORDER_STATUSES = frozenset({"COMPLETED", "SHIPPED"})


def ticket_state(created_at: datetime, due_at: datetime, now: datetime) -> str:
    """``OK``, ``WARNING`` (less than 25% of the SLA left) or ``BREACHED``."""
    if now >= due_at:
        return "BREACHED"
    window = (due_at - created_at).total_seconds()
    left = (due_at - now).total_seconds()
    if window <= 0 or left < WARNING_FRACTION * window:
        return "WARNING"
    return "OK"


def order_state(
    status: str, progress: int, created_at: datetime, sla_due_at: datetime | None, now: datetime
) -> str:
    """``on track``, ``at risk`` or ``breached`` for an order's SLA (finished orders are on track)."""
    if status.upper() in DONE_ORDER_STATUSES or progress >= 100 or sla_due_at is None:
        return "on track"
    state = ticket_state(created_at, sla_due_at, now)
    return {"OK": "on track", "WARNING": "at risk", "BREACHED": "breached"}[state]


def describe_remaining(
    due_at: datetime, now: datetime, *, left: str = "{time} left", overdue: str = "overdue by {time}"
) -> str:
    """``5h 20m left`` / ``overdue by 2d 3h``, rounded down to minutes; ``left`` and ``overdue`` are the
    pack's templates for them (its ``time_left`` and ``overdue_by``)."""
    delta = due_at - now
    late = delta.total_seconds() < 0
    minutes = int(abs(delta.total_seconds()) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        text = f"{days}d {hours}h"
    elif hours:
        text = f"{hours}h {minutes}m"
    else:
        text = f"{minutes}m"
    return render(overdue if late else left, {"time": text})
