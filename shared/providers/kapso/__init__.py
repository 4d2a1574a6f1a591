"""Kapso (a WhatsApp BSP over the Cloud API): webhook signature check (``signature.py``)."""
