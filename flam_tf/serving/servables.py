"""The models a models.config names, loaded and run as TF Serving runs them: the dev server's core.

`ModelRegistry` loads the versions each model's version policy selects (`tf.saved_model.load`) and
replays their warm-up requests (a failing one fails the load, as in TF Serving). `Servable.predict`
runs one PredictRequest through a signature. Errors are `ServingError`s carrying the status codes
TF Serving returns: NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for an unknown
signature, missing/extra/mistyped inputs and op errors raised by the graph (bad image bytes, failed
asserts), with TF's message.

Hostile input: each input TensorProto's DECLARED size is checked before a tensor is built from it
(`declared_size`: at most the request byte cap in all, at most the signature's maximum batch of
rows, as `tf.make_ndarray` would expand a single value to the declared shape).
"""

import os
import re
from typing import Dict, List, Mapping, Optional

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2

from flam_tf.serving import models_config
from flam_tf.serving import signatures as sig
from flam_tf.serving.versions import existing_versions
from flam_tf.serving.warmup import read_warmup

_EAGER_PREAMBLE = re.compile(
    r"^Graph execution error:\s*(Detected at node .*?\n"
    r"(<stack traces unavailable>\n|(\s+File .*\n)*))?",
    re.DOTALL,
)
_EAGER_SUFFIX = re.compile(r"\s*\[Op:__inference_\w+\]\s*$")
_STATUS_BY_TF_CODE = {code.value[0]: code for code in grpc.StatusCode}
# Maximum rows of each input per request, by input name (the signatures assert the same).
MAX_ROWS = {
    sig.IMAGE_BYTES: sig.MAX_IMAGES_PER_REQUEST,
    sig.IMAGES: sig.MAX_IMAGES_PER_REQUEST,
    sig.FEATURE: sig.MAX_FEATURES_PER_REQUEST,
    sig.ATTRIBUTE: sig.MAX_FEATURES_PER_REQUEST,
    sig.VALUE: sig.MAX_FEATURES_PER_REQUEST,
}
DEFAULT_MAX_REQUEST_MB = 64


class ServingError(Exception):
    """An error to return to the caller as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def declared_size(key: str, proto, max_bytes: int, max_rows: Optional[int]) -> int:
    """Bytes the tensor of an input TensorProto would take, from its declared shape, checked
    BEFORE the tensor is built (`tf.make_ndarray` expands one value to the whole shape).

    Like TF (Tensor::FromProto), fewer values than elements are accepted (the last one repeats;
    none: zeros); more values than elements, or `tensor_content` of the wrong length, are refused.

    Raises:
        ServingError: INVALID_ARGUMENT for an unknown rank or dimension, more than `max_rows`
            rows, a tensor over `max_bytes`, or a value count that does not fit the shape.
    """

    def refuse(message):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Input {key}: {message}")

    shape = proto.tensor_shape
    if shape.unknown_rank:
        refuse("the tensor has an unknown rank")
    dims = [d.size for d in shape.dim]
    if any(d < 0 for d in dims):
        refuse(f"the tensor has an unknown or negative dimension: {dims}")
    if dims and max_rows is not None and dims[0] > max_rows:
        refuse(
            f"At most {max_rows} rows per request (the signature's maximum batch). "
            f"Received: {dims[0]}"
        )
    elements = 1
    for d in dims:
        elements *= d
    dtype = tf.dtypes.as_dtype(proto.dtype)
    if dtype == tf.string:
        values = proto.string_val
        count = len(values)
        size = sum(len(v) for v in values) + max(elements - count, 0) * (
            len(values[-1]) if count else 0
        )
    else:
        count = None if proto.tensor_content else _value_count(proto)
        size = elements * max(dtype.size, 1)
    if size > max_bytes:
        refuse(
            f"the tensor of shape {dims} would take {size} bytes, more than the "
            f"{max_bytes} bytes a request may hold (max_request_mb)"
        )
    if proto.tensor_content and len(proto.tensor_content) != size:
        refuse(
            f"tensor_content holds {len(proto.tensor_content)} bytes; shape {dims} of "
            f"{dtype.name} needs {size}"
        )
    if count is not None and count > elements:
        refuse(f"{count} values given for a tensor of shape {dims} ({elements} elements)")
    return size


_VALUE_FIELDS = (
    "half_val",
    "float_val",
    "double_val",
    "int_val",
    "int64_val",
    "bool_val",
    "scomplex_val",
    "dcomplex_val",
    "uint32_val",
    "uint64_val",
    "float8_val",
)


def _value_count(proto) -> int:
    """Number of values a TensorProto lists in its typed *_val field."""
    count = 0
    for field in _VALUE_FIELDS:
        if hasattr(proto, field):
            n = len(getattr(proto, field))
            count = max(count, n // 2 if field.endswith("complex_val") else n)
    return count


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
            raise FileNotFoundError(
                f"Model {model_config.name}: versions {missing} not found "
                f"under {model_config.base_path}"
            )
        return sorted(policy.specific.versions)
    num_versions = policy.latest.num_versions if which == "latest" else 0
    return available[-max(num_versions, 1) :]


class Servable:
    """One loaded model version: its signatures (callable) and signature defs (protos).

    Args:
        name: model name.
        version: integer version.
        path: the version folder (holding saved_model.pb).
        max_request_bytes: the largest tensor (and all inputs together) a request may declare.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_MB * 2**20,
    ):
        self.name, self.version, self.path = name, version, path
        self.max_request_bytes = int(max_request_bytes)
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
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{name}" not found in signature def',
            )
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
                f"Missing but required: {{{listing(set(specs) - set(inputs))}}}.",
            )
        total = 0
        for key, proto in request.inputs.items():  # declared sizes first: nothing built yet
            self._check_dtype(key, proto, specs[key])
            total += declared_size(key, proto, self.max_request_bytes, MAX_ROWS.get(key))
        if total > self.max_request_bytes:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"The inputs would take {total} bytes, more than the "
                f"{self.max_request_bytes} bytes a request may hold "
                f"(max_request_mb)",
            )
        inputs = {
            key: self._input_tensor(key, proto, specs[key]) for key, proto in request.inputs.items()
        }
        wanted = list(request.output_filter)
        unknown = [o for o in wanted if o not in fn.structured_outputs]
        if unknown:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {unknown[0]} "
                f"Outputs expected to be in the set "
                f"{{{','.join(sorted(fn.structured_outputs))}}}.",
            )
        try:
            outputs = fn(**inputs)
        except tf.errors.OpError as e:
            raise ServingError(
                _STATUS_BY_TF_CODE.get(e.error_code, grpc.StatusCode.UNKNOWN),
                session_message(e.message),
            ) from None
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
    def _check_dtype(key, proto, spec):
        try:
            dtype = tf.dtypes.as_dtype(proto.dtype)
        except TypeError:
            dtype = None
        if dtype != spec.dtype:
            name = dtype.name if dtype is not None else f"DataType {proto.dtype}"
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects input {key} to be {spec.dtype.name} but {name} is provided",
            )

    @staticmethod
    def _input_tensor(key, proto, spec):
        try:
            array = tf.make_ndarray(proto)
        except Exception as e:  # malformed TensorProto
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Input {key}: not a valid TensorProto: {e}"
            ) from None
        if not spec.shape.is_compatible_with(array.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Input {key} has shape {list(array.shape)}; the signature "
                f"expects {spec.shape.as_list()} (None: any size)",
            )
        return tf.constant(array, dtype=spec.dtype)


class ModelRegistry:
    """The servables named by a models.config, loaded once at start-up.

    Args:
        config_path: a text-format models.config (model_config_list).
        max_request_bytes: request byte cap; no input tensor may declare more.
    """

    def __init__(self, config_path: str, max_request_bytes: int = DEFAULT_MAX_REQUEST_MB * 2**20):
        self.config = models_config.read_config(config_path)
        self.servables: Dict[str, Dict[int, Servable]] = {}
        self.labels: Dict[str, Mapping[str, int]] = {}
        for entry in self.config.model_config_list.config:
            available = existing_versions(entry.base_path)
            if not available:
                raise FileNotFoundError(
                    f"Model {entry.name}: no integer version folder under {entry.base_path}"
                )
            self.servables[entry.name] = {}
            for version in _select_versions(entry, available):
                servable = Servable(
                    entry.name,
                    version,
                    os.path.join(entry.base_path, str(version)),
                    max_request_bytes,
                )
                self._warm_up(servable)
                self.servables[entry.name][version] = servable
            self.labels[entry.name] = dict(entry.version_labels)

    @staticmethod
    def _warm_up(servable: Servable) -> None:
        path = os.path.join(servable.path, sig.WARMUP_FILE)
        if not os.path.exists(path):
            return
        for i, request in enumerate(read_warmup(path)):
            try:
                servable.predict(request)
            except ServingError as e:
                raise RuntimeError(
                    f"Warm-up request {i} of {servable.name} version "
                    f"{servable.version} failed: {e.code.name}: {e.message}"
                ) from None

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
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {label}",
                )
            version = self.labels[name][label]
        else:
            version = model_spec.version.value if which == "version" else None
        versions = self.servables.get(name, {})
        if version is None and versions:
            return versions[max(versions)]
        if version in versions:
            return versions[version]
        request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
