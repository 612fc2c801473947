"""gRPC client of the served FLAM models (TF Serving or `python -m serving.dev_server`).

    client = FlamClient("127.0.0.1:8500")
    query = client.extract([open("q.jpg", "rb").read()])           # [1, D]
    query = client.manipulate(query, *parse_edits("color=red,pattern=striped"))
    ids, scores = client.search(query, k=10)                        # [1, 10] each
    ids, scores = client.retrieve([image], "color", "red", k=10)    # the three, one version

Every call has a deadline (`timeout_s`), sets `model_spec.name` and `signature_name` explicitly,
retries UNAVAILABLE with exponential backoff, and raises `FlamServingError` (gRPC code + server
message) for anything else. The command line `python -m serving.client` is `client_cli.py`.

Consistent versions (`consistent_versions=True`, the default): a feature is only meaningful to the
manipulator and searcher of the export whose extractor made it, and a server moving to a new
export loads each model on its own (TF Serving), so for a while it can serve extractor V+1 beside
searcher V. The client therefore pins every request to one version (`model_spec.version`): the
highest version AVAILABLE for all three models (GetModelStatus), chosen at the first call and kept
until the server no longer has it (NOT_FOUND), when it is chosen again once and the call retried.
`retrieve` and `call_consistent` run several calls on one version, retried from the start.
"""

import threading
import time
from typing import Callable, Dict, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from flam_tf.serving import signatures as sig
from flam_tf.serving.closing import Closing

Strings = Union[str, Sequence[str]]
T = TypeVar("T")


class FlamServingError(RuntimeError):
    """A failed serving call: `code` (grpc.StatusCode) and the server's `message`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


def parse_edits(edits: Strings) -> Tuple[str, str]:
    """Turns "color=red,pattern=striped" (or ["color=red", "pattern=striped"]) into the
    manipulator's (attribute, value) strings: ("color;pattern", "red;striped").

    Raises:
        ValueError: an edit is not of the form attribute=value, or there are none.
    """
    items = (
        edits.split(",")
        if isinstance(edits, str)
        else [part for e in edits for part in e.split(",")]
    )
    pairs = []
    for item in (i.strip() for i in items):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"Expected attribute=value edits, e.g. color=red. Received: {item!r}")
        pairs.append((name.strip(), value.strip()))
    if not pairs:
        raise ValueError("No edit given; expected e.g. color=red,pattern=striped")
    return (
        sig.EDIT_SEPARATOR.join(p[0] for p in pairs),
        sig.EDIT_SEPARATOR.join(p[1] for p in pairs),
    )


class FlamClient(Closing):
    """Client of the extractor, manipulator and searcher models.

    Args:
        server: "host:port" of the gRPC endpoint.
        timeout_s: deadline of each call, seconds.
        retries: how many times an UNAVAILABLE call is retried (backoff 0.1 s, doubling).
        max_message_mb: largest message sent or received.
        consistent_versions: pin the model calls to one version available for all three models
            (see the module docstring); False sends no version (each model's latest).
    """

    def __init__(
        self,
        server: str = "127.0.0.1:8500",
        timeout_s: float = 10.0,
        retries: int = 3,
        max_message_mb: int = 64,
        consistent_versions: bool = True,
    ):
        self.server, self.timeout_s, self.retries = server, timeout_s, retries
        self.consistent_versions = consistent_versions
        self._version: Optional[int] = None
        self._version_lock = threading.Lock()
        size = int(max_message_mb * 2**20)
        self._channel = grpc.insecure_channel(
            server,
            options=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
            ],
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(0.1 * 2**attempt)
                    continue
                raise FlamServingError(e.code(), e.details() or "") from None

    def predict(
        self,
        model: str,
        signature: str,
        inputs: Dict[str, np.ndarray],
        version: Optional[int] = None,
    ) -> Dict[str, np.ndarray]:
        """One Predict call; returns output name -> numpy array (strings as bytes objects)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = int(version)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._predict.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    # -- Consistent versions ------------------------------------------------------------------

    def common_version(self) -> Optional[int]:
        """The highest version AVAILABLE for all three models (GetModelStatus of each).

        Returns None if the server does not implement GetModelStatus (requests then name no
        version).

        Raises:
            FlamServingError: NOT_FOUND if no version is available for all three models.
        """
        available = {}
        for model in sig.MODEL_NAMES:
            try:
                status = self.model_status(model)
            except FlamServingError as e:
                if e.code == grpc.StatusCode.UNIMPLEMENTED:
                    return None
                raise
            available[model] = sorted(v for v, state in status.items() if state == "AVAILABLE")
        common = set.intersection(*(set(v) for v in available.values()))
        if not common:
            raise FlamServingError(
                grpc.StatusCode.NOT_FOUND,
                f"No version is available for all of {list(sig.MODEL_NAMES)} "
                f"on {self.server}: {available}",
            )
        return max(common)

    @property
    def version(self) -> Optional[int]:
        """The version the model calls are pinned to (None before the first call or unpinned)."""
        return self._version

    def _pin(self, refresh: bool = False) -> Optional[int]:
        if not self.consistent_versions:
            return None
        with self._version_lock:
            if self._version is None or refresh:
                self._version = self.common_version()
            return self._version

    def call_consistent(self, run: Callable[[Optional[int]], T]) -> T:
        """Returns `run(version)`, where `run` passes `version` to the model calls it makes (e.g.
        `lambda v: c.search(c.extract(images, version=v), version=v)`), so all of them use one
        version. If the server no longer has it (NOT_FOUND), the version is chosen again and
        `run` repeated once from the start. Without `consistent_versions`, version is None."""
        version = self._pin()
        try:
            return run(version)
        except FlamServingError as e:
            if version is None or e.code != grpc.StatusCode.NOT_FOUND:
                raise
        return run(self._pin(refresh=True))

    def _model_call(
        self, model: str, signature: str, inputs: Dict[str, np.ndarray], version: Optional[int]
    ) -> Dict[str, np.ndarray]:
        if version is not None:  # the caller pinned it
            return self.predict(model, signature, inputs, version)
        return self.call_consistent(lambda v: self.predict(model, signature, inputs, v))

    # -- Model calls (each pinned to the consistent version unless `version` is given) ----------

    def extract(
        self, image_bytes_list: Sequence[bytes], version: Optional[int] = None
    ) -> np.ndarray:
        """Encoded JPEG/PNG images (list of bytes, length B) -> float32 features [B, D]."""
        data = np.array(list(image_bytes_list), dtype=object)
        return self._model_call(
            sig.EXTRACTOR, sig.SERVING_DEFAULT, {sig.IMAGE_BYTES: data}, version
        )[sig.FEATURE]

    def extract_pixels(self, images: np.ndarray, version: Optional[int] = None) -> np.ndarray:
        """uint8 images [B, H, W, 3] (any size; resized by the server) -> features [B, D]."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 [B, H, W, 3]. Received: {images.dtype} {images.shape}"
            )
        return self._model_call(sig.EXTRACTOR, sig.FROM_PIXELS, {sig.IMAGES: images}, version)[
            sig.FEATURE
        ]

    def manipulate(
        self,
        features: np.ndarray,
        attribute: Strings,
        value: Strings,
        version: Optional[int] = None,
    ) -> np.ndarray:
        """Edits features [B, D]: attribute/value are one string for every row or one per row;
        "color;pattern" with "red;striped" applies two edits in sequence (see `parse_edits`)."""
        features = np.asarray(features, np.float32)
        rows = len(features)
        column = lambda x: np.array(  # noqa: E731
            [x] * rows if isinstance(x, str) else list(x), dtype=object
        )
        return self._model_call(
            sig.MANIPULATOR,
            sig.SERVING_DEFAULT,
            {sig.FEATURE: features, sig.ATTRIBUTE: column(attribute), sig.VALUE: column(value)},
            version,
        )[sig.FEATURE]

    def describe(
        self, features: np.ndarray, version: Optional[int] = None
    ) -> Dict[str, np.ndarray]:
        """features [B, D] -> {attribute: class names str [B], attribute_score: float32 [B]}."""
        out = self._model_call(
            sig.MANIPULATOR, sig.DESCRIBE, {sig.FEATURE: np.asarray(features, np.float32)}, version
        )
        return {k: v.astype(str) if v.dtype == object else v for k, v in out.items()}

    def search(
        self, features: np.ndarray, k: Optional[int] = None, version: Optional[int] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """features [B, D] -> (ids str [B, k], cosine scores float32 [B, k]), best first.

        k is capped at the K the searcher was exported with.
        """
        out = self._model_call(
            sig.SEARCHER,
            sig.SERVING_DEFAULT,
            {sig.FEATURE: np.asarray(features, np.float32)},
            version,
        )
        ids, scores = out[sig.IDS].astype(str), out[sig.SCORES]
        return (ids[:, :k], scores[:, :k]) if k is not None else (ids, scores)

    def retrieve(
        self,
        image_bytes_list: Sequence[bytes],
        attribute: Optional[Strings] = None,
        value: Optional[Strings] = None,
        k: Optional[int] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The whole pipeline on one version: extract -> manipulate (if `attribute` is given)
        -> search. Returns (ids str [B, k], scores float32 [B, k])."""

        def run(version):
            features = self.extract(image_bytes_list, version=version)
            if attribute is not None:
                features = self.manipulate(features, attribute, value, version=version)
            return self.search(features, k, version=version)

        return self.call_consistent(run)

    def signature_defs(self, model: str):
        """GetModelMetadata: the model's signature defs (name -> SignatureDef)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append("signature_def")
        response = self._call(self._predict.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def model_status(self, model: str) -> Dict[int, str]:
        """GetModelStatus: version -> state name (e.g. "AVAILABLE")."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self._call(self._models.GetModelStatus, request)
        state = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: state(s.state) for s in response.model_version_status}

    def wait_until_available(
        self, models: Sequence[str] = sig.MODEL_NAMES, timeout_s: float = 60.0
    ) -> None:
        """Blocks until every model has an AVAILABLE version (FlamServingError on timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if all("AVAILABLE" in self.model_status(m).values() for m in models):
                    return
                error = None
            except FlamServingError as e:
                error = e
            if time.monotonic() > deadline:
                raise FlamServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"models {list(models)} not available on {self.server} "
                    f"after {timeout_s:.0f} s ({error})",
                )
            time.sleep(0.2)
