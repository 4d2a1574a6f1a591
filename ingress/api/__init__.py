"""The REST API internal services call (``/api/v1/...``), one blueprint per area, each behind an API key.

- ``links.py``: link a host-application user to a WhatsApp number with a one-time code.
"""
