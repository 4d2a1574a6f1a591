"""PostgreSQL access: a per-process pool, plain SQL migrations, one repository module per table group."""

from shared.db.errors import Duplicate, NotFound
from shared.db.pool import connection, get_pool, transaction

__all__ = ["Duplicate", "NotFound", "connection", "get_pool", "transaction"]
