"""An asyncio event loop of the process's own, for sending many outbound messages at once.

Celery runs a task in a plain thread (or a prefork child); ``notify.send`` hands its batch to this loop
(:meth:`LoopThread.submit`) and, in its own thread, records the sends' outcomes as they come, so the task
still acknowledges only once every send is recorded, and the database work stays off the loop that the
process's other tasks share. The loop keeps one :class:`aiohttp.ClientSession` with HTTP keep-alive for
every provider call the process makes. aiohttp, not httpx: measured against a fake provider answering
after 150 ms with a few hundred requests in flight, httpx's ``AsyncClient`` spent ~14 ms of CPU per
request (its connection pool scans every connection), aiohttp ~0.6 ms (twilio's own async client is
aiohttp too).

One loop per process, made on first use, so a prefork child makes its own after the fork.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiohttp

from shared.logging import get_logger
from shared.providers.base import OutboundMessage, OutcomeUnknown, SendError, SendResult

log = get_logger(__name__)

T = TypeVar("T")

# A request gets a connection (from the pool, or a new one) within ``connect`` seconds, or fails before
# anything was sent, and is retried later; one not answered within ``total`` seconds may have reached the
# provider (:func:`transport_error`).
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10.0, connect=5.0)
# Enough connections that a send never queues for one behind its pacing slot (a queued send would reach
# the provider late, and lateness is what pacing margins pay for).
MAX_CONNECTIONS = 1024


def transport_error(exc: BaseException, provider: str) -> SendError:
    """A provider call that failed without an answer, as a :class:`SendError`.

    Retried later only when the request surely never left this process: no connection could be made or
    had in time. Anything after that (a timeout while the provider had the request, a connection reset or
    closed before the whole answer came) may have sent the message: :class:`OutcomeUnknown`.
    """
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return SendError(
            "connection_error", f"cannot reach {provider}: {type(exc).__name__}", permanent=False
        )
    return OutcomeUnknown(f"{provider} may have the message, but its answer was lost ({type(exc).__name__})")


@contextlib.contextmanager
def provider_call(provider: str) -> Iterator[None]:
    """Around a provider call and the reading of its answer: what can go wrong once the request may be on
    its way. The provider's own answer (a :class:`SendError`) passes as it is, a transport failure is
    :func:`transport_error`, and anything else (an answer our code cannot read, a bug of ours) is
    :class:`OutcomeUnknown`: the provider may have the message, so sending it again could deliver it twice.
    Build the request before entering: a failure there sent nothing and is handled as before.
    """
    try:
        yield
    except SendError:
        raise
    except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
        raise transport_error(exc, provider) from None
    except Exception as exc:
        log.exception("provider answer unreadable; outcome unknown", provider=provider)
        raise OutcomeUnknown(
            f"{provider} may have the message, but its answer could not be read ({type(exc).__name__})"
        ) from None


@runtime_checkable
class AsyncSender(Protocol):
    """A sender that can also make its one provider call on the event loop, with the loop's session."""

    name: str

    async def send_async(self, message: OutboundMessage, session: aiohttp.ClientSession) -> SendResult:
        """Send the message or raise :class:`~shared.providers.base.SendError` (same contract as ``send``)."""
        ...


class LoopThread:
    """An event loop running in a daemon thread, and its HTTP session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._run, name="notify-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run the coroutine on the loop; block the calling thread until it is done and return its result."""
        return self.submit(coroutine).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start the coroutine on the loop and return at once: its result, for the calling thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def session(self) -> aiohttp.ClientSession:
        """The loop's session (call from the loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=MAX_CONNECTIONS),
                timeout=REQUEST_TIMEOUT,
            )
        return self._session


_lock = threading.Lock()
_loops: dict[int, LoopThread] = {}


def get_loop() -> LoopThread:
    """This process's loop (a forked child makes its own)."""
    with _lock:
        pid = os.getpid()
        if pid not in _loops:
            _loops.clear()
            _loops[pid] = LoopThread()
        return _loops[pid]
