"""Where inbound media may be downloaded from, per provider, and which of those places get its credentials
(workers/media.py): https only, the providers' own API and media hosts, the API URLs the settings name, and
``WAPIPE_MEDIA_HOSTS``."""

from __future__ import annotations

import base64

import pytest

from shared.settings import SettingsError, load_settings
from workers.media import media_hosts

SETTINGS = load_settings(
    twilio_account_sid="AC0123",
    twilio_auth_token="twilio-token",
    meta_access_token="meta-token",
    kapso_api_key="kapso-key",
)
BASIC = "Basic " + base64.b64encode(b"AC0123:twilio-token").decode()


@pytest.mark.parametrize(
    ("provider", "url", "credentials"),
    [
        (
            "twilio",
            "https://api.twilio.com/2010-04-01/Accounts/AC0123/Messages/MM1/Media/ME1",
            {"Authorization": BASIC},
        ),
        ("twilio", "https://mms.twiliocdn.com/AC0123/0a1b2c", {}),
        ("twilio", "https://media.twiliocdn.com/AC0123/0a1b2c", {}),
        ("twilio", "https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC0123/0a1b2c", {}),
        ("meta", "https://graph.facebook.com/v21.0/1234", {"Authorization": "Bearer meta-token"}),
        (
            "meta",
            "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1",
            {"Authorization": "Bearer meta-token"},
        ),
        ("kapso", "https://api.kapso.ai/media/1479537139650973", {"X-API-Key": "kapso-key"}),
        ("kapso", "https://app.kapso.ai/rails/active_storage/blobs/a.jpg", {}),
        ("kapso", "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", {}),
    ],
)
def test_the_providers_hosts_are_allowed_and_only_their_api_gets_credentials(
    provider: str, url: str, credentials: dict[str, str]
) -> None:
    hosts = media_hosts(provider, SETTINGS)

    assert hosts.allows(url)
    assert hosts.credentials_for(url) == credentials


@pytest.mark.parametrize(
    ("provider", "url"),
    [
        ("twilio", "http://api.twilio.com/2010-04-01/Accounts/AC0123/Messages/MM1/Media/ME1"),  # not https
        ("twilio", "https://api.twilio.com:8443/2010-04-01/Accounts"),
        ("twilio", "https://api.twilio.com.attacker.example/x"),
        ("twilio", "https://twiliocdn.com.attacker.example/x"),
        ("twilio", "https://s3-external-1.amazonaws.com/attacker-bucket/x"),
        ("twilio", "https://s3-external-1.amazonaws.com/media.twiliocdn.com.attacker/x"),
        ("twilio", "https://169.254.169.254/latest/meta-data/"),
        ("twilio", "https://graph.facebook.com/v21.0/1234"),  # another provider's host
        ("meta", "https://attacker.example/collect"),
        ("meta", "https://lookaside.fbsbx.com.attacker.example/x"),
        ("kapso", "http://api.kapso.ai/media/1"),
        ("kapso", "https://kapso.ai.attacker.example/x"),
        ("kapso", "file:///etc/passwd"),
        ("console", "https://api.twilio.com/2010-04-01/Accounts"),
        ("twilio", "https://xn--mms-twiliocdn.com/a"),  # an IDNA host that does not decode: refused, no crash
    ],
)
def test_anywhere_else_is_refused(provider: str, url: str) -> None:
    assert not media_hosts(provider, SETTINGS).allows(url)


def test_the_configured_api_urls_and_media_hosts_are_allowed() -> None:
    settings = load_settings(
        twilio_account_sid="AC0123",
        twilio_auth_token="twilio-token",
        twilio_api_url="http://127.0.0.1:9000",
        media_hosts=["files.example.com", "*.cdn.example.net", "http://127.0.0.1:9100/media/"],
    )
    hosts = media_hosts("twilio", settings)

    assert hosts.credentials_for("http://127.0.0.1:9000/2010-04-01/Accounts/AC0123/Media/ME1") == {
        "Authorization": BASIC
    }
    assert hosts.allows("https://files.example.com/a.jpg")
    assert hosts.allows("https://eu.cdn.example.net/a.jpg")
    assert hosts.allows("http://127.0.0.1:9100/media/a.jpg")
    assert hosts.credentials_for("https://files.example.com/a.jpg") == {}
    assert not hosts.allows("http://files.example.com/a.jpg")
    assert not hosts.allows("http://127.0.0.1:9100/admin")
    assert not hosts.allows("http://127.0.0.1:9001/a.jpg")


@pytest.mark.parametrize("value", ["ftp://files.example.com", "https://", "files.example.com/a b", "*"])
def test_a_malformed_media_host_fails_at_start_naming_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="WAPIPE_MEDIA_HOSTS"):
        load_settings(media_hosts=value)
