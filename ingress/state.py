"""What ``create_app`` keeps on the app for views: the settings it read once and the publisher."""

from __future__ import annotations

from flask import current_app

from shared.queues import Publisher
from shared.settings import Settings

SETTINGS_KEY = "wapipe.settings"
PUBLISHER_KEY = "wapipe.publisher"


def current_settings() -> Settings:
    """The settings the running app was created with (not re-read from the environment)."""
    return current_app.extensions[SETTINGS_KEY]


def current_publisher() -> Publisher | None:
    """The app's process-wide publisher; None when ``WAPIPE_REDIS_URL`` is not set."""
    return current_app.extensions[PUBLISHER_KEY]
