"""Outbound policy checked before a message is sent: WhatsApp's 24-hour window.

WhatsApp lets a business send free-form messages only within 24 hours of the user's last message to it
(the customer service window); outside it only an approved template may open a conversation
(https://developers.facebook.com/docs/whatsapp/cloud-api/guides/send-messages#customer-service-windows,
Meta error 131047; Twilio error 63016). Sending anyway costs a provider call that is bound to fail, so the
notify stage refuses it first with a reason an operator can read. The console provider is not WhatsApp and
does not enforce the window, so local trials of the notify API just work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW = timedelta(hours=24)
# Providers that deliver over WhatsApp and so are bound by its window.
WINDOW_PROVIDERS = frozenset({"meta", "twilio", "kapso"})
# Types that may be sent outside the window: a template opens a conversation; that is what it is for.
ALWAYS_ALLOWED_TYPES = frozenset({"template"})

OUTSIDE_WINDOW = "outside_24h_window"


@dataclass(frozen=True)
class Refusal:
    """Why a message must not be sent; final (not retried). ``code`` is stored as the error code."""

    code: str
    message: str


def check_window(
    *, provider: str, message_type: str, last_inbound_at: datetime | None, now: datetime
) -> Refusal | None:
    """None when the message may be sent; a :class:`Refusal` when it falls outside the 24-hour window.

    ``now`` must come from the clock that stamped ``last_inbound_at``, the database's (read with the
    record): a worker's own clock running fast would refuse messages WhatsApp still accepts, and one
    running slow would send messages bound to fail.
    """
    if provider not in WINDOW_PROVIDERS or message_type in ALWAYS_ALLOWED_TYPES:
        return None
    if last_inbound_at is None:
        return Refusal(
            OUTSIDE_WINDOW,
            "the recipient has never written to us: outside WhatsApp's 24-hour window only a template"
            " can be sent",
        )
    if now - last_inbound_at > WINDOW:
        hours = int((now - last_inbound_at).total_seconds() // 3600)
        return Refusal(
            OUTSIDE_WINDOW,
            f"the recipient last wrote {hours} hours ago: outside WhatsApp's 24-hour window only a"
            " template can be sent",
        )
    return None
