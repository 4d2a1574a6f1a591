"""The Celery app: ``celery -A workers worker -Q notify`` (or ``wapipe worker -Q notify``).

One module per stage, named like its queue. Importing this package reads the settings (so a bad one fails
at start, naming the variable) but connects to nothing.
"""

from __future__ import annotations

from celery import Celery

from shared.queues import celery_config
from shared.settings import get_settings

celery = Celery("wapipe")
celery.config_from_object(celery_config(get_settings().redis_url or "redis://127.0.0.1:6379/0"))
celery.autodiscover_tasks(["workers"], related_name=None, force=True)

STAGE_MODULES = (
    "workers.signals",
    "workers.inbound",
    "workers.notify",
    "workers.status",
    "workers.maintenance",
    "workers.verify",
    "workers.commands",
    "workers.flows",
    "workers.ai",
    "workers.persist",
)
celery.conf.imports = STAGE_MODULES
app = celery
