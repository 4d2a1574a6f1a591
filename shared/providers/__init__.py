"""Outbound providers behind one Protocol (:class:`~shared.providers.base.Sender`), picked by settings.

``WAPIPE_PROVIDER`` chooses (console, twilio, meta, kapso); unset, the provider whose credentials are
present is used, else the console provider, so the default setup sends "for real" to the terminal.
Each provider's sender lives in its package as ``client.py`` and takes the settings.
"""

from __future__ import annotations

import importlib

from shared.providers import base
from shared.providers.base import OutboundMessage, Sender, SendError, SendResult
from shared.settings import ProviderName, Settings, get_settings

__all__ = [
    "OutboundMessage",
    "SendError",
    "SendResult",
    "Sender",
    "check",
    "get_sender",
    "supports",
    "text_max",
]

# provider -> "module:class"; each class is constructed with the settings.
_SENDERS: dict[ProviderName, str] = {
    ProviderName.twilio: "shared.providers.twilio.client:TwilioSender",
    ProviderName.meta: "shared.providers.meta.client:MetaSender",
    ProviderName.kapso: "shared.providers.kapso.client:KapsoSender",
}


def supports(kind: str, settings: Settings | None = None) -> bool:
    """Whether the configured provider can send messages of type ``kind`` (without constructing a sender)."""
    return base.supports(_sender_class(settings or get_settings()), kind)


def text_max(settings: Settings | None = None) -> int:
    """The longest plain text the configured provider sends in one message (Twilio 1,600, WhatsApp 4,096)."""
    return base.text_max(_sender_class(settings or get_settings()))


def _sender_class(settings: Settings) -> type:
    provider = settings.active_provider
    if provider is ProviderName.console:
        from shared.providers.console import ConsoleSender

        return ConsoleSender
    module_name, _, class_name = _SENDERS[provider].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def check(message: OutboundMessage, settings: Settings | None = None) -> None:
    """Raise a permanent :class:`SendError` when the configured provider cannot send ``message`` as given
    (a field it cannot carry, a template it cannot name), asking its sender class's optional
    ``check(message, settings)`` without constructing a sender. The error may name the field (``.field``).
    """
    settings = settings or get_settings()
    provider = settings.active_provider
    if provider is ProviderName.console:
        return
    module_name, _, class_name = _SENDERS[provider].partition(":")
    sender_check = getattr(getattr(importlib.import_module(module_name), class_name), "check", None)
    if sender_check is not None:
        sender_check(message, settings)


def get_sender(settings: Settings | None = None) -> Sender:
    """A new sender for the configured provider (make one per process and reuse it)."""
    settings = settings or get_settings()
    provider = settings.active_provider
    if provider is ProviderName.console:
        import redis

        from shared.providers.console import ConsoleSender

        if not settings.redis_url:
            raise RuntimeError("the console provider publishes on Redis: set WAPIPE_REDIS_URL")
        return ConsoleSender(redis.Redis.from_url(settings.redis_url, socket_timeout=5))
    module_name, _, class_name = _SENDERS[provider].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"WAPIPE_PROVIDER={provider}: outbound sending is not available") from exc
    return getattr(module, class_name)(settings)
