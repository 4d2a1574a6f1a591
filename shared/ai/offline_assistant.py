"""The rule-based assistant: what answers when there is no model (no key) or the model keeps failing.

It still helps: it greets (English or Spanish), shows a menu of what the bot can do, and recognises a
request for a person (``talk to a person`` / ``hablar con una persona`` and their usual variants), which
hands the conversation to a human. Deterministic and free of I/O, so the worker decides what to store.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class Intent(StrEnum):
    greeting = "greeting"
    menu = "menu"
    handoff = "handoff"
    thanks = "thanks"
    other = "other"


@dataclass(frozen=True)
class OfflineReply:
    text: str
    intent: Intent
    language: str  # "en" | "es"

    @property
    def handoff(self) -> bool:
        return self.intent is Intent.handoff


def _fold(text: str) -> str:
    """Lower case, accents removed, punctuation as spaces: ``¡Hablar con UNA persona!`` -> ``hablar con una
    persona``, so the patterns below need no accents or case variants."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^\w\s]", " ", plain).split())


# Asking for a person: a verb of talking or reaching followed closely by a person, anywhere in the text...
_HANDOFF_PHRASE = re.compile(
    r"\b(?:talk|speak|chat|connect me|put me through|get me|transfer me)\b.{0,20}"
    r"\b(?:person|human|agent|someone|somebody|representative|operator|staff|real people)\b"
    r"|\b(?:hablar|comunicar(?:me)?|conversar|contactar|pas(?:a|as|ar|ame|eme|es)|ponme|transfiereme)\b"
    r".{0,25}"
    r"\b(?:persona|humano|agente|asesor|asesora|alguien|operador|operadora|representante)\b"
)
# ... or the person alone as the whole message ("human please", "un asesor"), not "are you human?".
_HANDOFF_WORD = re.compile(
    r"^(?:(?:a|an|un|una) )?(?:person|human|real person|agent|live agent|representative|operator|"
    r"persona|humano|persona real|agente|asesor|asesora|operador|operadora)(?: please| por favor)?$"
)
_GREETING_ES = re.compile(r"^(?:hola|buenas|buenos dias|buenas tardes|buenas noches|que tal|saludos)\b")
_GREETING_EN = re.compile(
    r"^(?:hi|hello|hey|hiya|howdy|good morning|good afternoon|good evening|greetings|yo)\b"
)
_MENU = re.compile(
    r"^(?:menu|help|ayuda|options|opciones|start over|inicio|what can you do|que puedes hacer|\?)$"
)
_THANKS = re.compile(r"^(?:thanks|thank you|thx|ty|gracias|muchas gracias|mil gracias)\b")
# Enough Spanish markers to answer in Spanish; English otherwise.
_SPANISH = re.compile(
    r"\b(?:hola|buenas|buenos|gracias|ayuda|quiero|necesito|puedes|por favor|hablar|persona|que|como|"
    r"donde|cuando|tengo|estoy|usted|opciones|no se)\b"
)
_SPANISH_CHARS = re.compile(r"[ñ¿¡áéíóú]")

TEXTS: dict[str, dict[Intent | str, str]] = {
    "en": {
        Intent.greeting: "👋 Hi{name}! I'm the automated assistant.",
        Intent.thanks: "😊 You're welcome!",
        Intent.other: "🤖 I can't answer that myself right now.",
        Intent.handoff: (
            "👤 OK, I'm handing this conversation to a person from our team. They'll reply here as soon "
            "as they can; I won't answer automatically meanwhile."
        ),
        "menu": (
            "Here's what I can do:\n"
            "• Send *menu* to see these options again\n"
            "• Send *talk to a person* to reach someone from our team\n"
            "• Send *STOP* to stop receiving messages"
        ),
    },
    "es": {
        Intent.greeting: "👋 ¡Hola{name}! Soy el asistente automático.",
        Intent.thanks: "😊 ¡Con gusto!",
        Intent.other: "🤖 Ahora mismo no puedo responder eso por mi cuenta.",
        Intent.handoff: (
            "👤 De acuerdo, paso esta conversación a una persona de nuestro equipo. Te responderá aquí lo "
            "antes posible; mientras tanto no contestaré automáticamente."
        ),
        "menu": (
            "Esto es lo que puedo hacer:\n"
            "• Envía *menú* para ver estas opciones otra vez\n"
            "• Envía *hablar con una persona* para contactar a alguien de nuestro equipo\n"
            "• Envía *BAJA* para dejar de recibir mensajes"
        ),
    },
}


def language_of(text: str) -> str:
    """``es`` when the text reads as Spanish, else ``en``."""
    return "es" if _SPANISH_CHARS.search(text.lower()) or _SPANISH.search(_fold(text)) else "en"


def intent_of(text: str) -> Intent:
    folded = _fold(text)
    stripped = text.strip()
    if _HANDOFF_PHRASE.search(folded) or _HANDOFF_WORD.match(folded):
        return Intent.handoff
    if _MENU.match(folded) or stripped in {"?", "0"}:
        return Intent.menu
    if _GREETING_EN.match(folded) or _GREETING_ES.match(folded):
        return Intent.greeting
    if _THANKS.match(folded):
        return Intent.thanks
    return Intent.other


def is_handoff_request(text: str) -> bool:
    """Whether the user asks for a person; honoured with or without a model (a model cannot hand off)."""
    return intent_of(text) is Intent.handoff


def offline_reply(text: str, profile_name: str | None = None) -> OfflineReply:
    """The rule-based answer to ``text``: greeting + menu, the menu, a handoff confirmation, or a short
    "I can't answer that" + menu, in the user's language."""
    intent = intent_of(text)
    language = language_of(text)
    texts = TEXTS[language]
    if intent is Intent.handoff:
        return OfflineReply(texts[Intent.handoff], intent, language)
    if intent is Intent.menu:
        return OfflineReply(texts["menu"], intent, language)
    first_name = (profile_name or "").split()[0] if (profile_name or "").strip() else ""
    opening = texts[intent].format(name=f" {first_name}" if first_name else "")
    return OfflineReply(f"{opening}\n\n{texts['menu']}", intent, language)
