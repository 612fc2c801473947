"""A local gRPC server speaking TF Serving's API, for development and tests.

`tensorflow_model_server` cannot be installed everywhere (not on this project's machines: it is on
neither PyPI nor Debian's packages, and there is no Docker engine), so this module implements the
parts of its gRPC API the project uses, over the same exported SavedModels and the same
`models.config`:

  tensorflow.serving.PredictionService   Predict, GetModelMetadata (metadata_field "signature_def")
  tensorflow.serving.ModelService        GetModelStatus

Models are loaded with `tf.saved_model.load` and called through their signatures; warm-up requests
in `assets.extra/` are replayed at load, and a failing one fails the load, as in TF Serving.
Errors carry the status codes TF Serving returns: NOT_FOUND for an unknown model or version,
INVALID_ARGUMENT for an unknown signature, missing/extra/mistyped inputs and op errors raised by
the graph (bad image bytes, failed asserts), with TF's message. It is not a production server: no
batching, no model reloading, no REST API. Use `tensorflow_model_server` in production; the client
works with both.
"""

import os
import re
import signal
import threading
from concurrent import futures
from typing import Dict, List, Mapping, Optional, Tuple

import grpc
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, status_pb2)

from flam_tf.serving import export, models_config
from flam_tf.serving import signatures as sig

SIGNATURE_DEF_FIELD = "signature_def"
_EAGER_PREAMBLE = re.compile(r"^Graph execution error:\s*(Detected at node .*?\n"
                             r"(<stack traces unavailable>\n|(\s+File .*\n)*))?", re.DOTALL)
_EAGER_SUFFIX = re.compile(r"\s*\[Op:__inference_\w+\]\s*$")
_STATUS_BY_TF_CODE = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """An error to return to the caller as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def session_message(message: str) -> str:
    """An eager function-call error message as a session run (TF Serving) reports it: without
    the "Graph execution error ... Detected at node" preamble and the "[Op:...]" suffix."""
    message = _EAGER_PREAMBLE.sub("", message)
    return _EAGER_SUFFIX.sub("", message).strip()


def _select_versions(model_config, available: List[int]) -> List[int]:
    """The versions TF Serving would load under the model's version policy."""
    policy = model_config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        missing = sorted(set(policy.specific.versions) - set(available))
        if missing:
            raise FileNotFoundError(f"Model {model_config.name}: versions {missing} not found "
                                    f"under {model_config.base_path}")
        return sorted(policy.specific.versions)
    num_versions = policy.latest.num_versions if which == "latest" else 0
    return available[-max(num_versions, 1):]


class Servable:
    """One loaded model version: its signatures (callable) and signature defs (protos).

    Args:
        name: model name.
        version: integer version.
        path: the version folder (holding saved_model.pb).
    """

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self._loaded = tf.saved_model.load(path)
        self.signatures = dict(self._loaded.signatures)
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        self.signature_defs = saved_model.meta_graphs[0].signature_def

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """Runs one PredictRequest.

        Raises:
            ServingError: INVALID_ARGUMENT for an unknown signature, bad inputs or op errors;
                other codes as the graph raises them.
        """
        name = request.model_spec.signature_name or sig.SERVING_DEFAULT
        if name not in self.signatures:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f'Serving signature name: "{name}" not found in signature def')
        fn = self.signatures[name]
        specs = fn.structured_input_signature[1]
        inputs = set(request.inputs)
        if inputs != set(specs):
            def listing(names):
                return ",".join(sorted(names))
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(inputs)}!={len(specs)} "
                f"len({{{listing(inputs)}}}) != len({{{listing(specs)}}}). "
                f"Sent extra: {{{listing(set(inputs) - set(specs))}}}. "
                f"Missing but required: {{{listing(set(specs) - set(inputs))}}}.")
        inputs = {key: self._input_tensor(key, proto, specs[key])
                  for key, proto in request.inputs.items()}
        wanted = list(request.output_filter)
        unknown = [o for o in wanted if o not in fn.structured_outputs]
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {unknown[0]} "
                               f"Outputs expected to be in the set "
                               f"{{{','.join(sorted(fn.structured_outputs))}}}.")
        try:
            outputs = fn(**inputs)
        except tf.errors.OpError as e:
            raise ServingError(_STATUS_BY_TF_CODE.get(e.error_code, grpc.StatusCode.UNKNOWN),
                               session_message(e.message)) from None
        except (TypeError, ValueError) as e:  # an input the signature's specs reject
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = name
        for key in wanted or outputs:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
        return response

    @staticmethod
    def _input_tensor(key, proto, spec):
        try:
            array = tf.make_ndarray(proto)
        except Exception as e:  # malformed TensorProto
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Input {key}: not a valid TensorProto: {e}") from None
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if dtype != spec.dtype:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expects input {key} to be {spec.dtype.name} but "
                               f"{dtype.name} is provided")
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Input {key} has shape {list(array.shape)}; the signature "
                               f"expects {spec.shape.as_list()} (None: any size)")
        return tf.constant(array, dtype=spec.dtype)


class ModelRegistry:
    """The servables named by a models.config, loaded once at start-up.

    Args:
        config_path: a text-format models.config (model_config_list).
    """

    def __init__(self, config_path: str):
        self.config = models_config.read_config(config_path)
        self.servables: Dict[str, Dict[int, Servable]] = {}
        self.labels: Dict[str, Mapping[str, int]] = {}
        for entry in self.config.model_config_list.config:
            available = export.existing_versions(entry.base_path)
            if not available:
                raise FileNotFoundError(f"Model {entry.name}: no integer version folder under "
                                        f"{entry.base_path}")
            self.servables[entry.name] = {}
            for version in _select_versions(entry, available):
                servable = Servable(entry.name, version,
                                    os.path.join(entry.base_path, str(version)))
                self._warm_up(servable)
                self.servables[entry.name][version] = servable
            self.labels[entry.name] = dict(entry.version_labels)

    @staticmethod
    def _warm_up(servable: Servable) -> None:
        path = os.path.join(servable.path, sig.WARMUP_FILE)
        if not os.path.exists(path):
            return
        for i, request in enumerate(export.read_warmup(path)):
            try:
                servable.predict(request)
            except ServingError as e:
                raise RuntimeError(f"Warm-up request {i} of {servable.name} version "
                                   f"{servable.version} failed: {e.code.name}: {e.message}") from None

    def loaded_versions(self) -> Dict[str, List[int]]:
        """model name -> sorted loaded versions."""
        return {name: sorted(v) for name, v in self.servables.items()}

    def get(self, model_spec) -> Servable:
        """The servable a ModelSpec asks for (latest version unless version or label is set).

        Raises:
            ServingError: NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for an
                unknown version label.
        """
        name = model_spec.name
        which = model_spec.WhichOneof("version_choice")
        if which == "version_label":
            label = model_spec.version_label
            if label not in self.labels.get(name, {}):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label}")
            version = self.labels[name][label]
        else:
            version = model_spec.version.value if which == "version" else None
        versions = self.servables.get(name, {})
        if version is None and versions:
            return versions[max(versions)]
        if version in versions:
            return versions[version]
        request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: {request}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):
        try:
            return self.registry.get(request.model_spec).predict(request)
        except ServingError as e:
            context.abort(e.code, e.message)

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
            for field in fields:
                if field != SIGNATURE_DEF_FIELD:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Metadata field {field} is not supported")
            servable = self.registry.get(request.model_spec)
        except ServingError as e:
            context.abort(e.code, e.message)
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

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):
        name = request.model_spec.name
        versions = self.registry.loaded_versions().get(name)
        if not versions:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Could not find any versions of model {name}")
        if request.model_spec.HasField("version"):
            wanted = request.model_spec.version.value
            if wanted not in versions:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"Could not find version {wanted} of model {name}")
            versions = [wanted]
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            response.model_version_status.add(
                version=version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                status=status_pb2.StatusProto())
        return response


def create_server(model_config_file: str, host: str = "127.0.0.1", port: int = 8500,
                  max_workers: int = 8, max_request_mb: int = 64
                  ) -> Tuple[grpc.Server, int, ModelRegistry]:
    """Loads the models and binds a (not yet started) gRPC server.

    Args:
        model_config_file: models.config (text-format ModelServerConfig).
        host: address to bind; the loopback interface by default.
        port: TCP port; 0 picks a free one.
        max_workers: threads serving concurrent requests.
        max_request_mb: largest request accepted (grpc.max_receive_message_length).

    Returns:
        (server, bound port, registry).

    Raises:
        OSError: the address cannot be bound.
    """
    registry = ModelRegistry(model_config_file)
    max_bytes = int(max_request_mb * 2 ** 20)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing it
    ])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(registry), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        raise OSError(f"Cannot bind {host}:{port}: {e}") from None
    if not bound:
        raise OSError(f"Cannot bind {host}:{port}")
    return server, bound, registry


def serve(model_config_file: str, host: str = "127.0.0.1", port: int = 8500,
          max_workers: int = 8, max_request_mb: int = 64, grace_s: float = 5.0,
          ready: Optional[threading.Event] = None) -> None:
    """Runs the server until SIGINT or SIGTERM, then stops it (in-flight requests get `grace_s`).

    Must be called from the main thread (signal handlers). `ready` is set once serving.
    """
    server, bound, registry = create_server(model_config_file, host, port, max_workers,
                                            max_request_mb)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    loaded = ", ".join(f"{m} {v}" for m, v in registry.loaded_versions().items())
    logging.info("FLAM dev server on %s:%d serving %s", host, bound, loaded)
    if ready is not None:
        ready.set()
    while not stop.wait(0.5):
        pass
    server.stop(grace_s).wait()
    logging.info("FLAM dev server stopped")
