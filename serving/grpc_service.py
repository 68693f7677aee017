"""tensorflow.serving.PredictionService and ModelService over grpcio, with the stubs of tensorflow_serving.apis.

(prediction_service_pb2 and model_service_pb2 of tensorflow-serving-api 2.16.1 fail to import under
protobuf 4's upb runtime; the *_pb2_grpc modules do not need them, so only those are used.)
"""

from __future__ import annotations

import hmac
import logging
import time

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving import inference, request_log
from serving.config import ServingConfigError, entries_from_proto
from serving.errors import Code, ServingError, from_exception, invalid
from serving.traffic import CLIENT_KEY_METADATA, VERSION_METADATA

log = logging.getLogger("serving.grpc")


def _outputs(response) -> dict:
    """A response's outputs as JSON-able lists, for the traffic log."""
    import tensorflow as tf

    if hasattr(response, "outputs"):
        return {k: tf.make_ndarray(v).tolist() for k, v in response.outputs.items()}
    from google.protobuf import json_format

    return json_format.MessageToDict(response.result)


def _spec_args(model_spec):
    if not model_spec.name:
        raise invalid("Missing ModelSpec name")
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version, model_spec.version_label or None


class _Calls:
    def __init__(self, service, metrics):
        self.service = service
        self.metrics = metrics

    def run(self, api: str, request, context, body, tfs_api: str | None = None):
        """`tfs_api`: TF Serving's API label, set for the calls it records (prediction_service_impl.cc:53)."""
        start = time.perf_counter()
        name = request.model_spec.name if hasattr(request, "model_spec") else ""
        if name and self.service.manager.entry(name) is None:
            name = "<unknown>"  # keep client-chosen values out of metric labels
        version = None
        key = None
        try:
            if tfs_api in ("Predict", "Classify", "Regress"):  # the request key goes on its log record
                key = dict(context.invocation_metadata() or ()).get(request_log.REQUEST_KEY_METADATA)
                key = key or request_log.new_request_key()
                request_log.set_request_key(key)
            version, response = body()
            code = "OK"
        except Exception as e:
            error = from_exception(e)
            if error.code in (Code.INTERNAL, Code.UNKNOWN):
                log.exception("gRPC %s failed", api)
            self.metrics.observe(name, version, api, "grpc", error.code_name, time.perf_counter() - start, tfs_api)
            context.abort(error.code, error.message)
        self.metrics.observe(name, version, api, "grpc", code, time.perf_counter() - start, tfs_api)
        if version is not None:
            trailer = ((VERSION_METADATA, str(version)),)
            if key is not None:
                trailer += ((request_log.REQUEST_KEY_METADATA, key),)
            context.set_trailing_metadata(trailer)
        return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service, metrics):
        self._calls = _Calls(service, metrics)
        self._service = service

    def _with_servable(self, request, fn, kind, context=None):
        name, version, label = _spec_args(request.model_spec)
        router = self._service.router
        key = None
        if context is not None and router.active(name):
            key = dict(context.invocation_metadata() or ()).get(CLIENT_KEY_METADATA)
        if version is None and not label:
            label = router.pick(name, key)
            if label:
                self._calls.metrics.routed.labels(name, label).inc()
        start = time.perf_counter()
        try:
            with self._service.acquire(name, version, label) as servable:
                response = fn(servable, request)
                self._service.maybe_log(kind, name, lambda: (response.model_spec, request, response))
        except Exception as e:
            if router.active(name):
                router.record(
                    name,
                    router.new_request_id(),
                    "primary",
                    "grpc",
                    kind[:-4],
                    label,
                    None,
                    time.perf_counter() - start,
                    from_exception(e).code_name,
                    None,
                    key,
                )
            raise
        if router.active(name):
            request_id = router.new_request_id()
            router.record(
                name,
                request_id,
                "primary",
                "grpc",
                kind[:-4],
                label,
                servable.version,
                time.perf_counter() - start,
                None,
                _outputs(response),
                key,
            )
            if label != router.shadow_label(name):
                router.submit_shadow(
                    name, request_id, "grpc", kind[:-4], lambda shadow: self._shadow(request, fn, shadow)
                )
        return servable.version, response

    def _shadow(self, request, fn, label):
        name = request.model_spec.name
        with self._service.manager.acquire(name, None, label) as servable:
            return servable.version, _outputs(fn(servable, request))

    def Predict(self, request, context):
        return self._calls.run(
            "predict",
            request,
            context,
            lambda: self._with_servable(request, inference.predict_from_proto, "predict_log", context),
            "Predict",
        )

    def Classify(self, request, context):
        return self._calls.run(
            "classify",
            request,
            context,
            lambda: self._with_servable(request, inference.classify_from_proto, "classify_log", context),
            "Classify",
        )

    def Regress(self, request, context):
        return self._calls.run(
            "regress",
            request,
            context,
            lambda: self._with_servable(request, inference.regress_from_proto, "regress_log", context),
            "Regress",
        )

    def GetModelMetadata(self, request, context):
        def body():
            name, version, label = _spec_args(request.model_spec)
            return self._service.metadata(name, version, label, request.metadata_field)

        return self._calls.run("metadata", request, context, body)

    def MultiInference(self, request, context):
        def body():
            if not request.tasks:
                raise invalid("MultiInferenceRequest has no tasks; add one classify or regress task per signature")
            name, version, label = _spec_args(request.tasks[0].model_spec)
            with self._service.acquire(name, version, label) as servable:
                return servable.version, inference.multi_inference(servable, request)

        return self._calls.run("multi_inference", request, context, body)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service, metrics, one_of_several: bool = False):
        self._calls = _Calls(service, metrics)
        self._service = service
        self._one_of_several = one_of_several  # --num_processes > 1: a reload would reach one process only

    def GetModelStatus(self, request, context):
        def body():
            name, version, label = _spec_args(request.model_spec)
            return None, self._service.status(name, version, label)

        return self._calls.run("status", request, context, body)

    def HandleReloadConfigRequest(self, request, context):
        from tensorflow_serving.apis import model_management_pb2

        start = time.perf_counter()
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if self._one_of_several:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    "this server runs several processes (--num_processes) and a reload would reach only one: "
                    "change the --model_config_file instead (re-read every --model_config_file_poll_wait_seconds)",
                )
            entries = entries_from_proto(request.config)
            if not entries:
                raise invalid("ReloadConfigRequest has an empty model_config_list")
            self._service.manager.reload(entries)
            code = Code.OK
        except ServingConfigError as e:
            code = Code.INVALID_ARGUMENT
            response.status.error_code, response.status.error_message = code.value[0], str(e)
        except Exception as e:
            error = from_exception(e)
            code = error.code
            response.status.error_code, response.status.error_message = code.value[0], error.message
        self._calls.metrics.observe("", None, "reload", "grpc", code.name, time.perf_counter() - start)
        if code != Code.OK:
            context.abort(code, response.status.error_message)
        return response


class _AuthInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` metadata on every call."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "Missing or wrong bearer token: send metadata ('authorization', 'Bearer <token>')",
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                sent = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(sent, self._expected):
                    return continuation(handler_call_details)
        return self._deny


def make_server(service, metrics, executor, options) -> grpc.Server:
    interceptors = [_AuthInterceptor(options.auth_token)] if options.auth_token else []
    limit = options.max_request_bytes
    server = grpc.server(
        executor,
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if options.reuse_port else 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(service, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(service, metrics, one_of_several=options.reuse_port), server
    )
    return server
