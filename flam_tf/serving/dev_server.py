"""A local gRPC server speaking TF Serving's API, for development and tests.

For machines without `tensorflow_model_server`: it serves the same exported SavedModels from the
same `models.config`, implementing the parts of TF Serving's gRPC API the project uses:

  tensorflow.serving.PredictionService   Predict, GetModelMetadata (metadata_field "signature_def")
  tensorflow.serving.ModelService        GetModelStatus

Loading and running the models is `servables.py` (`ModelRegistry`, `Servable`), with TF Serving's
status codes and its checks of each input's declared size. It is not a production server: no
batching, no model reloading, no REST API. Use `tensorflow_model_server` in production; the client
works with both.

Hostile input: the port is bound before any model loads (a taken port fails at once); error
messages are valid UTF-8 of at most MAX_MESSAGE_BYTES; SIGINT / SIGTERM stop accepting requests
and let in-flight ones finish within a grace period.
"""

import signal
import threading
from concurrent import futures
from typing import Dict, List, Optional, Tuple

import grpc
from absl import logging
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    status_pb2,
)

from flam_tf.serving.servables import DEFAULT_MAX_REQUEST_MB, ModelRegistry, Servable, ServingError

SIGNATURE_DEF_FIELD = "signature_def"
# Longest error message sent (UTF-8 bytes): gRPC sends it percent-encoded in trailing metadata,
# whose default limit (8 KiB) a longer one would exceed (the client then sees RESOURCE_EXHAUSTED).
MAX_MESSAGE_BYTES = 2000
DEFAULT_GRACE_S = 10.0


def clean_message(message) -> str:
    """`message` as sent in a gRPC status: valid UTF-8, at most MAX_MESSAGE_BYTES bytes."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", errors="replace")
    data = str(message).encode("utf-8", errors="replace")
    if len(data) <= MAX_MESSAGE_BYTES:
        return data.decode("utf-8", errors="replace")
    return data[: MAX_MESSAGE_BYTES - 3].decode("utf-8", errors="ignore") + "..."


class PendingRegistry:
    """Stands in for the ModelRegistry while the models load: the port is bound first (so a taken
    port fails at once), the registry is set once loaded, and only then is the server started."""

    def __init__(self):
        self.registry: Optional[ModelRegistry] = None

    def get(self, model_spec) -> Servable:
        if self.registry is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "The models are still loading")
        return self.registry.get(model_spec)

    def loaded_versions(self) -> Dict[str, List[int]]:
        return self.registry.loaded_versions() if self.registry is not None else {}


def _abort(context, code: grpc.StatusCode, message) -> None:
    context.abort(code, clean_message(message))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

    def __init__(self, registry):
        self.registry = registry  # a ModelRegistry or a PendingRegistry

    def Predict(self, request, context):
        try:
            return self.registry.get(request.model_spec).predict(request)
        except ServingError as e:
            _abort(context, e.code, e.message)

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in fields:
                if field != SIGNATURE_DEF_FIELD:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported"
                    )
            servable = self.registry.get(request.model_spec)
        except ServingError as e:
            _abort(context, e.code, e.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus (every loaded version is AVAILABLE)."""

    def __init__(self, registry):
        self.registry = registry  # a ModelRegistry or a PendingRegistry

    def GetModelStatus(self, request, context):
        name = request.model_spec.name
        versions = self.registry.loaded_versions().get(name)
        if not versions:
            _abort(
                context, grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )
        if request.model_spec.HasField("version"):
            wanted = request.model_spec.version.value
            if wanted not in versions:
                _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {wanted} of model {name}",
                )
            versions = [wanted]
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            response.model_version_status.add(
                version=version,
                state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                status=status_pb2.StatusProto(),
            )
        return response


def create_server(
    model_config_file: str,
    host: str = "127.0.0.1",
    port: int = 8500,
    max_workers: int = 8,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
) -> Tuple[grpc.Server, int, ModelRegistry]:
    """Binds a gRPC server, then loads the models; returns it bound but not yet started.

    The address is bound BEFORE any model loads, so a taken port fails at once.

    Args:
        model_config_file: models.config (text-format ModelServerConfig).
        host: address to bind; the loopback interface by default.
        port: TCP port; 0 picks a free one.
        max_workers: threads serving concurrent requests.
        max_request_mb: largest request accepted (grpc.max_receive_message_length), and the
            largest tensor the inputs of one request may declare.

    Returns:
        (server, bound port, registry).

    Raises:
        OSError: "Cannot bind host:port", before anything is loaded.
    """
    max_bytes = int(max_request_mb * 2**20)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing it
        ],
    )
    pending = PendingRegistry()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(pending), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(pending), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        raise OSError(f"Cannot bind {host}:{port}: {e}") from None
    if not bound:
        raise OSError(f"Cannot bind {host}:{port}")
    try:
        pending.registry = ModelRegistry(model_config_file, max_request_bytes=max_bytes)
    except BaseException:
        # Releases the port (stopping a server that never started does not); requests meanwhile
        # get UNAVAILABLE from the PendingRegistry.
        server.start()
        server.stop(None).wait()
        raise
    return server, bound, pending.registry


def drain(server: grpc.Server, grace_s: float) -> None:
    """Stops `server`: new requests are refused at once, in-flight ones get `grace_s` seconds to
    finish (then they are cancelled); returns once it has stopped."""
    server.stop(grace_s).wait()


def serve(
    model_config_file: str,
    host: str = "127.0.0.1",
    port: int = 8500,
    max_workers: int = 8,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    grace_s: float = DEFAULT_GRACE_S,
    ready: Optional[threading.Event] = None,
    stop: Optional[threading.Event] = None,
) -> None:
    """Runs the server until SIGINT or SIGTERM (or `stop` is set), then drains it.

    On the first signal the server refuses new requests and lets in-flight ones finish within
    `grace_s` seconds; a second signal cancels them at once. Signal handlers are installed only
    when called from the main thread (a caller on another thread stops it with `stop`).
    `ready` is set once serving.
    """
    server, bound, registry = create_server(
        model_config_file, host, port, max_workers, max_request_mb
    )
    stop = stop if stop is not None else threading.Event()
    signals = []

    def on_signal(*_):
        signals.append(1)
        if len(signals) > 1:
            logging.info("Second signal: cancelling in-flight requests")
            server.stop(0)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
    server.start()
    loaded = ", ".join(f"{m} {v}" for m, v in registry.loaded_versions().items())
    logging.info("FLAM dev server on %s:%d serving %s", host, bound, loaded)
    if ready is not None:
        ready.set()
    while not stop.wait(0.5):
        pass
    logging.info("FLAM dev server draining: in-flight requests get %.1f s", grace_s)
    drain(server, grace_s)
    logging.info("FLAM dev server stopped")
