"""gRPC client of the served FLAM models (TF Serving or `python -m serving.dev_server`).

    client = FlamClient("127.0.0.1:8500")
    query = client.extract([open("q.jpg", "rb").read()])           # [1, D]
    query = client.manipulate(query, *parse_edits("color=red,pattern=striped"))
    ids, scores = client.search(query, k=10)                        # [1, 10] each
    ids, scores = client.retrieve([image], "color", "red", k=10)    # the three, one version

Every call has a deadline (`timeout_s`), sets `model_spec.name` and `signature_name` explicitly,
retries UNAVAILABLE with exponential backoff, and raises `FlamServingError` (gRPC code + server
message) for anything else. `run_cli` is the command line behind `python -m serving.client`.

Consistent versions (`consistent_versions=True`, the default): a feature is only meaningful to the
manipulator and searcher of the export whose extractor made it, and a server moving to a new
export loads each model on its own (TF Serving), so for a while it can serve extractor V+1 beside
searcher V. The client therefore pins every request to one version (`model_spec.version`): the
highest version AVAILABLE for all three models (GetModelStatus), chosen at the first call and kept
until the server no longer has it (NOT_FOUND), when it is chosen again once and the call retried.
`retrieve` and `call_consistent` run several calls on one version, retried from the start.
"""

import os
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from flam_tf import vocabulary
from flam_tf.serving import signatures as sig

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
    items = edits.split(",") if isinstance(edits, str) else [
        part for e in edits for part in e.split(",")]
    pairs = []
    for item in (i.strip() for i in items):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"Expected attribute=value edits, e.g. color=red. Received: {item!r}")
        pairs.append((name.strip(), value.strip()))
    if not pairs:
        raise ValueError("No edit given; expected e.g. color=red,pattern=striped")
    return (sig.EDIT_SEPARATOR.join(p[0] for p in pairs),
            sig.EDIT_SEPARATOR.join(p[1] for p in pairs))


class FlamClient:
    """Client of the extractor, manipulator and searcher models.

    Args:
        server: "host:port" of the gRPC endpoint.
        timeout_s: deadline of each call, seconds.
        retries: how many times an UNAVAILABLE call is retried (backoff 0.1 s, doubling).
        max_message_mb: largest message sent or received.
        consistent_versions: pin the model calls to one version available for all three models
            (see the module docstring); False sends no version (each model's latest).
    """

    def __init__(self, server: str = "127.0.0.1:8500", timeout_s: float = 10.0,
                 retries: int = 3, max_message_mb: int = 64, consistent_versions: bool = True):
        self.server, self.timeout_s, self.retries = server, timeout_s, retries
        self.consistent_versions = consistent_versions
        self._version: Optional[int] = None
        self._version_lock = threading.Lock()
        size = int(max_message_mb * 2 ** 20)
        self._channel = grpc.insecure_channel(server, options=[
            ("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(0.1 * 2 ** attempt)
                    continue
                raise FlamServingError(e.code(), e.details() or "") from None

    def predict(self, model: str, signature: str, inputs: Dict[str, np.ndarray],
                version: Optional[int] = None) -> Dict[str, np.ndarray]:
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
            raise FlamServingError(grpc.StatusCode.NOT_FOUND,
                                   f"No version is available for all of {list(sig.MODEL_NAMES)} "
                                   f"on {self.server}: {available}")
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

    def _model_call(self, model: str, signature: str, inputs: Dict[str, np.ndarray],
                    version: Optional[int]) -> Dict[str, np.ndarray]:
        if version is not None:  # the caller pinned it
            return self.predict(model, signature, inputs, version)
        return self.call_consistent(lambda v: self.predict(model, signature, inputs, v))

    # -- Model calls (each pinned to the consistent version unless `version` is given) ----------

    def extract(self, image_bytes_list: Sequence[bytes], version: Optional[int] = None
                ) -> np.ndarray:
        """Encoded JPEG/PNG images (list of bytes, length B) -> float32 features [B, D]."""
        data = np.array(list(image_bytes_list), dtype=object)
        return self._model_call(sig.EXTRACTOR, sig.SERVING_DEFAULT, {sig.IMAGE_BYTES: data},
                                version)[sig.FEATURE]

    def extract_pixels(self, images: np.ndarray, version: Optional[int] = None) -> np.ndarray:
        """uint8 images [B, H, W, 3] (any size; resized by the server) -> features [B, D]."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [B, H, W, 3]. Received: {images.dtype} "
                             f"{images.shape}")
        return self._model_call(sig.EXTRACTOR, sig.FROM_PIXELS, {sig.IMAGES: images},
                                version)[sig.FEATURE]

    def manipulate(self, features: np.ndarray, attribute: Strings, value: Strings,
                   version: Optional[int] = None) -> np.ndarray:
        """Edits features [B, D]: attribute/value are one string for every row or one per row;
        "color;pattern" with "red;striped" applies two edits in sequence (see `parse_edits`)."""
        features = np.asarray(features, np.float32)
        rows = len(features)
        column = lambda x: np.array(  # noqa: E731
            [x] * rows if isinstance(x, str) else list(x), dtype=object)
        return self._model_call(sig.MANIPULATOR, sig.SERVING_DEFAULT, {
            sig.FEATURE: features, sig.ATTRIBUTE: column(attribute),
            sig.VALUE: column(value)}, version)[sig.FEATURE]

    def describe(self, features: np.ndarray, version: Optional[int] = None
                 ) -> Dict[str, np.ndarray]:
        """features [B, D] -> {attribute: class names str [B], attribute_score: float32 [B]}."""
        out = self._model_call(sig.MANIPULATOR, sig.DESCRIBE,
                               {sig.FEATURE: np.asarray(features, np.float32)}, version)
        return {k: v.astype(str) if v.dtype == object else v for k, v in out.items()}

    def search(self, features: np.ndarray, k: Optional[int] = None,
               version: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """features [B, D] -> (ids str [B, k], cosine scores float32 [B, k]), best first.

        k is capped at the K the searcher was exported with.
        """
        out = self._model_call(sig.SEARCHER, sig.SERVING_DEFAULT,
                               {sig.FEATURE: np.asarray(features, np.float32)}, version)
        ids, scores = out[sig.IDS].astype(str), out[sig.SCORES]
        return (ids[:, :k], scores[:, :k]) if k is not None else (ids, scores)

    def retrieve(self, image_bytes_list: Sequence[bytes], attribute: Optional[Strings] = None,
                 value: Optional[Strings] = None, k: Optional[int] = None
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

    def wait_until_available(self, models: Sequence[str] = sig.MODEL_NAMES,
                             timeout_s: float = 60.0) -> None:
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
                raise FlamServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"models {list(models)} not available on {self.server} "
                                       f"after {timeout_s:.0f} s ({error})")
            time.sleep(0.2)


# ----------------------------------------------------------------------------------------------
# Command line (python -m serving.client).

COMMANDS = ("extract", "manipulate", "describe", "search")


def _contact_sheet(path: str, queries: List[str], ids: np.ndarray, scores: np.ndarray,
                   gallery_root: str, thumb: int = 128) -> None:
    """One row per query: the query image, then its results captioned with rank and score."""
    from PIL import Image, ImageDraw

    rows, cols = ids.shape[0], ids.shape[1] + 1
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)

    def paste(image_path, row, col, caption):
        x, y = col * thumb, row * (thumb + 14)
        try:
            with Image.open(image_path) as image:
                sheet.paste(image.convert("RGB").resize((thumb, thumb)), (x, y))
        except OSError:
            draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], outline="red")
        draw.text((x + 2, y + thumb), caption, fill="black")

    for r in range(rows):
        paste(queries[r] if r < len(queries) else "", r, 0, "query")
        for c in range(ids.shape[1]):
            paste(os.path.join(gallery_root, ids[r, c]), r, c + 1, f"#{c + 1} {scores[r, c]:.3f}")
    sheet.save(path)


def run_cli(command: str, server: str = "127.0.0.1:8500", images: Sequence[str] = (),
            feature_npy: Optional[str] = None, sets: Sequence[str] = (), k: int = 10,
            output: Optional[str] = None, contact_sheet: Optional[str] = None,
            gallery_root: Optional[str] = None, timeout_s: float = 10.0, out=None,
            index: Optional[str] = None, collection: Optional[str] = None) -> int:
    """Runs one client command; prints tables to `out` (stdout) and errors as one line on stderr.

    Args:
        command: one of COMMANDS.
        images: query image files (JPEG/PNG), extracted by the server; or
        feature_npy: a .npy of query features [B, D] instead of images.
        sets: edits "attribute=value" (comma-separated or repeated), applied in order.
        k: results per query (search).
        output: .npy file for the resulting features (extract, manipulate).
        contact_sheet: PNG file for a picture of the search results (needs gallery_root).
        gallery_root: folder the gallery ids (image paths) are relative to.
        index: search a catalogue index on Milvus (a .db path or http://host:19530; see
            flam_tf.serving.catalog_index) instead of the `searcher` model.
        collection: the index's collection (default catalog_index.DEFAULT_COLLECTION).

    Returns:
        The exit code: 0, or 1 after printing the error.
    """
    out = out or sys.stdout
    try:
        if command not in COMMANDS:
            raise ValueError(f"Unknown command. Received: {command!r}; expected one of "
                             f"{list(COMMANDS)}")
        if bool(images) == bool(feature_npy):
            raise ValueError("Give query images (--image) or features (--feature_npy), not both")
        if command == "manipulate" and not sets:
            raise ValueError("manipulate needs at least one --set attribute=value")
        if contact_sheet and not (gallery_root and images):
            raise ValueError("--contact_sheet needs --gallery_root and query --image files")
        if index and command != "search":
            raise ValueError(f"--index is for search only. Received: command={command!r}")
        catalog = None
        if index:  # opened first: a missing extra or collection fails before any model call
            from flam_tf.serving import catalog_index
            catalog = catalog_index.CatalogIndex(
                index, collection or catalog_index.DEFAULT_COLLECTION, timeout_s=timeout_s)
        edits = parse_edits(list(sets)) if sets else None
        data, given = [], None
        for path in images:
            with open(path, "rb") as f:
                data.append(f.read())
        if feature_npy:
            given = np.load(feature_npy, allow_pickle=False).astype(np.float32)
            given = given[np.newaxis] if given.ndim == 1 else given
        with FlamClient(server, timeout_s=timeout_s) as client:
            def run(version):  # every model call of the command on one version
                features = client.extract(data, version=version) if data else given
                if edits:
                    features = client.manipulate(features, *edits, version=version)
                if command == "describe":
                    return features, client.describe(features, version=version)
                if command == "search" and catalog is not None:
                    return features, catalog.search(features, k)
                if command == "search":
                    return features, client.search(features, k, version=version)
                return features, None

            features, result = client.call_consistent(run)
            names = list(images) or [f"row{i}" for i in range(len(features))]
            if command in ("extract", "manipulate"):
                if output:
                    np.save(output, features)
                print(f"{'query':<30} {'dim':>4} {'norm':>7}  first values", file=out)
                for name, f in zip(names, features):
                    head = " ".join(f"{x:+.3f}" for x in f[:4])
                    print(f"{name:<30} {len(f):>4} {np.linalg.norm(f):7.4f}  {head}", file=out)
            elif command == "describe":
                described = result
                attrs = vocabulary.ATTRIBUTE_TYPES
                print(f"{'query':<30} " + " ".join(f"{a:<22}" for a in attrs), file=out)
                for i, name in enumerate(names):
                    cells = [f"{described[a][i]} ({described[a + sig.SCORE_SUFFIX][i]:.3f})"
                             for a in attrs]
                    print(f"{name:<30} " + " ".join(f"{c:<22}" for c in cells), file=out)
            else:
                ids, scores = result
                print(f"{'query':<30} {'rank':>4}  {'score':>7}  id", file=out)
                for i, name in enumerate(names):
                    for rank, (id_, score) in enumerate(zip(ids[i], scores[i]), 1):
                        print(f"{name:<30} {rank:>4}  {score:7.4f}  {id_}", file=out)
                if contact_sheet:
                    _contact_sheet(contact_sheet, list(images), ids, scores, gallery_root)
                    print(f"contact sheet: {contact_sheet}", file=out)
        return 0
    except (FlamServingError, ValueError, OSError) as e:
        message = " ".join(str(e).split())  # one line, even for multi-line TF messages
        print(f"error: {message}", file=sys.stderr)
        return 1
