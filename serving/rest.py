"""TF Serving's REST API (model_servers/http_rest_api_handler.cc) on tornado.

Paths, request and response JSON, and status codes as TF Serving documents them in api_rest.md.
Model calls run on a thread pool so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from urllib.parse import unquote

import tornado.web

from serving import inference, json_codec, lineage, request_log
from serving import metrics as metrics_mod
from serving.errors import Code, ServingError, from_exception, invalid, not_found
from serving.traffic import CLIENT_KEY_HEADER, VERSION_HEADER

log = logging.getLogger("serving.rest")

# TF Serving's regexes (http_rest_api_util.cc), matched against the whole path.
INFERENCE = ("predict", "classify", "regress")
MAX_LOGGED_BODY = 64 << 10
# A request may run on the I/O thread (no thread switch) when it is small and recent requests took
# less than this on average, so another connection waits at most about that long behind it.
INLINE_MAX_BYTES = 64 << 10
INLINE_MAX_SECONDS = 0.005  # request bodies up to this size go into the traffic log (traffic.json on)
EXTRA_RE = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?/(lineage|traffic)")

PREDICTION_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)


def _json_message(message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, including_default_value_fields=True)


class RestApi:
    """Maps (method, path, body) to (HTTP status, JSON body); no HTTP server involved."""

    def __init__(self, service, metrics, shared_metadata=None):
        self.service = service
        self.shared_metadata = shared_metadata  # the config naming a shared MLMD database, for lineage
        self.metrics = metrics

    def handle(self, http_method: str, path: str, body: bytes, client_key: str | None = None) -> tuple[int, bytes]:
        return self.handle_versioned(http_method, path, body, client_key)[:2]

    def handle_versioned(
        self, http_method: str, path: str, body: bytes, client_key: str | None = None, request_key: str | None = None
    ):
        """(status, payload, version that answered or None): the version goes out as the X-Model-Version header.

        `request_key` (the X-Request-Id header, or one the handler generated) is stamped on the request's log."""
        start = time.perf_counter()
        api, model, version, tfs_api, label, doc = "unknown", "", None, "", None, None
        try:
            try:
                request_log.set_request_key(request_key)
            except ValueError as e:
                raise invalid(str(e)) from None
            name = version_str = label = method = sub = None
            match = None
            # Any other method, like PUT or DELETE, is a 400 "Malformed request" (http_rest_api_util.cc
            # ParseModelInfo only parses POST and GET; http_rest_api_handler.cc:74 is the default status).
            if http_method == "POST":
                match = PREDICTION_RE.fullmatch(path)
                if match:
                    name, version_str, label, method = match.groups()
            elif http_method == "GET" and EXTRA_RE.fullmatch(path):  # mlpipe's own: lineage, traffic
                name, version_str, sub = EXTRA_RE.fullmatch(path).groups()
                api, model = sub, unquote(name)
                doc = self._extra(model, int(version_str) if version_str else None, sub)
                return 200, json_codec.dumps(doc), None
            elif http_method == "GET":
                match = STATUS_RE.fullmatch(path)
                if match:
                    name, version_str, label, sub = match.groups()
            model = unquote(name or "")
            label = unquote(label) if label else None
            if version_str:
                version = int(version_str)
                if version >= 2**63:
                    raise invalid(f"Failed to convert version: {version_str} to numeric.")
            # The regexes ignore case, but the dispatch compares the verb exactly (http_rest_api_handler.cc:86):
            # ":PREDICT" is malformed, and a subresource other than "metadata" (even "METADATA") asks for status.
            if http_method == "POST" and match and method in ("classify", "regress", "predict"):
                api = tfs_api = method
            elif http_method == "GET" and match:
                api = "metadata" if sub == "metadata" else "status"
            else:
                raise invalid(f"Malformed request: {http_method} {path}")
            if api in ("status", "metadata") and not model:
                raise invalid("Missing model name in request.")
            if api in INFERENCE and version is None and not label:
                label = self.service.router.pick(model, client_key)
                if label:
                    self.metrics.routed.labels(model, label).inc()
            served_version, doc = getattr(self, "_" + api)(model, version, label, body)
            version = served_version if served_version is not None else version
            status, payload, code = 200, json_codec.dumps(doc), "OK"
        except Exception as e:  # every failure becomes {"error": ...} with TF Serving's status code
            error = from_exception(e)
            if error.code in (Code.INTERNAL, Code.UNKNOWN):
                log.exception("REST %s %s failed", http_method, path)
            status, payload, code = error.http_status, json_codec.dumps({"error": error.message}), error.code_name
            version = None  # keep client-chosen values out of metric labels
        if model and self.service.manager.entry(model) is None:
            model = "<unknown>"
        seconds = time.perf_counter() - start
        self.metrics.observe(model, version, api, "rest", code, seconds, tfs_api=tfs_api)
        if api in INFERENCE and self.service.router.active(model):
            self._route_log(model, api, label, version, seconds, code, doc, client_key, body)
        return (
            status,
            payload,
            version if code == "OK" and api in ("predict", "classify", "regress", "metadata") else None,
        )

    def _route_log(self, model, api, label, version, seconds, code, doc, client_key, body) -> None:
        """With traffic controls on: logs the caller's answer, then hands a copy to the shadow label."""
        router = self.service.router
        request_id = router.new_request_id()
        error = None if code == "OK" else code
        inputs = None
        if len(body) <= MAX_LOGGED_BODY:  # the request's instances, for `mlpipe compare --slice FEATURE`
            try:
                inputs = json.loads(body).get("instances")
            except (ValueError, AttributeError):
                pass
        router.record(
            model, request_id, "primary", "rest", api, label, version, seconds, error, doc, client_key, inputs
        )
        if label != router.shadow_label(model):
            router.submit_shadow(
                model, request_id, "rest", api, lambda shadow: getattr(self, "_" + api)(model, None, shadow, body)
            )

    def _extra(self, name, version, sub) -> dict:
        entry = self.service.manager.entry(name)
        if entry is None:
            raise not_found(f"Servable not found for request: {name}")
        if sub == "traffic":
            labels = entry.label_map
            return {"model": name, "labels": labels, **self.service.router.state(name)}
        if version is None:
            raise invalid(f"use /v1/models/{name}/versions/VERSION/lineage")
        return lineage.version_lineage(name, entry.base_path, version, self.shared_metadata)

    def _status(self, name, version, label, body):
        # The label is parsed but not used: GetModelStatusImpl only looks at the version
        # (get_model_status_impl.cc:82), so /labels/L lists every version, even for an unknown label.
        return None, _json_message(self.service.status(name, version, None))

    def _metadata(self, name, version, label, body):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        served, response = self.service.metadata(name, version, label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        as_dict = lambda m: json_format.MessageToDict(  # noqa: E731
            m, including_default_value_fields=True, preserving_proto_field_name=True
        )
        return served, {
            "model_spec": as_dict(response.model_spec),
            "metadata": {"signature_def": as_dict(signature_map)},
        }

    def _predict(self, name, version, label, body):
        doc = json_codec.parse_body(body)
        signature_name = json_codec.signature_name(doc)
        with self.service.acquire(name, version, label) as servable:
            signature = servable.signature(signature_name)
            fmt, inputs = json_codec.predict_inputs(doc, signature.input_dtypes)
            signature, outputs = inference.predict(servable, signature.name, inputs)
            response = json_codec.predict_response(outputs, fmt)
            self.service.maybe_log("predict_log", name, lambda: _predict_log(servable, signature.name, inputs, outputs))
            return servable.version, response

    def _classify(self, name, version, label, body):
        doc = json_codec.parse_body(body)
        signature_name = json_codec.signature_name(doc)
        request_input = json_codec.classify_regress_input(doc, "classify")
        with self.service.acquire(name, version, label) as servable:
            signature, result = inference.classify(servable, signature_name, request_input)
            self.service.maybe_log(
                "classify_log", name, lambda: _example_log("classify", servable, signature.name, request_input, result)
            )
            return servable.version, json_codec.classification_response(result)

    def _regress(self, name, version, label, body):
        doc = json_codec.parse_body(body)
        signature_name = json_codec.signature_name(doc)
        request_input = json_codec.classify_regress_input(doc, "regress")
        with self.service.acquire(name, version, label) as servable:
            signature, result = inference.regress(servable, signature_name, request_input)
            self.service.maybe_log(
                "regress_log", name, lambda: _example_log("regress", servable, signature.name, request_input, result)
            )
            return servable.version, json_codec.regression_response(result)


def _predict_log(servable, signature_name, inputs, outputs):
    from tensorflow_serving.apis import predict_pb2

    request, response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
    inference.fill_model_spec(request.model_spec, servable, signature_name)
    response.model_spec.CopyFrom(request.model_spec)
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(inference.array_to_tensor(value))
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(inference.array_to_tensor(value))
    return request.model_spec, request, response


def _example_log(kind, servable, signature_name, request_input, result):
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    if kind == "classify":
        request, response = classification_pb2.ClassificationRequest(), classification_pb2.ClassificationResponse()
    else:
        request, response = regression_pb2.RegressionRequest(), regression_pb2.RegressionResponse()
    inference.fill_model_spec(request.model_spec, servable, signature_name)
    request.input.CopyFrom(request_input)
    response.model_spec.CopyFrom(request.model_spec)
    response.result.CopyFrom(result)
    return request.model_spec, request, response


# ---- tornado ----------------------------------------------------------------------------------


class _Base(tornado.web.RequestHandler):
    def initialize(self, server):
        self.server = server
        self._rejection: ServingError | None = None
        self._body = bytearray()
        self._seen = 0

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")

    def prepare(self):
        token = self.server.options.auth_token
        if token:
            sent = self.request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                self._rejection = ServingError(
                    Code.UNAUTHENTICATED, "Missing or wrong bearer token: send 'Authorization: Bearer <token>'"
                )
                return
        limit = self.server.options.max_request_bytes
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            self._too_large()

    def _too_large(self):
        limit = self.server.options.max_request_bytes
        self._rejection = ServingError(
            Code.RESOURCE_EXHAUSTED,
            f"Request body is larger than the limit of {limit} bytes; send fewer instances per request "
            "(or start the server with a larger --max_request_bytes)",
        )

    def data_received(self, chunk: bytes):
        self._seen += len(chunk)
        if self._rejection is not None:
            return  # read and drop, so the client still gets the JSON error
        if self._seen > self.server.options.max_request_bytes:
            self._too_large()
            self._body = bytearray()
            return
        self._body += chunk

    def write_error(self, status_code: int, **kwargs):
        """Errors tornado raises itself (e.g. 405 for an unknown method) in JSON too, not HTML."""
        self.set_header("Content-Type", "application/json")
        self.finish(
            json_codec.dumps({"error": f"{status_code} {self._reason}: {self.request.method} {self.request.path}"})
        )

    def reply(self, status: int, payload: bytes):
        self.set_status(status)
        self.finish(payload)

    def reject(self):
        error = self._rejection
        status = 413 if error.code == Code.RESOURCE_EXHAUSTED else error.http_status
        if error.code == Code.UNAUTHENTICATED:
            self.set_header("WWW-Authenticate", "Bearer")
        self.server.metrics.observe("", None, "unknown", "rest", error.code_name, 0.0, tfs_api="")
        self.reply(status, json_codec.dumps({"error": error.message}))


def answer_inline(server, method: str, path: str, body: bytes, client_key, request_key) -> tuple | None:
    """One /v1/ request answered on the I/O thread, or None when it must go to the thread pool.

    Only when nothing else is in flight in this process and requests have been quick: then the two
    thread switches of the pool are most of a one-row request's overhead, and another connection
    waits at most about INLINE_MAX_SECONDS behind this one."""
    if not (
        server.batcher is None
        and server._inflight == 0
        and len(body) <= INLINE_MAX_BYTES
        and server.recent_request_seconds < INLINE_MAX_SECONDS
    ):
        return None
    request_key = request_key or request_log.new_request_key()
    started = time.perf_counter()
    server.track(+1)
    try:
        status, payload, version = server.rest_api.handle_versioned(method, path, body, client_key, request_key)
    finally:
        server.track(-1)
        server.recent_request_seconds += 0.2 * (time.perf_counter() - started - server.recent_request_seconds)
    return status, payload, _headers(version, request_key)


def _headers(version, request_key) -> list:
    if version is None:
        return []
    return [(VERSION_HEADER, str(version)), (request_log.REQUEST_KEY_HEADER, request_key)]


async def answer(server, method: str, path: str, body: bytes, client_key, request_key) -> tuple[int, bytes, list]:
    """One /v1/ request through RestApi: (status, payload, extra headers), inline or on the thread pool
    (with --rest_api_timeout_in_ms). Shared by the tornado handler and the fast path (rest_fast.py)."""
    inline = answer_inline(server, method, path, body, client_key, request_key)
    if inline is not None:
        return inline
    request_key = request_key or request_log.new_request_key()
    started = time.perf_counter()
    call = asyncio.get_running_loop().run_in_executor(
        server.executor, server.rest_api.handle_versioned, method, path, body, client_key, request_key
    )
    server.track(+1)
    try:
        timeout = server.options.rest_api_timeout_in_ms / 1000 if server.options.rest_api_timeout_in_ms > 0 else None
        status, payload, version = await asyncio.wait_for(asyncio.shield(call), timeout)
    except asyncio.TimeoutError:
        status, payload, version = (
            504,
            json_codec.dumps({"error": "Request timed out (see --rest_api_timeout_in_ms)"}),
            None,
        )
    finally:
        server.track(-1)
        server.recent_request_seconds += 0.2 * (time.perf_counter() - started - server.recent_request_seconds)
    return status, payload, _headers(version, request_key)


@tornado.web.stream_request_body
class ApiHandler(_Base):
    async def _dispatch(self, method: str):
        if self._rejection is not None:
            return self.reject()
        headers = self.request.headers
        status, payload, extra = await answer(
            self.server,
            method,
            self.request.path,
            bytes(self._body),
            headers.get(CLIENT_KEY_HEADER),
            headers.get(request_log.REQUEST_KEY_HEADER),
        )
        for name, value in extra:
            self.set_header(name, value)
        self.reply(status, payload)

    async def get(self, *_):
        await self._dispatch("GET")

    async def post(self, *_):
        await self._dispatch("POST")

    # TF Serving hands every method on /v1/... to its handler, which answers 400 "Malformed request".
    async def put(self, *_):
        await self._dispatch("PUT")

    async def delete(self, *_):
        await self._dispatch("DELETE")

    async def patch(self, *_):
        await self._dispatch("PATCH")

    async def head(self, *_):
        await self._dispatch("HEAD")  # 400 as well; tornado sends no body for HEAD

    def options(self, *_):
        """A CORS preflight (http_server.cc:170): OK with an http(s):// Origin, else FAILED_PRECONDITION (400).

        TF Serving sends the 400 with an empty body; here it carries the usual {"error": ...} so the
        client sees why. No CORS headers: mlpipe has no --rest_api_enable_cors_support.
        """
        if self._rejection is not None:
            return self.reject()
        if re.search(r"https?://", self.request.headers.get("Origin", "")):
            code, status, payload = "OK", 200, b""
        else:
            code, status = "FAILED_PRECONDITION", 400
            payload = json_codec.dumps({"error": "Origin header is missing in CORS preflight"})
        self.server.metrics.observe("", None, "options", "rest", code, 0.0, tfs_api="")
        self.reply(status, payload)


@tornado.web.stream_request_body
class MetricsHandler(_Base):
    def get(self):
        if self._rejection is not None:
            return self.reject()
        self.set_header("Content-Type", metrics_mod.CONTENT_TYPE)
        self.finish(self.server.metrics.page())


@tornado.web.stream_request_body
class NotFoundHandler(_Base):
    def prepare(self):
        super().prepare()

    def _not_found(self, *_):
        self.reply(
            404, json_codec.dumps({"error": f"Not found: {self.request.path} (the REST API is under /v1/models/)"})
        )

    get = post = put = delete = patch = head = _not_found


def make_app(server) -> tornado.web.Application:
    return tornado.web.Application(
        [
            # http_rest_api_util.h kHTTPRestApiHandlerPathRegex "(?i)/v1/.*"
            (r"(?i)/v1/.*", ApiHandler, {"server": server}),
            (metrics_mod.PATH, MetricsHandler, {"server": server}),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={"server": server},
        compress_response=False,
    )
