"""The notify API's request body (``POST /api/v1/messages``), validated against WhatsApp's limits.

Every limit is checked here, before anything is stored or sent, so a caller learns at once (a 422 naming
the field) what WhatsApp would have refused later. A valid request maps onto the one outbound model every
provider speaks (:class:`shared.providers.base.OutboundMessage`) through :meth:`SendRequest.stored`.

Limits (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages,
https://developers.facebook.com/docs/whatsapp/cloud-api/messages/interactive-reply-buttons-messages,
https://developers.facebook.com/docs/whatsapp/cloud-api/messages/interactive-list-messages):
text body 4096 characters; media caption 1024; interactive body 1024, header and footer 60; reply buttons
1 to 3, titles 20, ids 256 and unique; lists: the opening button 20, up to 10 sections and 10 rows in all,
row title 24, description 72, id 200 and unique, section title 24 (required when there are several).
Media go by https URL only (WhatsApp fetches them; a plain-http or local URL would leak or fail).
These constants are the one definition of those limits: the Meta sender (shared/providers/meta/client.py)
and the flow packs and engine (shared/flows/) import them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from shared.providers import base
from shared.wire.events import has_lone_surrogate

TEXT_MAX = 4096
CAPTION_MAX = 1024
INTERACTIVE_BODY_MAX = 1024
HEADER_MAX = 60
FOOTER_MAX = 60
BUTTONS_MAX = 3
BUTTON_TITLE_MAX = 20
BUTTON_ID_MAX = 256
LIST_BUTTON_MAX = 20
SECTIONS_MAX = 10
ROWS_MAX = 10
ROW_TITLE_MAX = 24
ROW_DESCRIPTION_MAX = 72
ROW_ID_MAX = 200
SECTION_TITLE_MAX = 24
FILENAME_MAX = 240
URL_MAX = 2048
IDEMPOTENCY_KEY_MAX = 200

MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
# Template names are lower case letters, digits and underscores; languages are codes like es, en_US.
TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
TEMPLATE_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")


def _storable(value: str) -> str:
    # PostgreSQL text and jsonb cannot hold U+0000, and UTF-8 cannot encode a lone surrogate half; JSON
    # lets a body carry either (\u0000, \ud800). Refused here as a 422 naming the field, not a 500 when
    # the request is hashed or the message stored.
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain the NUL character (\\u0000)")
    if has_lone_surrogate(value):
        raise PydanticCustomError(
            "lone_surrogate", "must be valid Unicode text (it contains a lone surrogate such as \\ud800)"
        )
    return value


Storable = AfterValidator(_storable)


def _text(limit: int, *, what: str = "text") -> Any:
    """A non-blank string of at most ``limit`` characters, with an error that says both numbers."""

    def check(value: str) -> str:
        _storable(value)
        if not value.strip():
            raise PydanticCustomError("blank", f"{what} must not be blank")
        if len(value) > limit:
            raise PydanticCustomError(
                "too_long",
                "at most {limit} characters (WhatsApp's limit); this one has {length}",
                {"limit": limit, "length": len(value)},
            )
        return value

    return AfterValidator(check)


def _https(value: str) -> str:
    _storable(value)
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise PydanticCustomError("https_only", "must be an https:// URL WhatsApp can fetch")
    if len(value) > URL_MAX:
        raise PydanticCustomError("too_long", f"at most {URL_MAX} characters")
    return value


def _emoji(value: str) -> str:
    # One emoji, possibly a ZWJ sequence with modifiers: short, and no letters, digits or spaces.
    _storable(value)
    if not value or len(value) > 16 or any(ch.isascii() for ch in value):
        raise PydanticCustomError("not_emoji", "must be a single emoji")
    return value


class _Strict(BaseModel):
    # Unknown fields are refused: a misspelt "captoin" would otherwise be silently dropped.
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


def _fail(field: str, kind: str, message: str) -> PydanticCustomError:
    """A model-level error that still names its field: ``error_location`` appends ``field``."""
    return PydanticCustomError(kind, message, {"field": field})


class MediaIn(_Strict):
    kind: Literal["image", "video", "audio", "document", "sticker"] | None = None
    url: Annotated[str, AfterValidator(_https)]
    caption: Annotated[str, _text(CAPTION_MAX, what="caption")] | None = None
    filename: Annotated[str, _text(FILENAME_MAX, what="filename")] | None = None


class ButtonIn(_Strict):
    id: Annotated[str, _text(BUTTON_ID_MAX, what="id")]
    title: Annotated[str, _text(BUTTON_TITLE_MAX, what="title")]


class RowIn(_Strict):
    id: Annotated[str, _text(ROW_ID_MAX, what="id")]
    title: Annotated[str, _text(ROW_TITLE_MAX, what="title")]
    description: Annotated[str, _text(ROW_DESCRIPTION_MAX, what="description")] | None = None


class SectionIn(_Strict):
    title: Annotated[str, _text(SECTION_TITLE_MAX, what="title")] | None = None
    rows: list[RowIn] = Field(min_length=1, max_length=ROWS_MAX)


class InteractiveIn(_Strict):
    """Reply buttons (``kind: buttons``) or a list (``kind: list``)."""

    kind: Literal["buttons", "list"]
    body: Annotated[str, _text(INTERACTIVE_BODY_MAX, what="body")]
    header: Annotated[str, _text(HEADER_MAX, what="header")] | None = None
    footer: Annotated[str, _text(FOOTER_MAX, what="footer")] | None = None
    buttons: list[ButtonIn] | None = None
    button_text: Annotated[str, _text(LIST_BUTTON_MAX, what="button_text")] | None = None
    sections: list[SectionIn] | None = Field(default=None, max_length=SECTIONS_MAX)

    @model_validator(mode="after")
    def _shape(self) -> InteractiveIn:
        if self.kind == "buttons":
            if self.sections is not None:
                raise _fail("sections", "not_allowed", "lists have sections; reply buttons do not")
            if self.button_text is not None:
                raise _fail("button_text", "not_allowed", "lists have a button_text; reply buttons do not")
            buttons = self.buttons or []
            if not 1 <= len(buttons) <= BUTTONS_MAX:
                raise _fail(
                    "buttons", "button_count", f"reply buttons must be 1 to {BUTTONS_MAX}; got {len(buttons)}"
                )
            _unique([b.id for b in buttons], "buttons", "button")
            _unique([b.title for b in buttons], "buttons", "button title")
            return self
        if self.buttons is not None:
            raise _fail("buttons", "not_allowed", "reply buttons have buttons; lists have sections")
        sections = self.sections or []
        if not sections:
            raise _fail("sections", "required", "a list needs at least one section with rows")
        rows = [row for section in sections for row in section.rows]
        if len(rows) > ROWS_MAX:
            raise _fail(
                "sections", "row_count", f"a list has at most {ROWS_MAX} rows in all; got {len(rows)}"
            )
        if len(sections) > 1 and any(section.title is None for section in sections):
            raise _fail("sections", "required", "each section needs a title when there are several")
        _unique([row.id for row in rows], "sections", "row")
        return self


def _unique(values: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise _fail(
                where,
                "duplicate",
                f"{what} id {value!r} appears twice"
                if what != "button title"
                else f"button title {value!r} appears twice",
            )
        seen.add(value)


def _variable(value: str) -> str:
    _storable(value)
    if not value.strip():
        raise PydanticCustomError("blank", "template variables must not be blank (WhatsApp refuses them)")
    if len(value) > TEXT_MAX:
        raise PydanticCustomError("too_long", f"at most {TEXT_MAX} characters")
    return value


def _variable_name(value: str) -> str:
    # Names are stored in the payload (jsonb) as much as values are, so the same text is refused. The
    # error's field is the variables object, not the name (see error_location): a client is not handed
    # its NUL or lone surrogate back.
    try:
        return _storable(value)
    except PydanticCustomError as exc:
        raise PydanticCustomError(exc.type, f"a variable name {exc.message()}") from None


Variable = Annotated[str, AfterValidator(_variable)]
VariableName = Annotated[str, AfterValidator(_variable_name)]


def _matches(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise PydanticCustomError("invalid", f"must be {what}")
        return value

    return AfterValidator(check)


class TemplateIn(_Strict):
    name: Annotated[str, _matches(TEMPLATE_NAME, "an approved template's name (a-z, 0-9 and _)")]
    language: Annotated[str, _matches(TEMPLATE_LANGUAGE, "a template language code such as es or en_US")]
    variables: list[Variable] | dict[VariableName, Variable] = Field(default_factory=list)
    content_sid: Annotated[str, _matches(CONTENT_SID, "a Twilio Content SID (HX + 32 hex digits)")] | None = (
        None
    )


class ReactionIn(_Strict):
    message_id: Annotated[str, _text(256, what="message_id")]
    emoji: Annotated[str, AfterValidator(_emoji)]


ApiType = Literal[
    "text", "media", "interactive", "template", "reaction", "image", "video", "audio", "document", "sticker"
]


class SendRequest(_Strict):
    """``{to, type, text | media | interactive | template | reaction, idempotency_key?}``.

    ``type`` may also name a media kind (``image``, ``document``...) as a shorthand for ``media`` with
    that ``media.kind``. ``to`` is validated here as text only; the API normalises it to E.164 with the
    configured region.
    """

    to: Annotated[str, Field(min_length=1, max_length=64)]
    type: ApiType = "text"
    text: Annotated[str, _text(TEXT_MAX, what="text")] | None = None
    media: MediaIn | None = None
    interactive: InteractiveIn | None = None
    template: TemplateIn | None = None
    reaction: ReactionIn | None = None
    idempotency_key: Annotated[str, Field(min_length=1, max_length=IDEMPOTENCY_KEY_MAX), Storable] | None = (
        None
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_text_object(cls, data: Any) -> Any:
        # Meta's own shape, {"text": {"body": "..."}}, is accepted too.
        if isinstance(data, dict) and isinstance(data.get("text"), dict) and set(data["text"]) == {"body"}:
            data = {**data, "text": data["text"]["body"]}
        return data

    @model_validator(mode="after")
    def _content_matches_type(self) -> SendRequest:
        kind = self.outbound_type.value
        if self.type in MEDIA_KINDS and self.media is not None and self.media.kind not in (None, self.type):
            raise _fail("media.kind", "mismatch", f"{self.media.kind} does not match type {self.type}")
        for field in ("text", "media", "interactive", "template", "reaction"):
            present = getattr(self, field) is not None
            if field == kind and not present:
                raise _fail(field, "required", f"required for type {self.type}")
            if field != kind and present:
                raise _fail(field, "not_allowed", f"not allowed with type {self.type}")
        if self.media is not None:
            if self.media_kind is None:
                raise _fail("media.kind", "required", f"one of {', '.join(MEDIA_KINDS)}")
            if self.media.caption is not None and self.media_kind in ("audio", "sticker"):
                raise _fail(
                    "media.caption", "not_allowed", f"WhatsApp sends no caption with {self.media_kind}"
                )
            if self.media.filename is not None and self.media_kind != "document":
                raise _fail("media.filename", "not_allowed", "only documents have a filename")
        return self

    @property
    def outbound_type(self) -> base.OutboundType:
        return base.OutboundType.media if self.type in MEDIA_KINDS else base.OutboundType(self.type)

    @property
    def media_kind(self) -> str | None:
        if self.type in MEDIA_KINDS:
            return self.type
        return self.media.kind if self.media is not None else None

    def content(self) -> dict[str, Any]:
        """The typed content in the provider model's shape (``OutboundMessage`` field of the same name)."""
        kind = self.outbound_type
        if kind is base.OutboundType.text:
            return {}
        if kind is base.OutboundType.media:
            assert self.media is not None
            media = base.Media(
                kind=self.media_kind,  # type: ignore[arg-type]
                url=self.media.url,
                caption=self.media.caption,
                filename=self.media.filename,
            )
            return {"media": media.model_dump(mode="json", exclude_none=True)}
        if kind is base.OutboundType.interactive:
            assert self.interactive is not None
            spec = self.interactive
            interactive = base.Interactive(
                kind=spec.kind,
                body=spec.body,
                header=spec.header,
                footer=spec.footer,
                buttons=[base.Button(id=b.id, title=b.title) for b in spec.buttons or []],
                button_text=spec.button_text,
                sections=[
                    base.ListSection(
                        title=s.title,
                        rows=[
                            base.ListRow(id=r.id, title=r.title, description=r.description) for r in s.rows
                        ],
                    )
                    for s in spec.sections or []
                ],
            )
            return {"interactive": interactive.model_dump(mode="json", exclude_none=True)}
        if kind is base.OutboundType.template:
            assert self.template is not None
            template = base.Template(
                name=self.template.name,
                language=self.template.language,
                variables=self.template.variables,
                content_sid=self.template.content_sid,
            )
            return {"template": template.model_dump(mode="json", exclude_none=True)}
        assert self.reaction is not None
        reaction = base.Reaction(message_id=self.reaction.message_id, emoji=self.reaction.emoji)
        return {"reaction": reaction.model_dump(mode="json")}

    def stored(self) -> tuple[str, str | None, dict[str, Any]]:
        """``(type, body, payload)`` for the messages row, as ``OutboundMessage.from_record`` reads it.

        ``body`` is the plain text a person reads: the text, the caption, an interactive message with its
        options numbered (what a provider without interactive messages sends), the reaction's emoji.
        """
        kind = self.outbound_type.value
        content = self.content()
        payload = {"type": kind, **content} if content else {}
        return kind, self._plain_text(), payload

    def _plain_text(self) -> str | None:
        kind = self.outbound_type
        if kind is base.OutboundType.text:
            return self.text
        if kind is base.OutboundType.media:
            return self.media.caption if self.media else None
        if kind is base.OutboundType.interactive and self.interactive is not None:
            spec = self.interactive
            titles = [b.title for b in spec.buttons or []] + [
                r.title for s in spec.sections or [] for r in s.rows
            ]
            lines = [line for line in (spec.header, spec.body) if line]
            lines += [f"{n}. {title}" for n, title in enumerate(titles, 1)]
            if spec.footer:
                lines.append(spec.footer)
            return "\n".join(lines)
        if kind is base.OutboundType.reaction and self.reaction is not None:
            return self.reaction.emoji
        return None

    def request_hash(self, to: str) -> str:
        """A hash of the canonical request (E.164 recipient, type and content; not the idempotency key).

        Two bodies that mean the same message (``"310 305 5424"`` and ``"+573103055424"``, ``type: image``
        and ``type: media`` with ``kind: image``, keys in another order) hash the same.
        """
        kind, body, payload = self.stored()
        canonical = {"to": to, "type": kind, "body": body, "payload": payload}
        data = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(data.encode("utf-8")).hexdigest()


class LegacyNotifyRequest(BaseModel):
    """``POST /api/whatsapp/notify``: ``{to, message}``, a text message, kept for existing callers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    to: Annotated[str, Field(min_length=1, max_length=64)]
    message: Annotated[str, _text(TEXT_MAX, what="message")]


def error_location(loc: tuple[int | str, ...], ctx: dict[str, Any] | None = None) -> str:
    """``("interactive", "buttons", 1, "title")`` -> ``interactive.buttons[1].title``.

    A model-level error names its field in its context (:func:`_fail`); it is appended to the location.
    An error in a dict key (``(..., "variables", "dict[...]", "a\\x00", "[key]")``) names the dict: the
    key is the bad text itself.
    """
    extra = (ctx or {}).get("field")
    parts = list(loc) + (str(extra).split(".") if extra else [])
    out = ""
    for index, part in enumerate(parts):
        if parts[index + 1 : index + 2] == ["[key]"]:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            part in ("str", "list[...]", "dict[str,...]") or "[" in str(part) or "function-after" in str(part)
        ):
            continue  # pydantic's names for union branches, not fields
        else:
            out += f".{part}" if out else str(part)
    return out
