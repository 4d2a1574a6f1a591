"""The web process: provider webhooks in, canonical events onto the queues, and the REST API.

``create_app`` is the application factory gunicorn runs (``gunicorn -c python:ingress.gunicorn_conf
'ingress:create_app()'``). It reads the settings once, and nothing it creates connects anywhere until a
request needs it, so creating the app never fails because Redis or PostgreSQL is down.

This module imports nothing at load time: gunicorn imports this package to reach ``gunicorn_conf``, and
prometheus_client must not be imported before that config has set ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Blueprint, Flask

    from shared.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    from flask import Flask

    from ingress import auth, errors, metrics
    from ingress.auth import KEYS_KEY, api_keys_from
    from ingress.blueprints import BLUEPRINTS
    from ingress.json_body import BoundedJSONProvider
    from ingress.state import PUBLISHER_KEY, SETTINGS_KEY
    from shared.logging import configure_logging, get_logger
    from shared.queues import Publisher
    from shared.settings import get_settings

    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.insecure_skip_signatures:
        get_logger(__name__).critical(
            "!!! WEBHOOK SIGNATURE CHECKS ARE OFF (WAPIPE_INSECURE_SKIP_SIGNATURES=true): anyone who can"
            " reach this server can forge provider webhooks. Never run like this in production. !!!"
        )

    # No static folder: the ingress serves JSON and TwiML only.
    app = Flask(__name__, static_folder=None)
    app.json = BoundedJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions[SETTINGS_KEY] = settings
    # redis-py connects on first command, so this opens no socket; one pool per process, reused.
    app.extensions[PUBLISHER_KEY] = Publisher(settings.redis_url) if settings.redis_url else None
    app.extensions[KEYS_KEY] = api_keys_from(settings.api_keys)

    errors.register(app)
    metrics.register(app)
    auth.register(app)
    for path in dict.fromkeys(BLUEPRINTS):  # a line added twice by two edits registers once
        app.register_blueprint(_load(path))
    return app


def _load(path: str) -> Blueprint:
    module_name, _, attribute = path.partition(":")
    blueprint: Any = getattr(importlib.import_module(module_name), attribute or "bp")
    return blueprint
