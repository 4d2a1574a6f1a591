"""The lookups and actions shipped with wapipe (the shop-floor pack uses them; other packs may too).

Each is a small function registered by name; see :mod:`shared.flows.registry` for the signatures.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.flows import repository, sla
from shared.flows.pack import DEFAULT_TEXTS, Meta, render
from shared.flows.registry import FlowContext, Rejected, action, lookup


def _texts(ctx: FlowContext) -> Meta:
    """The pack's texts, in whose words these lookups and actions answer."""
    return ctx.texts or DEFAULT_TEXTS


def _not_found(text: str, value: str) -> Rejected:
    """The refusal of ``value``, not found: the pack's ``text`` with it as {value}."""
    return Rejected(render(text, {"value": value}))


def when(moment: datetime | None, texts: Meta = DEFAULT_TEXTS) -> str:
    """A time as the user reads it: ``2026-05-10 14:00 UTC`` (the pack's ``not_set`` when there is none)."""
    if moment is None:
        return render(texts.not_set, {})
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _remaining(ctx: FlowContext, due_at: datetime) -> str:
    texts = _texts(ctx)
    return sla.describe_remaining(due_at, ctx.now, left=texts.time_left, overdue=texts.overdue_by)


@lookup(
    "order_exists",
    provides=("customer", "product", "order_status", "progress", "expected_date", "sla_status", "sla_due"),
)
def order_exists(ctx: FlowContext, value: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The order numbered ``value`` must exist; provides its status and SLA state for templates."""
    order = repository.get_order(ctx.conn, value)
    if order is None:
        raise _not_found(_texts(ctx).order_not_found, value)
    expected = order["expected_date"]
    return {
        "customer": order["customer"],
        "product": order["product"] or "-",
        "order_status": order["status"],
        "progress": order["progress"],
        "expected_date": expected.isoformat() if expected else render(_texts(ctx).not_set, {}),
        "sla_status": sla.order_state(
            order["status"], order["progress"], order["created_at"], order["sla_due_at"], ctx.now
        ),
        "sla_due": when(order["sla_due_at"], _texts(ctx)),
    }


@lookup("machine_exists", provides=("machine_name", "machine_line"))
def machine_exists(ctx: FlowContext, value: str, data: Mapping[str, Any]) -> dict[str, Any]:
    machine = repository.get_machine(ctx.conn, value)
    if machine is None:
        raise _not_found(_texts(ctx).machine_not_found, value)
    return {"machine_name": machine["name"], "machine_line": machine["line"] or "-"}


@lookup("ticket_sla", provides=("ticket_kind", "ticket_status", "sla_state", "time_remaining", "due"))
def ticket_sla(ctx: FlowContext, value: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A ticket with an SLA the sender may see; provides OK / WARNING / BREACHED and the time left.

    Another sender's ticket reads as not found, so a guessed reference tells nothing, not even that it exists.
    """
    record = repository.senders_record(ctx.conn, value, ctx.contact_id)
    if record is None or record["due_at"] is None:
        raise _not_found(_texts(ctx).ticket_not_found, value)
    return {
        "ticket_kind": record["kind"],
        "ticket_status": record["status"],
        "sla_state": sla.ticket_state(record["created_at"], record["due_at"], ctx.now),
        "time_remaining": _remaining(ctx, record["due_at"]),
        "due": when(record["due_at"], _texts(ctx)),
    }


@action("reply")
def reply_only(ctx: FlowContext, data: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """No effect: the reply template says everything (e.g. what the lookups found)."""
    return {}


def _store(ctx: FlowContext, data: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict, bool]:
    due_at = None
    sla_hours = options.get("sla_hours")
    if sla_hours is not None:
        if isinstance(sla_hours, dict):
            hours = sla_hours.get(str(data.get(str(options.get("sla_from", "")), "")))
        else:
            hours = sla_hours
        if hours is not None:
            due_at = ctx.now + timedelta(hours=float(hours))
    record, created = repository.create_record(
        ctx.conn,
        prefix=str(options.get("prefix", "REC")),
        flow=ctx.flow,
        kind=str(options.get("kind", ctx.flow)),
        contact_id=ctx.contact_id,
        conversation_id=ctx.conversation_id,
        source_message_id=ctx.message_id,
        data=dict(data),
        now=ctx.now,
        due_at=due_at,
    )
    return record, created


def _record_values(ctx: FlowContext, record: Mapping[str, Any]) -> dict[str, Any]:
    due_at = record["due_at"]
    window = (due_at - record["created_at"]) if due_at else None
    return {
        "reference": record["reference"],
        "due": when(due_at, _texts(ctx)),
        "sla_hours": int(window.total_seconds() // 3600) if window else "-",
    }


@action("create_record", provides=("reference", "due", "sla_hours"))
def create_record(ctx: FlowContext, data: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Store the form as a ``flow_records`` row.

    Options: ``prefix`` (reference prefix, e.g. ``MAINT``), ``kind``, and for an SLA either
    ``sla_hours = 24`` or ``sla_from = "urgency"`` with ``sla_hours = { High = 24, ... }``.
    """
    with ctx.conn.transaction():
        record, _ = _store(ctx, data, options)
    return _record_values(ctx, record)


@action("create_defect_report", provides=("reference", "due", "sla_hours"))
def create_defect_report(
    ctx: FlowContext, data: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """Store a defect report (``DEF-...``) and put its order ON HOLD, in one transaction."""
    options = {"prefix": "DEF", "kind": "defect", **options}
    order_field = str(options.get("order_from", "order_number"))
    with ctx.conn.transaction():
        record, created = _store(ctx, data, options)
        if created and data.get(order_field):
            repository.hold_order(ctx.conn, str(data[order_field]))
    return _record_values(ctx, record)


@action("list_open_tickets", provides=("tickets", "ticket_count"), counts="ticket_count")
def list_open_tickets(
    ctx: FlowContext, data: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """The asking contact's open records, newest first, one line each (with SLA state when they have one).

    With none, the flow's ``reply_empty`` answers; a flow without one gets the ``empty`` option as
    ``{tickets}`` under its reply's heading.
    """
    records = (
        repository.open_records(ctx.conn, ctx.contact_id, int(options.get("limit", 10)))
        if ctx.contact_id
        else []
    )
    lines = []
    for record in records:
        detail = record["data"].get("issue_type") or record["data"].get("defect_type") or record["kind"]
        line = f"• {record['reference']} ({detail})"
        if record["due_at"] is not None:
            line += f": {sla.ticket_state(record['created_at'], record['due_at'], ctx.now)}, "
            line += _remaining(ctx, record["due_at"])
        lines.append(line)
    empty = str(options.get("empty", "You have no open tickets."))
    return {"tickets": "\n".join(lines) if lines else empty, "ticket_count": len(records)}


@action("handoff")
def handoff(ctx: FlowContext, data: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Hand the conversation to a person: its status becomes 'handoff' and the router stops answering it."""
    if ctx.conversation_id is not None:
        repository.set_handoff(ctx.conn, ctx.conversation_id)
    return {}
