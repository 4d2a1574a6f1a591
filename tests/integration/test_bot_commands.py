"""The slash commands as plain functions, against real PostgreSQL (seeded demo data) and Redis sessions."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis

from shared.bot.commands import HELP_TEXT, LINKING_INSTRUCTIONS, ChatUser, is_command, respond
from shared.bot.matching import best_matches
from shared.commands.seed_demo import DEMO_USER_ID, seed
from shared.db import workspaces as repo
from shared.db.pool import transaction
from shared.sessions import Sessions

PHONE = "+15551234567"


@pytest.fixture
def demo(clean: None, redis_client: redis.Redis) -> Sessions:
    seed(PHONE)
    return Sessions(redis_client, ttl_seconds=1800)


def say(sessions: Sessions, text: str, user_id: uuid.UUID | None = DEMO_USER_ID) -> str:
    return respond(text, ChatUser(PHONE, user_id), sessions)


def test_unlinked_number_gets_linking_instructions(demo: Sessions) -> None:
    for text in ("/project mobile", "hello", "/help"):
        reply = say(demo, text, user_id=None)
        assert reply == LINKING_INSTRUCTIONS
    assert "VERIFY 123456" in LINKING_INSTRUCTIONS


def test_help_and_unknown_commands(demo: Sessions) -> None:
    assert say(demo, "/help") == HELP_TEXT
    unknown = say(demo, "/dance")
    assert unknown.startswith("I don't know /dance.")
    assert unknown.endswith(HELP_TEXT)
    assert say(demo, "just some text") == HELP_TEXT


def test_project_switch_is_fuzzy_and_kept_in_the_session(demo: Sessions, redis_client: redis.Redis) -> None:
    reply = say(demo, "/PROJECT mobile")
    assert reply.startswith("✅ Project: Mobile App")
    session = demo.load(PHONE)
    with transaction() as conn:
        projects = {p.name: p for p in repo.projects_for_user(conn, DEMO_USER_ID)}
    assert session["project_id"] == str(projects["Mobile App"].id)
    assert session["workspace_id"] == str(projects["Mobile App"].workspace_id)
    assert 0 < redis_client.ttl("session:" + PHONE) <= 1800
    assert say(demo, "/status") == "Workspace: Demo Workspace\nProject: Mobile App"
    # A typo still finds it.
    assert say(demo, "/project webiste").startswith("✅ Project: Website Redesign")


def test_ambiguous_project_lists_the_choices(demo: Sessions) -> None:
    reply = say(demo, "/project m")
    assert reply.startswith('Several projects match "m":')
    assert "• Marketing Site" in reply
    assert "• Mobile App" in reply
    assert "Website Redesign" not in reply
    assert "project_id" not in demo.load(PHONE)


def test_a_full_width_slash_starts_a_command(demo: Sessions) -> None:
    # Some keyboards (Japanese, Chinese) type "／" (U+FF0F) for "/".
    assert is_command("／project mobile")
    assert say(demo, "／project mobile").startswith("✅ Project: Mobile App")
    assert say(demo, "／DANCE").startswith("I don't know ／DANCE.")
    assert not is_command("project ／ mobile")


def test_a_command_typed_on_a_full_width_keyboard_is_understood(demo: Sessions) -> None:
    # Such a keyboard types the letters full-width too (and its space, U+3000): the command word reads as
    # its NFKC form, the argument as the user typed it, names folding it as they match.
    assert is_command("／ｈｅｌｐ")
    assert say(demo, "／ｈｅｌｐ") == HELP_TEXT
    assert say(demo, "/ＳＴＡＴＵＳ").startswith("Workspace: Demo Workspace")
    assert say(demo, "／ｐｒｏｊｅｃｔ　ｍｏｂｉｌｅ").startswith("✅ Project: Mobile App")
    assert say(demo, "／ｌｉｓｔ　ｔａｓｋｓ").startswith("Tasks in Mobile App:")
    assert say(demo, "／ＤＡＮＣＥ").startswith("I don't know ／ＤＡＮＣＥ.")


def test_project_without_argument_lists_projects(demo: Sessions) -> None:
    say(demo, "/project marketing")
    reply = say(demo, "/project")
    assert reply.splitlines()[:4] == [
        "Projects in Demo Workspace:",
        "• Marketing Site (current)",
        "• Mobile App",
        "• Website Redesign",
    ]
    assert say(demo, "/list projects") == reply


def test_no_match_says_so(demo: Sessions) -> None:
    reply = say(demo, "/project zzzz")
    assert reply.startswith('No project matches "zzzz".')
    assert "• Mobile App" in reply


def test_a_name_no_project_has_selects_none(demo: Sessions) -> None:
    # "sprint" is as close to "site" as a typo once had to be: a proposal would have gone to Marketing Site.
    reply = say(demo, "/project sprint")
    assert reply.startswith('No project matches "sprint".')
    assert "• Marketing Site" in reply
    assert "project_id" not in demo.load(PHONE)


def test_a_name_only_close_to_a_project_is_offered_not_chosen(demo: Sessions) -> None:
    reply = say(demo, "/project mobility")
    assert reply.startswith('No project matches "mobility". Did you mean Mobile App?')
    assert "project_id" not in demo.load(PHONE)


def test_an_exact_name_wins_whatever_its_case_accents_and_emoji(demo: Sessions) -> None:
    with transaction() as conn:
        [workspace] = repo.workspaces_for_user(conn, DEMO_USER_ID)
        for name in ("Launch Plan", "🚀 Launch", "Diseño"):
            repo.upsert_project(conn, workspace.id, name)

    assert say(demo, "/project launch").startswith("✅ Project: 🚀 Launch")
    assert say(demo, "/project LAUNCH PLAN").startswith("✅ Project: Launch Plan")
    assert say(demo, "/project diseno").startswith("✅ Project: Diseño")


def test_a_name_written_exactly_wins_over_those_it_is_like_without_punctuation_and_emoji(
    demo: Sessions,
) -> None:
    # Compared without emoji, "🚀 Launch" is "launch": a name exactly as written (in any case, full-width
    # or not) is chosen first; a query that starts both "C++" and "C#" lists both.
    with transaction() as conn:
        [workspace] = repo.workspaces_for_user(conn, DEMO_USER_ID)
        for name in ("C++", "C#", "Launch", "🚀 Launch"):
            repo.upsert_project(conn, workspace.id, name)

    assert say(demo, "/project C#").startswith("✅ Project: C#\n")
    assert say(demo, "/project c++").startswith("✅ Project: C++\n")
    assert say(demo, "/project Ｃ＃").startswith("✅ Project: C#\n")
    assert say(demo, "/project 🚀  launch").startswith("✅ Project: 🚀 Launch\n")
    assert say(demo, "/project LAUNCH").startswith("✅ Project: Launch\n")
    assert say(demo, "/project c").startswith('Several projects match "c":')


def test_a_name_that_starts_with_symbols_is_not_taken_for_one_without_them(demo: Sessions) -> None:
    # "C++" and "C#" differ only in their symbols: compared without them, "/project C++" chose "C#".
    with transaction() as conn:
        [workspace] = repo.workspaces_for_user(conn, DEMO_USER_ID)
        for name in ("C#", "C++ Tools"):
            repo.upsert_project(conn, workspace.id, name)

    assert say(demo, "/project C++").startswith("✅ Project: C++ Tools\n")
    assert say(demo, "/project c#").startswith("✅ Project: C#\n")


def test_an_emoji_alone_finds_the_project_with_it(demo: Sessions) -> None:
    # Compared without emoji, "📱" named nothing: "📱 Mobile" is "mobile", like the other Mobile projects.
    with transaction() as conn:
        [workspace] = repo.workspaces_for_user(conn, DEMO_USER_ID)
        for name in ("📱 Mobile", "🚀 Launch", "Rocket 🚀"):
            repo.upsert_project(conn, workspace.id, name)

    assert say(demo, "/project 📱").startswith("✅ Project: 📱 Mobile\n")
    assert say(demo, "/project 🚀").startswith('Several projects match "🚀":')
    assert say(demo, "/project 🎉").startswith('No project matches "🎉"')


def test_an_emoji_inside_a_joined_emoji_chooses_no_project(demo: Sessions) -> None:
    # Before: "💻" was found inside "👨‍💻" and chose "👨‍💻 Dev", another emoji than the one sent.
    with transaction() as conn:
        [workspace] = repo.workspaces_for_user(conn, DEMO_USER_ID)
        for name in ("👨\u200d💻 Dev", "❤️\u200d🔥 Love"):
            repo.upsert_project(conn, workspace.id, name)

    assert say(demo, "/project 💻").startswith('No project matches "💻". Did you mean 👨\u200d💻 Dev?')
    assert say(demo, "/project ❤️").startswith('No project matches "❤️". Did you mean ❤️\u200d🔥 Love?')
    assert say(demo, "/project 👨\u200d💻").startswith("✅ Project: 👨\u200d💻 Dev\n")


def test_an_unknown_number_after_a_name_selects_nothing(demo: Sessions) -> None:
    # "#3" numbers one of several projects of one name: with one Mobile App there is no third.
    reply = say(demo, "/project Mobile App #3")
    assert reply.startswith('No project matches "Mobile App #3". Did you mean Mobile App?')
    assert "project_id" not in demo.load(PHONE)


def test_list_tasks_needs_a_project(demo: Sessions) -> None:
    assert say(demo, "/list tasks") == "Choose a project first with /project <name>."
    say(demo, "/project mobile app")
    reply = say(demo, "/list tasks")
    assert reply.splitlines()[0] == "Tasks in Mobile App:"
    assert "• Login screen (open, due " in reply
    assert "8h)" in reply
    assert say(demo, "/list nonsense") == "Use /list projects or /list tasks."


def test_workspace_commands(demo: Sessions, db: psycopg.Connection) -> None:
    assert say(demo, "/workspace").startswith("Your workspaces:\n• Demo Workspace (current)")
    with transaction() as conn:
        other = repo.upsert_workspace(conn, "Client Work")
        repo.add_member(conn, other.id, DEMO_USER_ID)
        repo.upsert_project(conn, other.id, "Mobile Backend")
    # With two workspaces and none chosen, /status asks to choose.
    assert say(demo, "/status").startswith("Workspace: none selected")
    assert say(demo, "/workspace demo").startswith("✅ Workspace: Demo Workspace")
    say(demo, "/project mobile")
    assert say(demo, "/workspace client").startswith("✅ Workspace: Client Work")
    assert "project_id" not in demo.load(PHONE)
    assert say(demo, "/project mobile").startswith("✅ Project: Mobile Backend")


def test_only_member_workspaces_are_visible(demo: Sessions) -> None:
    with transaction() as conn:
        foreign = repo.upsert_workspace(conn, "Someone Else's")
        repo.upsert_project(conn, foreign.id, "Secret Project")
    assert "Secret" not in say(demo, "/project")
    assert say(demo, "/project secret").startswith('No project matches "secret"')
    assert "Someone" not in say(demo, "/workspace")
    # A session pointing at a foreign workspace (stale or forged) is ignored.
    demo.save(PHONE, {"workspace_id": str(foreign.id)})
    assert say(demo, "/status") == (
        "Workspace: Demo Workspace\nProject: none - choose one with /project <name>"
    )


def test_linked_user_without_workspaces(demo: Sessions) -> None:
    stranger = uuid.uuid4()
    with transaction() as conn:
        from shared.db.users import ensure_user

        ensure_user(conn, stranger)
    assert say(demo, "/workspace", stranger).startswith("You are not a member of any workspace")
    assert say(demo, "/project", stranger) == "There are no projects in your workspaces yet."


def test_clear_forgets_the_selection(demo: Sessions) -> None:
    say(demo, "/project mobile")
    assert say(demo, "/clear") == "Session cleared: no workspace or project selected."
    assert demo.load(PHONE) == {}
    assert say(demo, "/status").endswith("Project: none - choose one with /project <name>")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("mobile", ["Mobile App"]),
        ("MOBILE APP", ["Mobile App"]),
        ("app", ["Mobile App"]),
        ("redesign", ["Website Redesign"]),
        ("m", ["Mobile App", "Marketing Site"]),
        ("markting", ["Marketing Site"]),
        ("mobile-app", ["Mobile App"]),
        ("xyz", []),
        ("sprint", []),
        ("site", ["Marketing Site"]),
        ("ebsite", []),
    ],
)
def test_best_matches(query: str, expected: list[str]) -> None:
    names = ["Website Redesign", "Mobile App", "Marketing Site"]
    assert sorted(best_matches(query, names, lambda n: n)) == sorted(expected)


def _many_projects(count: int, *, name_length: int = 40) -> None:
    with transaction() as conn:
        [workspace] = repo.workspaces_for_user(conn, DEMO_USER_ID)
        for index in range(count):
            name = f"Project {index:03d} " + "x" * (name_length - 12)
            conn.execute("INSERT INTO projects (workspace_id, name) VALUES (%s, %s)", (workspace.id, name))


def test_every_reply_fits_in_one_whatsapp_message(demo: Sessions) -> None:
    # Twilio refuses a body over 1,600 characters for good: a longer reply never reaches the user.
    _many_projects(60)
    say(demo, "/project mobile")
    with transaction() as conn:
        [mobile] = [p for p in repo.projects_for_user(conn, DEMO_USER_ID) if p.name == "Mobile App"]
        for index in range(25):
            conn.execute(
                "INSERT INTO tasks (project_id, title) VALUES (%s, %s)",
                (mobile.id, f"Task {index} " + "t" * 300),
            )

    replies = {
        text: say(demo, text)
        for text in ("/project", "/list tasks", "/workspace", "/project " + "q" * 4100, "/" + "d" * 4100)
    }

    for text, reply in replies.items():
        assert len(reply) <= 1600, (text[:20], len(reply))
    assert replies["/project"].count("• ") < 63
    assert replies["/project"].splitlines()[-3].startswith("…and ")
    assert replies["/project"].endswith("Switch with /project <name>.")
    assert replies["/list tasks"].startswith("Tasks in Mobile App:\n• ")
    assert replies["/list tasks"].endswith(" more")
    assert replies["/project " + "q" * 4100].startswith('No project matches "qqq')


def test_a_very_long_project_argument_is_answered_without_matching_every_name_for_seconds(
    demo: Sessions,
) -> None:
    _many_projects(300)
    reply = say(demo, "/project " + "mobile app " * 370)  # 4,070 characters, close to a few names

    assert reply.startswith('No project matches "mobile app mobile app')
    assert "project_id" not in demo.load(PHONE)


def test_workspaces_and_projects_of_the_same_name_are_told_apart_by_number(demo: Sessions) -> None:
    # Two workspaces called "Demo Workspace": no more of the name could ever choose one of them.
    with transaction() as conn:
        [first] = repo.workspaces_for_user(conn, DEMO_USER_ID)
        second = conn.execute(
            "INSERT INTO workspaces (name) VALUES (%s) RETURNING id", (first.name,)
        ).fetchone()["id"]
        conn.execute(
            "INSERT INTO workspace_members (workspace_id, user_id) VALUES (%s, %s)", (second, DEMO_USER_ID)
        )
        conn.execute("INSERT INTO projects (workspace_id, name) VALUES (%s, 'Mobile App')", (second,))

    listed = say(demo, "/workspace")
    assert "• Demo Workspace #1\n• Demo Workspace #2" in listed
    ambiguous = say(demo, "/workspace demo workspace")
    assert ambiguous.startswith('Several workspaces match "demo workspace":')
    assert "(/workspace Demo Workspace #2)" in ambiguous

    with transaction() as conn:
        workspaces = repo.workspaces_for_user(conn, DEMO_USER_ID)  # in the order the lists number them
    assert say(demo, "/workspace demo workspace #2").startswith("✅ Workspace: Demo Workspace")
    assert demo.load(PHONE)["workspace_id"] == str(workspaces[1].id)
    assert say(demo, "/workspace Demo Workspace # 1").startswith("✅ Workspace: Demo Workspace")
    assert demo.load(PHONE)["workspace_id"] == str(workspaces[0].id)

    say(demo, "/clear")
    assert say(demo, "/project mobile app").startswith('Several projects match "mobile app":')
    assert say(demo, "/project mobile app #2").startswith("✅ Project: Mobile App")
    with transaction() as conn:
        mobiles = [p for p in repo.projects_for_user(conn, DEMO_USER_ID) if p.name == "Mobile App"]
    assert demo.load(PHONE)["project_id"] == str(mobiles[1].id)
    say(demo, "/clear")
    no_third = say(demo, "/project mobile app #3")
    assert no_third.startswith('Several projects match "mobile app #3":')


def test_a_name_ending_in_a_number_is_not_taken_for_a_namesakes_number(demo: Sessions) -> None:
    with transaction() as conn:
        for name in ("Sprint", "Sprint", "Sprint 2"):
            workspace = conn.execute("INSERT INTO workspaces (name) VALUES (%s) RETURNING id", (name,))
            conn.execute(
                "INSERT INTO workspace_members (workspace_id, user_id) VALUES (%s, %s)",
                (workspace.fetchone()["id"], DEMO_USER_ID),
            )
        sprints = [ws for ws in repo.workspaces_for_user(conn, DEMO_USER_ID) if ws.name.startswith("Sprint")]

    assert say(demo, "/workspace sprint 2").startswith("✅ Workspace: Sprint 2")
    assert demo.load(PHONE)["workspace_id"] == str(sprints[2].id)
    assert say(demo, "/workspace sprint #2").startswith("✅ Workspace: Sprint\n")
    assert demo.load(PHONE)["workspace_id"] == str(sprints[1].id)
