"""A lean gRPC client for the benchmarks: unary calls over one plain HTTP/2 socket, as a load generator
like ghz (compiled, a few microseconds a call) would send them.

grpcio's Python client spends 0.3 to 0.4 ms of CPU a call (its channel, call objects and completion
queue), even with pre-serialized bytes; at concurrency 1 the client and the server take turns on the
same cores, so that time would count as the server's. This client writes each call's HTTP/2 frames
from bytes built once (HPACK header block without the dynamic table, the length-prefixed message)
and reads the response frames without decoding their headers: a call succeeded when its stream
carried one complete gRPC message before it ended (the server answers errors trailers-only, without
a message). It answers the server's SETTINGS and PINGs and keeps both flow-control windows open.
"""

from __future__ import annotations

import socket
import struct

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_WINDOW = (1 << 31) - 1  # what this client lets the server send before it must wait for an update
_DEFAULT_WINDOW = 65535


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name_index: int, name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing (RFC 7541 6.2.2), the name from the static table or literal."""
    out = _hpack_int(name_index, 4, 0x00)
    if not name_index:
        out += _hpack_int(len(name), 7, 0) + name
    return out + _hpack_int(len(value), 7, 0) + value


def header_block(authority: str, method: str) -> bytes:
    return (
        b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
        + _literal(4, b"", method.encode())  # :path
        + _literal(1, b"", authority.encode())  # :authority
        + _literal(31, b"", b"application/grpc")  # content-type
        + _literal(0, b"te", b"trailers")
    )


class RawGrpcConnection:
    """One HTTP/2 connection that makes unary calls one at a time: `call(payload)` returns the response bytes."""

    def __init__(self, host: str, port: int, method: str, timeout: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.block = header_block(f"{host}:{port}", method)
        self.buf = b""
        self.stream = -1
        self.send_window = _DEFAULT_WINDOW  # the connection's; each new stream gets the server's initial window
        self.stream_window = _DEFAULT_WINDOW
        self.received = 0
        settings = struct.pack(">HIHI", 0x2, 0, 0x4, _WINDOW)  # no push; the largest stream window
        self.sock.sendall(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _WINDOW - _DEFAULT_WINDOW))
        )

    def close(self) -> None:
        self.sock.close()

    def _read_frame(self) -> tuple[int, int, int, bytes]:
        while True:
            buf = self.buf
            if len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) >= 9 + length:
                    self.buf = buf[9 + length :]
                    return buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9 : 9 + length]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf = buf + chunk

    def _control(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        """Frames outside the current call's stream, and those on it that are not headers or data."""
        if kind == _SETTINGS and not flags & _ACK:
            for at in range(0, len(payload) - 5, 6):
                key, value = struct.unpack(">HI", payload[at : at + 6])
                if key == 0x4:
                    self.stream_window = value
            self.sock.sendall(_frame(_SETTINGS, _ACK, 0, b""))
        elif kind == _PING and not flags & _ACK:
            self.sock.sendall(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW_UPDATE and stream == 0:
            self.send_window += int.from_bytes(payload, "big") & 0x7FFFFFFF
        elif kind == _GOAWAY:
            raise ConnectionError(f"the server sent GOAWAY (error code {int.from_bytes(payload[4:8], 'big')})")
        elif kind == _RST_STREAM and stream == self.stream:
            raise RuntimeError(f"the server reset the stream (error code {int.from_bytes(payload, 'big')})")

    def call(self, message: bytes) -> bytes:
        data = b"\x00" + struct.pack(">I", len(message)) + message
        if len(data) > 16384 or len(data) > self.stream_window:
            raise ValueError("this client sends one DATA frame a call: the message must fit the server's limits")
        while self.send_window < len(data):
            self._control(*self._read_frame())
        self.stream += 2
        stream = self.stream
        self.sock.sendall(_frame(_HEADERS, _END_HEADERS, stream, self.block) + _frame(_DATA, _END_STREAM, stream, data))
        self.send_window -= len(data)
        body = b""
        while True:
            kind, flags, on, payload = self._read_frame()
            if on != stream or kind not in (_DATA, _HEADERS):
                self._control(kind, flags, on, payload)
                continue
            if kind == _DATA:
                self.received += len(payload)
                if flags & _PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                body += payload
            elif flags & _END_HEADERS == 0:
                raise RuntimeError("header blocks in CONTINUATION frames are not supported")
            if flags & _END_STREAM:
                break
        if self.received > _WINDOW // 2:  # give the connection's window back before it runs out
            self.sock.sendall(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            raise RuntimeError("the call ended without a response message (an error status)")
        return body[5:]
