"""Outbound through Kapso's Meta-compatible proxy: the Cloud API ``messages`` call, ``X-API-Key`` auth.

Same request bodies and error objects as Meta's Graph API, so it reuses the Meta sender with another base
URL and credential. https://docs.kapso.ai/docs/how-to/whatsapp/use-meta-proxy
"""

from __future__ import annotations

import httpx

from shared.providers.base import SendError
from shared.providers.meta.client import CloudApiSender
from shared.settings import Settings


class KapsoSender(CloudApiSender):
    name = "kapso"

    def __init__(
        self, settings: Settings, *, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        if not settings.kapso_api_key or not settings.kapso_phone_number_id:
            raise SendError(
                "not_configured", "KAPSO_API_KEY and KAPSO_PHONE_NUMBER_ID are required", permanent=True
            )
        super().__init__(
            base_url=settings.kapso_api_url,
            phone_number_id=settings.kapso_phone_number_id,
            headers={"X-API-Key": settings.kapso_api_key.get_secret_value()},
            timeout=timeout,
            client=client,
        )
