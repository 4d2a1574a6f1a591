"""Proposals from free text: the pydantic model, the offline parser and the OpenAI-compatible parser.

``parse_proposal(text, today, settings)`` (in :mod:`shared.ai.openai_parser`) picks the backend.
"""
