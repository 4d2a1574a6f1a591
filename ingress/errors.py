"""Every 4xx/5xx as JSON: ``{"error": {"code": "...", "message": "..."}}``, with ``"field"`` naming the body
field, query parameter or path parameter at fault when there is one.

Covers our own errors (:func:`api_error`), werkzeug's (404, 405 with its ``Allow`` header, 413 from
``MAX_CONTENT_LENGTH``, 400 from an unreadable form or JSON body), PostgreSQL being unreachable (a 503
with Retry-After) and other uncaught exceptions, which are logged with their traceback and answered with a
500 that reveals nothing about the internals.
"""

from __future__ import annotations

import re

import psycopg
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from shared.db.errors import TimedOut, Unavailable
from shared.logging import get_logger

log = get_logger(__name__)

# PostgreSQL unreachable, as the pool (a timeout waiting for a connection) or a repository says it.
_DATABASE_DOWN = (Unavailable, psycopg.OperationalError)
# A statement cancelled by its statement_timeout: psycopg's OperationalError too, but the server is there.
_DATABASE_SLOW = (TimedOut, psycopg.errors.QueryCanceled)
DATABASE_RETRY_AFTER_SECONDS = 5
# Headers of werkzeug's own error responses that still apply to our JSON version.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def api_error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    field: str | None = None,
) -> Response:
    """A JSON error response; ``code`` is a stable snake_case word clients can branch on, ``field`` the
    part of the request at fault (a body field or a query or path parameter, by the name it is sent as)."""
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    response = jsonify({"error": error})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _code_for(exc: HTTPException) -> str:
    return re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")


def handle_http_exception(exc: HTTPException) -> Response:
    if exc.response is not None:
        # abort(api_error(...)): the response is already ours.
        return exc.response
    if exc.code is None or exc.code < 400:
        return exc.get_response()
    response = api_error(exc.code, _code_for(exc), exc.description or exc.name)
    for name, value in exc.get_headers():
        if name in _KEPT_HEADERS:
            response.headers[name] = value
    return response


def handle_unexpected(exc: Exception) -> Response:
    if isinstance(exc, _DATABASE_SLOW):
        log.warning("ingress.database_timeout", error_type=type(exc).__name__)
        return api_error(
            503,
            "database_timeout",
            "the database did not answer in time (a statement timeout); nothing was stored."
            " Retry after Retry-After.",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, _DATABASE_DOWN):
        # Not a bug of ours: the database is away (a restart, a failover). Nothing was stored; a 503 says
        # to try again, as the broker's absence does.
        log.warning("ingress.database_unavailable", error_type=type(exc).__name__)
        return api_error(
            503,
            "database_unavailable",
            "the database cannot be reached; nothing was stored. Retry after Retry-After.",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    log.error("ingress.unhandled_exception", error_type=type(exc).__name__, exc_info=exc)
    return api_error(500, "internal_error", "internal server error; it has been logged")


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
