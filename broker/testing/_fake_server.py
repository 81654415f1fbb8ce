"""A small threaded HTTP server on 127.0.0.1 for building fakes of cloud services.

A fake subclasses :class:`FakeServer`, registers routes with :meth:`FakeServer.route`, and
answers each request with a :class:`FakeResponse`. The base class gives every fake the same
testing tools:

- a free port on the loopback interface, chosen by the operating system;
- a call log (:attr:`FakeServer.calls`): method, path, query, headers (authorization
  redacted) and body of every request, in arrival order;
- a fault queue (:meth:`FakeServer.inject`): the next request that matches a
  :class:`Fault` gets the fault's status and body instead of the route's answer, or has its
  reply lost after the route ran (the service did the work; the client never hears of it);
- a clock (:attr:`FakeServer.clock`), a :class:`broker.clock.Clock` that the fake reads to
  decide how far a job has come, so a test moves jobs along without sleeping.

Example:
    >>> from broker.testing import FakeResponse, FakeServer
    >>> server = FakeServer()
    >>> @server.route("GET", r"/ping")
    ... def ping(request, match):
    ...     return FakeResponse.json({"ok": True})
    >>> with server:
    ...     import urllib.request
    ...     body = urllib.request.urlopen(server.url + "/ping").read()
    >>> body, server.calls[0].path
    (b'{"ok": true}', '/ping')
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from broker.clock import Clock, FakeClock

logger = logging.getLogger(__name__)

__all__ = [
    "Fault",
    "FakeRequest",
    "FakeResponse",
    "FakeServer",
    "RecordedCall",
    "Handler",
]

_S = TypeVar("_S", bound="FakeServer")
_REDACTED_HEADERS = frozenset({"authorization", "api-key", "x-goog-api-key", "cookie"})


@dataclass(frozen=True)
class FakeRequest:
    """One request as a route handler sees it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is empty."""
        return json.loads(self.body) if self.body else None

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True)
class RecordedCall:
    """One request in the call log. Secrets in headers are replaced by ``<redacted>``."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at_s: float  # the fake's clock (monotonic seconds) when the request arrived
    status: int | None = None  # what the fake answered; None when the reply was lost
    fault: str | None = None  # the name of the injected fault that answered, if any

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class FakeResponse:
    """What a route answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> FakeResponse:
        return cls(
            status=status,
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )


Handler = Callable[[FakeRequest, "re.Match[str]"], FakeResponse]


@dataclass
class Fault:
    """A failure to answer the next matching request(s) with.

    Args:
        status: HTTP status of the fault's reply (ignored when `lose_reply` is set).
        body: JSON-able payload (or bytes) of the reply.
        method: match only this HTTP method; None matches any.
        path: a regular expression searched in the request path; None matches any.
        times: how many matching requests the fault answers before it is used up.
        skip: let this many matching requests through before the fault fires, e.g. to
            fail the third poll of a job.
        lose_reply: run the route (the service does the work) and then close the
            connection without a reply.
        headers: extra reply headers (``Retry-After`` for a 429).
        name: a label recorded in the call log.
    """

    status: int = 500
    body: Any = None
    method: str | None = None
    path: str | None = None
    times: int = 1
    skip: int = 0
    lose_reply: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    name: str = "fault"

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or re.search(self.path, path) is not None

    def response(self) -> FakeResponse:
        if isinstance(self.body, bytes):
            return FakeResponse(self.status, self.body, dict(self.headers))
        return FakeResponse.json(self.body or {}, self.status, self.headers)


class _LostReply(Exception):
    """Raised inside the request handler to drop the connection without a reply."""


class FakeServer:
    """A threaded HTTP server on 127.0.0.1 with routes, a call log, faults and a clock.

    Args:
        clock: the clock the fake reads; a :class:`broker.clock.FakeClock` by default.
        port: a fixed port; 0 (the default) lets the operating system pick a free one.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, *, clock: Clock | None = None, port: int = 0) -> None:
        self.clock: Clock = clock if clock is not None else FakeClock()
        self._port = port
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._faults: list[Fault] = []
        self._calls: list[RecordedCall] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- routes ------------------------------------------------------------------------

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Register a handler for `method` and a path regex matched in full."""

        def register(handler: Handler) -> Handler:
            self.add_route(method, pattern, handler)
            return handler

        return register

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method.upper(), re.compile(pattern), handler))

    # --- faults and the call log -------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each answers the next request(s) it matches, in queue order."""
        with self._lock:
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    @property
    def calls(self) -> list[RecordedCall]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str, path_pattern: str) -> list[RecordedCall]:
        """The logged requests with this method whose path matches the regex."""
        regex = re.compile(path_pattern)
        return [
            c for c in self.calls if c.method == method.upper() and regex.search(c.path)
        ]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # --- life cycle --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake server is not started; call start() first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def start(self: _S) -> _S:
        if self._server is not None:
            return self
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", self._port), _make_handler(self)
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("%s listening on %s", type(self).__name__, self.url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- dispatch ----------------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if not fault.matches(method, path):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _dispatch(self, request: FakeRequest) -> FakeResponse:
        fault = self._take_fault(request.method, request.path)
        if fault is not None and not fault.lose_reply:
            self._record(request, fault.status, fault.name)
            return fault.response()
        response = self._route(request)
        if fault is not None:  # lose_reply: the work is done, the answer never arrives
            self._record(request, None, fault.name)
            raise _LostReply
        self._record(request, response.status, None)
        return response

    def _route(self, request: FakeRequest) -> FakeResponse:
        for method, pattern, handler in self._routes:
            if method != request.method:
                continue
            match = pattern.fullmatch(request.path)
            if match is not None:
                try:
                    return handler(request, match)
                except Exception as exc:  # a bug in the fake must still answer
                    logger.exception("fake route %s %s failed", method, request.path)
                    return FakeResponse.json(
                        {"error": {"code": 500, "message": f"fake failed: {exc!r}"}},
                        500,
                    )
        return self.not_found(request)

    def not_found(self, request: FakeRequest) -> FakeResponse:
        """The answer for a path no route matches; subclasses give the service's shape."""
        return FakeResponse.json(
            {
                "error": {
                    "code": 404,
                    "message": f"no route {request.method} {request.path}",
                }
            },
            404,
        )

    def _record(
        self, request: FakeRequest, status: int | None, fault: str | None
    ) -> None:
        headers = {
            k: ("<redacted>" if k in _REDACTED_HEADERS else v)
            for k, v in request.headers.items()
        }
        call = RecordedCall(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=headers,
            body=request.body,
            at_s=self.clock.monotonic(),
            status=status,
            fault=fault,
        )
        with self._lock:
            self._calls.append(call)


def _make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: simple and robust

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = FakeRequest(
                method=self.command.upper(),
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            try:
                response = server._dispatch(request)
            except _LostReply:
                self.close_connection = True
                return
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("fake %s: " + format, self.address_string(), *args)

    return _Handler
