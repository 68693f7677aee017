"""The REST fast path: a plain POST to /v1/... skips tornado.web's request-handler machinery.

tornado.web builds a RequestHandler, its header maps, routing and a coroutine per request: about
100 µs of Python, as much as the rest of a one-row predict outside the model call. Here tornado's
HTTP/1.1 connection (keep-alive, limits, 100-continue, chunked bodies, idle timeout, shutdown) still
reads the request, but a POST to /v1/ with a Content-Length within --max_request_bytes and no
--auth_token goes straight to `rest.answer`, the same function the tornado handler calls, and its
response is written with pre-encoded headers. Every other request (GET, other methods, chunked
bodies, oversized bodies, a server with a bearer token, /metrics, unknown paths) goes to the
tornado application unchanged.
"""

from __future__ import annotations

import asyncio
import logging

from tornado import httputil
from tornado.iostream import StreamClosedError

from serving import json_codec, request_log, rest
from serving.traffic import CLIENT_KEY_HEADER

log = logging.getLogger("serving.rest")

_REASONS = httputil.responses
_CONTENT_TYPE = ("Content-Type", "application/json")
_INTERNAL = (500, json_codec.dumps({"error": "Internal server error"}), [])


class FastRouter(httputil.HTTPServerConnectionDelegate):
    """The HTTPServer's delegate: each request starts in a `_Request`, which hands unusual ones to `app`."""

    def __init__(self, server, app):
        self.server = server
        self.app = app

    def start_request(self, server_conn, request_conn):
        return _Request(self, server_conn, request_conn)

    def on_close(self, server_conn):
        self.app.on_close(server_conn)


class _Request(httputil.HTTPMessageDelegate):
    def __init__(self, router: FastRouter, server_conn, request_conn):
        self.router = router
        self.server_conn = server_conn
        self.conn = request_conn
        self.inner = None  # the tornado application's delegate, for requests the fast path leaves alone
        self.chunks: list[bytes] = []

    def headers_received(self, start_line, headers):
        options = self.router.server.options
        declared = headers.get("Content-Length")
        path = start_line.path.split("?", 1)[0]
        if (
            start_line.method == "POST"
            and path[:4].lower() == "/v1/"
            and not options.auth_token
            and declared is not None
            and declared.isdigit()
            and int(declared) <= options.max_request_bytes
            and "Transfer-Encoding" not in headers
        ):
            self.method, self.path, self.headers = "POST", path, headers
            return None
        self.inner = self.router.app.start_request(self.server_conn, self.conn)
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk):
        if self.inner is not None:
            return self.inner.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def finish(self):
        if self.inner is not None:
            return self.inner.finish()
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        headers = self.headers
        args = (
            self.router.server,
            self.path,
            body,
            headers.get(CLIENT_KEY_HEADER),
            headers.get(request_log.REQUEST_KEY_HEADER),
        )
        try:
            result = rest.answer_inline(args[0], "POST", *args[1:])
        except Exception:  # handle_versioned turns request errors into statuses; this is a server bug
            log.exception("REST POST %s failed", self.path)
            result = _INTERNAL
        if result is None:
            asyncio.ensure_future(_on_pool(self.conn, args))
        else:
            _write(self.conn, *result)
        return None

    def on_connection_close(self):
        if self.inner is not None:
            self.inner.on_connection_close()


async def _on_pool(conn, args):
    server, path, body, client_key, request_key = args
    try:
        result = await rest.answer(server, "POST", path, body, client_key, request_key)
    except Exception:
        log.exception("REST POST %s failed", path)
        result = _INTERNAL
    _write(conn, *result)


def _write(conn, status: int, payload: bytes, extra: list) -> None:
    headers = httputil.HTTPHeaders()
    headers.add(*_CONTENT_TYPE)
    headers.add("Content-Length", str(len(payload)))
    for name, value in extra:
        headers.add(name, value)
    try:
        conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", status, _REASONS.get(status, "Unknown")), headers, payload
        )
        conn.finish()
    except StreamClosedError:  # the client went away while its request ran
        pass
