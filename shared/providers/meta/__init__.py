"""Meta WhatsApp Cloud API: webhook signature check (``signature.py``) and, later, the Graph API sender."""
