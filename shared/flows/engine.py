"""The flow engine: given a user's flow state and their answer, the new state and what to reply.

Deterministic apart from the registered lookups and actions it calls (which read and write the database
through the context). The caller loads and saves the state (a session key) and sends the reply; see
:mod:`shared.flows.service`.

State (JSON, kept in the session under ``flow``)::

    {"pack": "shopfloor", "flow": "report_defect" | None, "step": 1,
     "answers": {"order_number": "ORD-12345"}, "found": {"customer": "..."}}

Every reply has a plain-text body that works everywhere (numbered options) and, where choices are
offered, an interactive payload (``{"type": "interactive", "interactive": {"kind": "list", ...}}``,
the shape of :class:`shared.providers.base.Interactive`, ``kind`` "list" or "buttons") that providers
supporting it (Meta, Kapso) send as a list or reply buttons; their tapped ids come back as answers.
A reply whose body, once rendered, is longer than WhatsApp takes in an interactive message has no
payload: it goes as its plain text, whose numbered options are answered by typing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.flows import registry
from shared.flows.pack import Flow, Pack, Step, render
from shared.flows.registry import FlowContext, Rejected
from shared.flows.validators import Answer, Invalid, allowed, choice_id, match_choice, numbered, validate
from shared.flows.words import keyword
from shared.wire.outbound_api import BUTTON_TITLE_MAX, BUTTONS_MAX, INTERACTIVE_BODY_MAX

MENU_ID_PREFIX = "menu:"


@dataclass(frozen=True)
class Outcome:
    """The result of one answer: the state to save, the text to send, and the optional interactive form."""

    state: dict[str, Any]
    text: str
    payload: dict[str, Any] | None = None


def idle(pack: Pack) -> dict[str, Any]:
    return {"pack": pack.name, "flow": None}


def menu_text(pack: Pack, preface: str | None = None) -> Outcome:
    """The numbered menu, also as an interactive list."""
    head = "\n".join(part for part in (preface, pack.pack.menu_prompt) if part)
    numbered = "\n".join(f"{number}. {flow.title}" for number, flow in enumerate(pack.flows, start=1))
    rows = []
    for flow in pack.flows:
        row = {"id": MENU_ID_PREFIX + flow.id, "title": flow.title}
        if flow.description:
            row["description"] = flow.description
        rows.append(row)
    return Outcome(idle(pack), f"{head}\n{numbered}", _list(head, pack.pack.menu_button, rows))


def timed_out(
    pack: Pack,
    form: Mapping[str, Any],
    *,
    minutes: int,
    answer: Answer | None = None,
    ctx: FlowContext | None = None,
) -> Outcome:
    """The pack's notice that ``form`` (its ``title``) timed out, then the menu.

    The answer that came after it was meant for a question no longer asked, so it is not read as a menu
    choice: a "2" for the form's second choice must not start the menu's option 2, nor a typed label a
    flow of the same title. A menu word ("hi", "menu") or a cancel word gets the menu all the same. Only a
    row tapped in a menu list (its id ``menu:<flow>``, which no form question sends) is unambiguous: that
    flow starts, after the notice, with no second tap needed.
    """
    unit = pack.pack.minutes_one if minutes == 1 else pack.pack.minutes_many
    values = {"flow_title": form.get("title") or "", "minutes": minutes}
    notice = render(pack.pack.form_timed_out, {**values, "duration": render(unit, values)})
    picked = _tapped_flow(pack, answer) if answer is not None and ctx is not None else None
    if picked is None:
        return menu_text(pack, preface=notice)
    assert ctx is not None
    started = _start(pack, picked, _in_words_of(pack, ctx))
    return Outcome(started.state, f"{notice}\n\n{started.text}", _prefaced(started.payload, notice))


def _tapped_flow(pack: Pack, answer: Answer) -> Flow | None:
    """The flow of the menu row the answer tapped, if it is one."""
    if not (answer.reply_id and answer.reply_id.startswith(MENU_ID_PREFIX)):
        return None
    return _picked_flow(pack, Answer("", answer.reply_id))


def _prefaced(payload: dict[str, Any] | None, preface: str) -> dict[str, Any] | None:
    """The interactive ``payload`` with ``preface`` before its body, as its plain text has it."""
    if payload is None:
        return None
    interactive = payload["interactive"]
    return _interactive({**interactive, "body": f"{preface}\n\n{interactive['body']}"})


def _in_words_of(pack: Pack, ctx: FlowContext) -> FlowContext:
    """``ctx`` with the pack's texts, which the lookups and actions answer in."""
    return dataclasses.replace(ctx, texts=pack.pack)


def _interactive(interactive: dict[str, Any]) -> dict[str, Any] | None:
    """The payload of a reply sent as ``interactive`` (the shape of shared.providers.base.Interactive), or
    None when its body is longer than WhatsApp takes in one.

    A prompt fits at load, but rendered it may not: the answers and lookups filled in, the flow's title, a
    notice or an error text put before it. The Meta sender refuses such a body for good (body_too_long),
    and the user would get nothing, the form stuck. Sent as its plain text, its options are numbered, and
    a typed number or label answers as a tap would.
    """
    if len(interactive["body"]) > INTERACTIVE_BODY_MAX:
        return None
    return {"type": "interactive", "interactive": interactive}


def _list(body: str, button: str, rows: list[dict[str, str]]) -> dict[str, Any] | None:
    return _interactive({"kind": "list", "body": body, "button_text": button, "sections": [{"rows": rows}]})


def _choice_payload(step: Step, body: str, button: str) -> dict[str, Any] | None:
    options = [{"id": choice_id(step.name, n), "title": label} for n, label in enumerate(step.choices, 1)]
    if len(options) <= BUTTONS_MAX and all(len(label) <= BUTTON_TITLE_MAX for label in step.choices):
        return _interactive({"kind": "buttons", "body": body, "buttons": options})
    return _list(body, button, options)


def _ask(pack: Pack, flow: Flow, state: dict[str, Any], header: str | None = None) -> Outcome:
    """Prompt for the state's current step."""
    step = flow.steps[state["step"]]
    prompt = render(step.prompt, {**state["answers"], **state["found"], "flow_title": flow.title})
    body = "\n".join(part for part in (header, prompt) if part)
    payload = None
    text = body
    if step.kind == "choice":
        text = f"{body}\n{numbered(step.choices)}"
        payload = _choice_payload(step, body, pack.pack.menu_button)
    return Outcome(state, f"{text}\n{pack.pack.cancel_hint}", payload)


def _reprompt(pack: Pack, flow: Flow, state: dict[str, Any], problem: str) -> Outcome:
    step = flow.steps[state["step"]]
    payload = _choice_payload(step, problem, pack.pack.menu_button) if step.kind == "choice" else None
    return Outcome(state, f"⚠️ {problem}\n{pack.pack.cancel_hint}", payload)


def _start(pack: Pack, flow: Flow, ctx: FlowContext) -> Outcome:
    state = {"pack": pack.name, "flow": flow.id, "step": 0, "answers": {}, "found": {}}
    if not flow.steps:
        return _finish(pack, flow, state, ctx)
    return _ask(pack, flow, state, header=f"*{flow.title}*")


def _finish(pack: Pack, flow: Flow, state: dict[str, Any], ctx: FlowContext) -> Outcome:
    action = flow.action
    registered = registry.ACTIONS[action.name]
    values = registered.fn(dataclasses.replace(ctx, flow=flow.id), dict(state["answers"]), action.options)
    reply = action.reply
    if action.reply_empty is not None and registered.counts and not values.get(registered.counts):
        reply = action.reply_empty
    text = render(reply, {**state["answers"], **state["found"], **values, "flow_title": flow.title})
    return Outcome(idle(pack), text)


def _picked_flow(pack: Pack, answer: Answer) -> Flow | None:
    ids = [MENU_ID_PREFIX + flow.id for flow in pack.flows]
    index = match_choice([flow.title for flow in pack.flows], answer, ids, pack.pack.number_words)
    return pack.flows[index] if index is not None else None


def _not_an_answer(pack: Pack, answer: Answer) -> str | None:
    """Why a message with no text of its own answers no question (a location, a submitted WhatsApp
    Flow, media without a caption, a shared contact or any other kind of message with no text nor tap),
    in the pack's words ("" when it has none for it); None for one that may."""
    if answer.location:
        return render(pack.pack.location_not_an_answer, {})
    if answer.flow_reply:
        return render(pack.pack.flow_reply_not_an_answer, {})
    if answer.media and not answer.clean:
        # Read as its empty text it would pass for an optional answer, the user's photo dropped unsaid.
        # A caption is the user's words about it: that is the answer.
        return _notice(pack, "media_not_an_answer")
    if not answer.text_message and not answer.clean and not answer.reply_id:
        # A shared contact card, an order sent without a note, a tap that did not parse: as its empty text
        # it too would pass for an optional answer. Only a text message can be an empty one.
        return _notice(pack, "no_text_not_an_answer")
    return None


def _notice(pack: Pack, key: str) -> str:
    """The pack's text ``key``, or none for a pack in its own words written before it (Meta.left_english):
    what the step takes, in those words, is told alone, not after an English sentence."""
    return "" if pack.pack.left_english(key) else render(getattr(pack.pack, key), {})


def advance(pack: Pack, state: Mapping[str, Any] | None, answer: Answer, ctx: FlowContext) -> Outcome:
    """Apply one answer to the state: start a flow, take a form's answer, finish it, or show the menu."""
    state = dict(state or {})
    ctx = _in_words_of(pack, ctx)
    folded = keyword(answer.text)
    flow = pack.flow(state.get("flow") or "") if state.get("pack") == pack.name else None

    if flow is None or state.get("step", 0) >= len(flow.steps):
        picked = _picked_flow(pack, answer)
        if picked is not None:
            return _start(pack, picked, ctx)
        if not state or folded in pack.pack.menu_words or folded in pack.pack.cancel_words:
            return menu_text(pack, preface=pack.pack.greeting)
        return menu_text(pack, preface=render(pack.pack.not_understood, {}))

    if folded in pack.pack.cancel_words:
        return menu_text(pack, preface=render(pack.pack.cancelled, {"flow_title": flow.title}))
    # A tap on an earlier menu message switches to that flow, as the user evidently wants.
    picked = _tapped_flow(pack, answer)
    if picked is not None:
        return _start(pack, picked, ctx)

    step = flow.steps[state["step"]]
    notice = _not_an_answer(pack, answer)
    if notice is not None:
        return _reprompt(
            pack, flow, state, " ".join(part for part in (notice, allowed(step, pack.pack)) if part)
        )
    try:
        value = validate(step, answer, pack.pack)
    except Invalid as problem:
        return _reprompt(pack, flow, state, problem.message)
    found: dict[str, Any] = {}
    if step.lookup:
        try:
            found = dict(registry.LOOKUPS[step.lookup].fn(ctx, value, dict(state["answers"])))
        except Rejected as rejected:
            # The lookup's words say why the answer was refused, not what to send: a choice's choices
            # follow them, as they follow a wrong choice's (allowed).
            problem = (
                f"{rejected.message}\n{numbered(step.choices)}" if step.kind == "choice" else rejected.message
            )
            return _reprompt(pack, flow, state, problem)
    state = {
        **state,
        "answers": {**state["answers"], step.name: value},
        "found": {**state["found"], **found},
        "step": state["step"] + 1,
    }
    if state["step"] < len(flow.steps):
        return _ask(pack, flow, state)
    return _finish(pack, flow, state, dataclasses.replace(ctx, flow=flow.id))


__all__ = ["Answer", "Outcome", "advance", "allowed", "menu_text", "render", "timed_out"]
