"""Twilio: webhook signature checks (``signature.py``) and the outbound client (``client.py``).

https://www.twilio.com/docs/usage/webhooks/webhooks-security
"""
