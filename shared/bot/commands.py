"""The project bot's slash commands: ``/help /status /project /workspace /list /clear``.

:func:`respond` is a plain function from a message and its sender to the reply text; the
``commands.handle`` task (``workers/commands.py``) only loads the message, calls it and queues the reply.
The user's selection (``workspace_id``, ``project_id``) lives in their Redis session (30-minute TTL,
renewed on each message), bound to their user id (a number relinked to another account starts with
none), and is re-checked against their memberships every time, so a stale session never shows a
workspace they have left.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import psycopg

from shared.bot.matching import Found, find, namesake_numbers
from shared.db import workspaces as repo
from shared.db.pool import connection
from shared.db.workspaces import Project, Workspace
from shared.sessions import Selection, Sessions
from shared.wire.events import MessageType

HELP_TEXT = (
    "Commands:\n"
    "/status - current workspace and project\n"
    "/project [name] - list projects, or switch to one\n"
    "/workspace [name] - list workspaces, or switch to one\n"
    "/list projects - projects in the current workspace\n"
    "/list tasks - tasks in the current project\n"
    "/clear - forget the current selection\n"
    "/help - this list\n\n"
    "With a project selected, describe the work in a message and it becomes a proposal."
)

LINKING_INSTRUCTIONS = (
    "👋 This WhatsApp number is not linked to an account yet.\n\n"
    "To link it: in the app, open your profile settings and ask for a WhatsApp code, "
    "then send it here as:\n\nVERIFY 123456\n\n(with your own 6-digit code; it is valid for 10 minutes)."
)

# A chat that hides the phone number (a WhatsApp username: Meta gives only its business-scoped id) can
# never be linked: accounts are linked by phone number, and a code would have nothing to match.
NO_PHONE_TEXT = (
    "This chat does not share your phone number with us, so it can't be linked to an account and the "
    "project bot can't answer it. Write to us from a chat that shows your number."
)

# Free text without a usable project: none chosen, or one the user may no longer use (workers/ai.py and
# workers/persist.py).
CHOOSE_PROJECT = (
    "📁 Choose a project first: send /project <name> (or /list projects to see them), "
    "then send your message again."
)

# A shared location from a linked user: the bot reads text only (the help alone would not say why the
# place was not used).
LOCATION_TEXT = (
    "📍 I can't use a shared location: I only read text. Describe the work in a message, with the "
    "address written in it, and it becomes a proposal (send /help for the commands)."
)

TASK_LIST_LIMIT = 20
# Twilio refuses a WhatsApp body over 1,600 characters (Meta over 4,096), for good: a longer reply would
# never reach the user. Lists stop within LIST_BUDGET with a count of the rest, names and titles are cut at
# NAME_MAX and what the user typed is echoed at most ECHO_MAX long, so every reply fits the smaller limit.
REPLY_MAX = 1600
LIST_BUDGET = 1200
NAME_MAX = 80
ECHO_MAX = 60


@dataclass(frozen=True)
class ChatUser:
    """Who sent the message: ``key`` names their session (E.164 phone or Meta BSUID); ``user_id`` is the
    linked host-application user, None when the number is not linked; ``has_phone``: whether the chat
    shares a phone number (the only thing a link can match)."""

    key: str
    user_id: UUID | None
    has_phone: bool = True


@dataclass
class _Context:
    conn: psycopg.Connection
    user: ChatUser
    user_id: UUID
    sessions: Sessions
    selection: Selection

    def workspaces(self) -> list[Workspace]:
        return repo.workspaces_for_user(self.conn, self.user_id)

    def current_workspace(self) -> Workspace | None:
        """The selected workspace, or the only one when the user has just one."""
        mine = self.workspaces()
        chosen = [ws for ws in mine if str(ws.id) == self.selection.workspace_id]
        if chosen:
            return chosen[0]
        return mine[0] if len(mine) == 1 else None

    def current_project(self) -> Project | None:
        project_id = self.selection.project_id
        if not project_id:
            return None
        found = [p for p in repo.projects_for_user(self.conn, self.user_id) if str(p.id) == project_id]
        return found[0] if found else None


def is_command(text: str) -> bool:
    """Whether ``text`` is a slash command (for the commands stage, not a proposal): it starts with "/" as
    :func:`_command_word` reads it, so "／" too (the only other character NFKC makes "/")."""
    return _command_word(text[:1]) == "/"


def _command_word(word: str) -> str:
    """``word`` as commands are looked up: in any case, and as NFKC, since a full-width keyboard (Japanese,
    Chinese) types "／ｈｅｌｐ" for "/help", the letters as well as the slash."""
    return unicodedata.normalize("NFKC", word).casefold()


def respond(text: str, user: ChatUser, sessions: Sessions, message_type: str = MessageType.text) -> str:
    """The bot's answer to ``text`` from ``user`` (linking instructions when the number is not linked);
    ``message_type``: the stored message's type."""
    if user.user_id is None:
        return LINKING_INSTRUCTIONS if user.has_phone else NO_PHONE_TEXT
    if message_type == MessageType.location:
        return LOCATION_TEXT
    words = (text or "").strip().split(maxsplit=1)
    command = _command_word(words[0]) if words and is_command(words[0]) else ""
    argument = words[1].strip() if len(words) > 1 else ""
    handler = _COMMANDS.get(command)
    if handler is None:
        if command:
            return f"I don't know {_echo(words[0])}.\n\n{HELP_TEXT}"
        return HELP_TEXT
    with connection() as conn:
        ctx = _Context(conn, user, user.user_id, sessions, sessions.selected(user.key, user.user_id))
        return _clipped(handler(ctx, argument), REPLY_MAX)


def _help(ctx: _Context, argument: str) -> str:
    return HELP_TEXT


def _status(ctx: _Context, argument: str) -> str:
    workspace = ctx.current_workspace()
    project = ctx.current_project()
    if workspace is None:
        return "Workspace: none selected - choose one with /workspace <name>\nProject: none"
    lines = [f"Workspace: {workspace.name}"]
    if project is None:
        lines.append("Project: none - choose one with /project <name>")
    else:
        lines.append(f"Project: {project.name}")
    return "\n".join(lines)


def _workspace(ctx: _Context, argument: str) -> str:
    mine = ctx.workspaces()
    if not mine:
        return "You are not a member of any workspace yet. Ask a workspace admin to add you."
    current = ctx.current_workspace()
    if not argument:
        return _bullets("Your workspaces:", mine, lambda ws: ws.name, current) + (
            "\n\nSwitch with /workspace <name>."
        )
    matched = find(argument, mine, _name)
    if not matched.sure:
        return _no_match("workspace", argument, matched) + _bullets("Your workspaces:", mine, _name, current)
    found = matched.items
    if len(found) > 1:
        return _bullets(f'Several workspaces match "{_echo(argument)}":', found, _name, None) + _narrow_hint(
            "/workspace", found
        )
    chosen = found[0]
    if ctx.selection.workspace_id != str(chosen.id):
        # A project belongs to one workspace: switching workspace drops a project from another one.
        project = ctx.current_project()
        kept = str(project.id) if project is not None and project.workspace_id == chosen.id else None
        ctx.sessions.select(ctx.user.key, ctx.user_id, workspace_id=str(chosen.id), project_id=kept)
    return f"✅ Workspace: {chosen.name}\nChoose a project with /project <name>, or /project to list them."


def _project(ctx: _Context, argument: str) -> str:
    workspace = ctx.current_workspace()
    projects = repo.projects_for_user(ctx.conn, ctx.user_id, workspace.id if workspace else None)
    if not argument:
        return _project_list(ctx, workspace, projects)
    if not projects:
        return _project_list(ctx, workspace, projects)
    label = _project_label(ctx, workspace)
    matched = find(argument, projects, _name)
    if not matched.sure:
        return _no_match("project", argument, matched) + _project_list(ctx, workspace, projects)
    found = matched.items
    if len(found) > 1:
        return _bullets(f'Several projects match "{_echo(argument)}":', found, label, None) + _narrow_hint(
            "/project", found
        )
    chosen = found[0]
    ctx.sessions.select(
        ctx.user.key, ctx.user_id, workspace_id=str(chosen.workspace_id), project_id=str(chosen.id)
    )
    where = "" if workspace else f" ({_workspace_names(ctx).get(chosen.workspace_id, '')})"
    return (
        f"✅ Project: {chosen.name}{where}\n"
        "Describe the work in a message and it becomes a proposal for this project."
    )


def _project_list(ctx: _Context, workspace: Workspace | None, projects: list[Project]) -> str:
    if not projects:
        where = f"in {workspace.name}" if workspace else "in your workspaces"
        return f"There are no projects {where} yet."
    current = ctx.current_project()
    title = f"Projects in {workspace.name}:" if workspace else "Your projects:"
    label = _project_label(ctx, workspace)
    return _bullets(title, projects, label, current) + "\n\nSwitch with /project <name>."


def _list(ctx: _Context, argument: str) -> str:
    what = _command_word(argument)  # a keyword, typed on the command's keyboard ("／ｌｉｓｔ　ｔａｓｋｓ")
    if what in {"projects", "project", "p"}:
        return _project(ctx, "")
    if what in {"tasks", "task", "t"}:
        return _tasks(ctx)
    if what in {"workspaces", "workspace", "w"}:
        return _workspace(ctx, "")
    return "Use /list projects or /list tasks."


def _tasks(ctx: _Context) -> str:
    project = ctx.current_project()
    if project is None:
        return "Choose a project first with /project <name>."
    tasks = repo.tasks_for_project(ctx.conn, project.id, TASK_LIST_LIMIT)
    if not tasks:
        return f"No tasks in {project.name} yet."
    lines = []
    for task in tasks:
        details = [task.status]
        if task.due_date:
            details.append(f"due {task.due_date.isoformat()}")
        if task.estimated_hours is not None:
            details.append(f"{task.estimated_hours.normalize():f}h")
        lines.append(f"• {_clipped(task.title, NAME_MAX)} ({', '.join(details)})")
    return "\n".join([f"Tasks in {_clipped(project.name, NAME_MAX)}:", *_within_budget(lines)])


def _clear(ctx: _Context, argument: str) -> str:
    ctx.sessions.clear(ctx.user.key)
    return "Session cleared: no workspace or project selected."


def _bullets(title: str, items: list, name: Callable, current: object | None) -> str:
    current_id = getattr(current, "id", None)
    numbers = namesake_numbers(items, _name)  # by the name itself, as "/project <name> <n>" is matched
    lines = []
    for position, item in enumerate(items):
        number = f" #{numbers[position]}" if position in numbers else ""
        mark = " (current)" if current_id is not None and item.id == current_id else ""
        lines.append(f"• {_clipped(name(item), NAME_MAX)}{number}{mark}")
    return "\n".join([title, *_within_budget(lines)])


def _no_match(kind: str, argument: str, matched: Found) -> str:
    """The opening of the answer to a name that chooses nothing: a single guess is offered, never taken
    (a wrong project would file the user's proposals in it)."""
    text = f'No {kind} matches "{_echo(argument)}".'
    if len(matched.items) == 1:
        text += f" Did you mean {_clipped(matched.items[0].name, NAME_MAX)}?"
    return text + "\n\n"


def _narrow_hint(command: str, found: list) -> str:
    numbers = namesake_numbers(found, _name)
    if not numbers:
        return f"\n\nSend {command} with more of the name."
    example = found[next(iter(numbers))]
    return (
        f"\n\nSend {command} with more of the name, or the name and its number "
        f"({command} {_clipped(example.name, NAME_MAX)} #2)."
    )


def _within_budget(lines: list[str]) -> list[str]:
    """The first lines that fit in :data:`LIST_BUDGET` characters, then how many more there are."""
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > LIST_BUDGET:
            return [*kept, f"…and {len(lines) - len(kept)} more"]
        kept.append(line)
        used += len(line) + 1
    return kept


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _echo(argument: str) -> str:
    return _clipped(" ".join(argument.split()), ECHO_MAX)


def _name(item: Workspace | Project) -> str:
    return item.name


def _workspace_names(ctx: _Context) -> dict[UUID, str]:
    return {ws.id: ws.name for ws in ctx.workspaces()}


def _project_label(ctx: _Context, workspace: Workspace | None) -> Callable[[Project], str]:
    """Project names, qualified by workspace when listing across several workspaces with the same name."""
    if workspace is not None:
        return _name
    names = _workspace_names(ctx)
    if len(names) <= 1:
        return _name
    return lambda project: f"{project.name} ({names.get(project.workspace_id, '?')})"


_COMMANDS: dict[str, Callable[[_Context, str], str]] = {
    "/help": _help,
    "/start": _help,
    "/status": _status,
    "/project": _project,
    "/projects": lambda ctx, _arg: _project(ctx, ""),
    "/workspace": _workspace,
    "/workspaces": lambda ctx, _arg: _workspace(ctx, ""),
    "/list": _list,
    "/clear": _clear,
}
