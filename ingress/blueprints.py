"""The blueprints ``create_app`` registers, in order: ``"module:attribute"`` import paths.

Add yours with a one-line edit; a module is imported only when an app is created.
"""

from __future__ import annotations

BLUEPRINTS: list[str] = [
    "ingress.health:bp",
    "ingress.metrics:bp",
    "ingress.twilio:bp",
    "ingress.meta:bp",
    "ingress.kapso:bp",
    "ingress.api.links:bp",
    "ingress.api.conversations:bp",
    "ingress.api.stats:bp",
    "ingress.api.sessions:bp",
    "ingress.api.assistant_configs:bp",
    "ingress.api.messages:bp",
    "ingress.openapi:bp",
]
