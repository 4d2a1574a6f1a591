"""``wapipe seed-demo``: a demo user, workspace, projects and tasks, and a linked phone, to try at once.

Idempotent: fixed ids (and the unique project names) make a second run change nothing. One function per
section so other deployments (menu flows, assistant) can add their own demo data beside these.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg

from shared.commands.arguments import add_data_dir
from shared.db import links, users
from shared.db import workspaces as repo
from shared.db.errors import Duplicate
from shared.db.pool import transaction
from shared.flows.seed import seed_pack
from shared.phone import InvalidPhone, mask_phone, normalize
from shared.settings import get_settings

HELP = "Create a demo user, workspace, projects and tasks, and link a phone to the demo user (idempotent)."

DEMO_USER_ID = uuid.UUID("00000000-0000-4000-8000-00000000de70")
DEMO_WORKSPACE_ID = uuid.UUID("00000000-0000-4000-8000-00000000de71")
DEMO_PHONE = "+15551234567"
DEMO_PROJECTS: dict[str, list[tuple[str, str, float | None, int | None]]] = {
    # project -> (task title, priority, estimated hours, due in N days)
    "Website Redesign": [
        ("Audit current pages", "medium", 4, 3),
        ("New homepage layout", "high", 12, 10),
    ],
    "Mobile App": [
        ("Login screen", "high", 8, 5),
        ("Push notifications", "medium", 6, None),
    ],
    "Marketing Site": [("Pricing page copy", "low", 3, 14)],
}
# Task ids derived from their names: the same task on every run, without a unique key in the schema.
_TASK_NAMESPACE = uuid.UUID("7a5c3d1e-2f4b-4c6d-8e9f-0a1b2c3d4e5f")


class SeedError(Exception):
    """The demo cannot be created as asked (e.g. the phone belongs to another user)."""


@dataclass
class SeedReport:
    user_id: uuid.UUID
    workspace: str
    projects: list[str] = field(default_factory=list)
    tasks: int = 0
    phone: str | None = None


def seed_user(conn: psycopg.Connection) -> uuid.UUID:
    users.ensure_user(conn, DEMO_USER_ID, "Demo User")
    return DEMO_USER_ID


def seed_workspace(conn: psycopg.Connection, user_id: uuid.UUID, report: SeedReport) -> uuid.UUID:
    workspace = repo.upsert_workspace(conn, "Demo Workspace", DEMO_WORKSPACE_ID)
    repo.add_member(conn, workspace.id, user_id, "owner")
    today = date.today()
    for name, tasks in DEMO_PROJECTS.items():
        project = repo.upsert_project(conn, workspace.id, name)
        report.projects.append(project.name)
        for title, priority, hours, due_in in tasks:
            repo.upsert_task(
                conn,
                project.id,
                title,
                task_id=uuid.uuid5(_TASK_NAMESPACE, f"{name}/{title}"),
                priority=priority,
                estimated_hours=hours,
                due_date=today + timedelta(days=due_in) if due_in is not None else None,
            )
            report.tasks += 1
    return workspace.id


def seed_phone_link(conn: psycopg.Connection, user_id: uuid.UUID, raw_phone: str, region: str) -> str:
    # Not strict: the default is a fictional 555 number, which is "possible" but not assigned.
    try:
        phone = normalize(raw_phone, region, strict=False)
    except InvalidPhone as exc:
        raise SeedError(f"--phone: {exc}") from None
    try:
        with conn.transaction():
            links.link_phone(conn, user_id, phone)
    except Duplicate:
        raise SeedError(
            f"{mask_phone(phone)} is already linked to another user; pick another --phone"
        ) from None
    return phone


def seed(phone: str = DEMO_PHONE, region: str | None = None) -> SeedReport:
    """Create (or find again) every demo row in one transaction."""
    region = region or get_settings().default_region
    with transaction() as conn:
        user_id = seed_user(conn)
        report = SeedReport(user_id=user_id, workspace="Demo Workspace")
        seed_workspace(conn, user_id, report)
        report.phone = seed_phone_link(conn, user_id, phone, region)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--phone", default=DEMO_PHONE, help=f"WhatsApp number to link to the demo user (default {DEMO_PHONE})"
    )
    parser.add_argument("--flows", choices=["shopfloor"], help="also create a flow pack's demo data")
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    try:
        report = seed(args.phone)
    except SeedError as exc:
        print(f"wapipe seed-demo: {exc}", file=sys.stderr)
        return 1
    print(f"Demo user:      {report.user_id}")
    print(f"Workspace:      {report.workspace}")
    print(f"Projects:       {', '.join(report.projects)} ({report.tasks} tasks)")
    print(f"Linked phone:   {report.phone}")
    print()
    print("Next, with `wapipe up` running, chat as that number:")
    print(f"  wapipe chat --from {report.phone}")
    print("and try: /help, /project mobile, /list tasks, then describe some work in plain text.")
    if args.flows:
        print(seed_pack(args.flows))
    return 0
