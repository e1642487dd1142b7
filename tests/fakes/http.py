"""A local fake HTTP server for provider tests: real sockets on 127.0.0.1, real wire bytes.

Tests register routes (method + path, query ignored) that answer with JSON or with a
function of the request; faults (status codes, Retry-After, delays past the client timeout,
truncated bodies, dropped connections) are queued per route and served before the route's
normal answer. Every request is recorded so tests can assert what the SDK really sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakeRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class FakeResponse:
    """One answer. `body` (bytes) wins over `json`; `truncate` sends a Content-Length larger
    than the body and closes; `drop` closes the connection without any answer;
    `delay_s` sleeps before answering (a timeout when past the client's)."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    truncate: bool = False
    drop: bool = False

    def payload(self) -> bytes:
        if self.body is not None:
            return self.body
        return json.dumps(self.json).encode()


Answer = FakeResponse | Callable[[FakeRequest], FakeResponse]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: listen() backlog: adapters fan out 16+ connections at once; the default 5 resets some.
    request_queue_size = 128


class FakeHttpServer:
    """A threaded HTTP/1.1 server on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Answer] = {}
        self.faults: dict[tuple[str, str], deque[FakeResponse]] = {}
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Without it Nagle's algorithm meets the client's delayed ACK: +40 ms a request.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = FakeRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                resp = server._answer(req)
                if resp.delay_s:
                    time.sleep(resp.delay_s)
                if resp.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = resp.payload()
                self.send_response(resp.status)
                headers = {"Content-Type": "application/json", **resp.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                length_sent = len(payload) + (1000 if resp.truncate else 0)
                self.send_header("Content-Length", str(length_sent))
                if resp.truncate:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2] if resp.truncate else payload)
                if resp.truncate:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # ------------------------------------------------------------------ setup

    def route(self, method: str, path: str, answer: Answer | Any) -> None:
        """Answer `method path` with a FakeResponse, a function of the request, or any
        JSON-able value (served as 200)."""
        if not isinstance(answer, FakeResponse) and not callable(answer):
            answer = FakeResponse(json=answer)
        self.routes[(method.upper(), path)] = answer

    def fail(self, method: str, path: str, *responses: FakeResponse) -> None:
        """Serve these responses, one per request, before the route's normal answer."""
        self.faults.setdefault((method.upper(), path), deque()).extend(responses)

    def requests_to(self, path: str) -> list[FakeRequest]:
        return [r for r in self.requests if r.path == path]

    # ---------------------------------------------------------------- serving

    def _answer(self, req: FakeRequest) -> FakeResponse:
        key = (req.method, req.path)
        with self._lock:
            self.requests.append(req)
            queued = self.faults.get(key)
            if queued:
                return queued.popleft()
        answer = self.routes.get(key)
        if answer is None:
            return FakeResponse(404, json={"error": {"code": 404, "message": f"no route {key}"}})
        if isinstance(answer, FakeResponse):
            return answer
        return answer(req)

    def __enter__(self) -> FakeHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve() -> Iterator[FakeHttpServer]:
    """Generator for a pytest fixture: a started server, shut down after the test."""
    with FakeHttpServer() as server:
        yield server
