"""The reference for the ingress benchmark: Flask answering 200 and nothing else, on the same gunicorn.

Same paths as the ingress (so the load generator sends byte-identical requests to both) and a
``/healthz`` for the harness to wait on. ``gunicorn ... 'tests.bench.bare_app:create_app()'``.
"""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__, static_folder=None)

    @app.route("/healthz")
    @app.post("/webhooks/twilio")
    @app.post("/webhooks/meta")
    def ok() -> tuple[str, int]:
        return "", 200

    return app
