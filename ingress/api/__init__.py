"""The REST API internal services call (``/api/v1/...``), one blueprint per area, each behind an API key.

- ``links.py``: link a host-application user to a WhatsApp number with a one-time code.
- ``conversations.py``: list conversations, read one's history, close one (ends a handoff).
- ``stats.py``: activity figures overall, per provider and per business number.
- ``sessions.py``: inspect (masked) and clear chat sessions.
- ``assistant_configs.py``: the AI assistant's prompt, model and limits per business number.
- ``common.py``: query parameters (422 naming the parameter) and keyset pagination.
"""
