"""Errors with TF Serving's canonical codes, and how each maps to an HTTP status."""

from __future__ import annotations

import grpc

Code = grpc.StatusCode

# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

_BY_NUMBER = {code.value[0]: code for code in Code}


class ServingError(Exception):
    """A request failed with a canonical status `code` and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    @property
    def code_name(self) -> str:
        return self.code.name


def code_from_number(number: int) -> grpc.StatusCode:
    return _BY_NUMBER.get(number, Code.UNKNOWN)


def invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def from_exception(exc: BaseException) -> ServingError:
    """Maps a TF runtime error to its own code (TF errors carry canonical codes); anything else is INTERNAL."""
    if isinstance(exc, ServingError):
        return exc
    import tensorflow as tf

    if isinstance(exc, tf.errors.OpError):
        return ServingError(code_from_number(exc.error_code), exc.message)
    if isinstance(exc, (TypeError, ValueError)):
        # Raised by TF when a tensor does not fit a signature's input spec.
        return invalid(str(exc))
    return ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
