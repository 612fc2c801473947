"""A catalogue index on Milvus: gallery items added and removed without a new export.

The `searcher` SavedModel holds the gallery inside the model, so one new catalogue item means a
new export. `CatalogIndex` keeps the gallery in a Milvus collection instead (pymilvus'
`MilvusClient`); the same code talks to

    Milvus Lite      a local file path ending in .db (the default, `DEFAULT_URI`): embedded, in this
                     process, for development and tests (`pip install -e '.[index]'`);
    a Milvus server  "http://host:19530" (standalone or cluster), for a catalogue that changes
                     every day or outgrows the searcher's in-model gallery (about 1M items).

    index = CatalogIndex.from_run("runs/default", uri="catalog.db")       # the run's gallery
    index = CatalogIndex.from_manifest("gallery.csv", flam_client)        # extracted over gRPC
    index.add(["new/item.jpg"], feature)        # [1, D]; findable at once
    index.remove(["old/item.jpg"])
    ids, scores = index.search(query, k=10)     # ids str [B, k], cosine scores float32 [B, k]

One collection holds one gallery: a VARCHAR primary key `id` (the gallery item's id: its image
path, as the searcher's ids) and a FLOAT_VECTOR `feature` of unit vectors (normalised here, as
flam_tf.models.searcher.GalleryIndex does) under the COSINE metric, so scores are the searcher's
cosine scores. Index types: FLAT (exact: its top-k is the searcher's), HNSW or IVF_FLAT
(approximate; build and search parameters settable, defaults in INDEX_TYPES). A feature is only
meaningful to the models of the export whose extractor made it: rebuild the collection when the
extractor changes.

The command line `python -m serving.index` is `index_cli.py`.
"""

import contextlib
import importlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from flam_tf.data import manifest as manifest_lib
from flam_tf.serving import signatures as sig
from flam_tf.serving.cli_io import read_files
from flam_tf.serving.closing import Closing

DEFAULT_URI = "catalog.db"
DEFAULT_COLLECTION = "flam_catalog"
ID_FIELD = "id"
VECTOR_FIELD = "feature"
MAX_ID_BYTES = 1024  # VARCHAR max_length of the primary key (UTF-8 bytes)
METRICS = ("COSINE", "IP")  # on unit vectors both are the cosine
# index type -> (default build params, default search params). HNSW's `ef` is raised to k when
# smaller (Milvus requires ef >= k). benchmarks/index_bench.py measures their recall against
# exact search (BENCHMARKS.md).
INDEX_TYPES: Dict[str, Tuple[Dict[str, int], Dict[str, int]]] = {
    "FLAT": ({}, {}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 512}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 64}),
}
INSERT_BATCH = 8192  # rows per insert request (8192 x 1024 floats = 32 MiB < 64 MiB limit)
INSTALL_HINT = "pip install -e '.[index]'"


class CatalogIndexError(ValueError):
    """A bad request to the index (dimension, ids, collection): one line, naming what is wrong."""


class MissingExtraError(CatalogIndexError, ImportError):
    """pymilvus (or milvus-lite for a .db URI) is not installed: an ImportError, and a
    CatalogIndexError (a ValueError) so that command lines print it as one line."""


def _pymilvus():
    try:
        import pymilvus
    except ImportError as e:
        raise MissingExtraError(
            f"The catalogue index needs pymilvus ({e}): {INSTALL_HINT}"
        ) from None
    return pymilvus


@contextlib.contextmanager
def milvus_errors(what: str):
    """Turns a pymilvus error inside the block into a one-line CatalogIndexError naming `what`."""
    pymilvus = _pymilvus()
    try:
        yield
    except pymilvus.MilvusException as e:
        message = " ".join(str(getattr(e, "message", "") or e).split())
        raise CatalogIndexError(f"{what}: {message}") from None


def is_local(uri: str) -> bool:
    """Whether `uri` names a Milvus Lite database (a local path ending in .db)."""
    return uri.endswith(".db") and "://" not in uri


def connect(uri: str = DEFAULT_URI, token: str = "", timeout_s: Optional[float] = None):
    """A pymilvus MilvusClient on `uri` (Milvus Lite for a local .db path, else a server).

    Raises:
        MissingExtraError: pymilvus, or milvus-lite for a .db path, is not installed.
        CatalogIndexError: the URI is neither, or the server cannot be reached.
    """
    pymilvus = _pymilvus()
    if is_local(uri):
        try:
            importlib.import_module("milvus_lite")  # Milvus Lite runs in this process
        except ImportError as e:
            raise MissingExtraError(
                f"A local .db index needs milvus-lite ({e}): {INSTALL_HINT}"
            ) from None
        folder = os.path.dirname(os.path.abspath(uri))
        if not os.path.isdir(folder):
            raise CatalogIndexError(f"The folder of the index does not exist: {folder} (uri {uri})")
    elif not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        raise CatalogIndexError(
            f"Index URI must be a local path ending in .db (Milvus Lite) or "
            f"http://host:19530 (a Milvus server). Received: {uri!r}"
        )
    kwargs = {"timeout": timeout_s} if timeout_s else {}
    try:
        return pymilvus.MilvusClient(uri=uri, token=token, **kwargs)
    except pymilvus.MilvusException as e:
        raise CatalogIndexError(f"Cannot open the index at {uri}: {e.message}") from None


def unit_rows(vectors, what: str = "vectors") -> np.ndarray:
    """float32 [N, D] rows scaled to unit length without overflow (as the searcher does).

    Raises:
        CatalogIndexError: not 2-D, not finite, or a zero row (it has no direction).
    """
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim == 1:
        vectors = vectors[np.newaxis]
    if vectors.ndim != 2:
        raise CatalogIndexError(f"{what} must be [N, D]. Received shape {vectors.shape}")
    if not np.all(np.isfinite(vectors)):
        raise CatalogIndexError(f"{what} must be finite")
    scale = np.max(np.abs(vectors), axis=1, keepdims=True)
    zero = np.flatnonzero(scale[:, 0] == 0)
    if len(zero):
        raise CatalogIndexError(f"{what} row {int(zero[0])} is all zeros (no direction to search)")
    vectors = vectors / scale
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _id_list(ids, what: str = "ids") -> List[str]:
    ids = [ids] if isinstance(ids, (str, bytes)) else list(ids)
    out = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    for i in out:
        if not i or len(i.encode()) > MAX_ID_BYTES:
            raise CatalogIndexError(
                f"Each id must have 1 to {MAX_ID_BYTES} UTF-8 bytes. Received: {i[:60]!r}"
            )
    unique, counts = np.unique(np.array(out, dtype=object).astype(str), return_counts=True)
    if np.any(counts > 1):
        raise CatalogIndexError(f"{what} repeat: {unique[counts > 1][:3].tolist()}")
    return out


def _listing(ids: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


class CatalogIndex(Closing):
    """A gallery in one Milvus collection: add, remove and search by cosine similarity.

    Opens an existing collection; `create`, `from_run` and `from_manifest` build one.

    Args:
        uri: a local path ending in .db (Milvus Lite) or "http://host:19530" (a Milvus server).
        collection: the collection's name.
        search_params: Milvus search params of the index type (e.g. {"ef": 512} for HNSW,
            {"nprobe": 64} for IVF_FLAT); default INDEX_TYPES' for the collection's index.
        token: a Milvus server's "user:password" or API token.
        timeout_s: deadline of each Milvus call (None: pymilvus' default).

    Raises:
        MissingExtraError, CatalogIndexError: see `connect`; or no such collection.
    """

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        collection: str = DEFAULT_COLLECTION,
        search_params: Optional[Dict] = None,
        token: str = "",
        timeout_s: Optional[float] = None,
        _client=None,
    ):
        self.uri, self.collection, self.timeout_s = uri, collection, timeout_s
        self._client = _client or connect(uri, token, timeout_s)
        with milvus_errors(f"Cannot open collection {collection!r} at {uri}"):
            if not self._client.has_collection(collection):
                raise CatalogIndexError(
                    f"No collection {collection!r} at {uri}; build one with `python -m "
                    f"serving.index build --uri {uri} --collection {collection} ...`"
                )
            fields = {f["name"]: f for f in self._client.describe_collection(collection)["fields"]}
            if VECTOR_FIELD not in fields or ID_FIELD not in fields:
                raise CatalogIndexError(
                    f"Collection {collection!r} at {uri} is not a catalogue "
                    f"index (no {ID_FIELD!r} and {VECTOR_FIELD!r} fields)"
                )
            self.dim = int(fields[VECTOR_FIELD]["params"]["dim"])
            described = self._client.describe_index(collection, VECTOR_FIELD) or {}
            self._client.load_collection(collection)
        self.index_type = str(described.get("index_type") or "FLAT").upper()
        self.metric = str(described.get("metric_type") or "COSINE").upper()
        defaults = INDEX_TYPES.get(self.index_type, ({}, {}))[1]
        self.search_params = dict(defaults if search_params is None else search_params)

    # -- Building -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        ids,
        vectors,
        uri: str = DEFAULT_URI,
        collection: str = DEFAULT_COLLECTION,
        index_type: str = "FLAT",
        index_params: Optional[Dict] = None,
        search_params: Optional[Dict] = None,
        metric: str = "COSINE",
        overwrite: bool = False,
        token: str = "",
        timeout_s: Optional[float] = None,
        dim: Optional[int] = None,
    ) -> "CatalogIndex":
        """Creates a collection holding `ids` and `vectors` [N, D] (N may be 0 when `dim` is
        given), builds its index and returns it opened.

        The rows are inserted first and the index is built over the flushed data at the end
        (one build instead of one per insert), as Milvus recommends for a bulk load.

        Args:
            index_type: one of INDEX_TYPES: FLAT (exact), HNSW or IVF_FLAT (approximate).
            index_params: build params (HNSW: M, efConstruction; IVF_FLAT: nlist); default
                INDEX_TYPES'.
            metric: COSINE or IP (the same on the unit vectors stored here).
            overwrite: drop an existing collection of that name first (else an error).

        Raises:
            CatalogIndexError: the collection exists, an unknown index type or metric, ids and
                vectors disagree.
        """
        index_type, metric = str(index_type).upper(), str(metric).upper()
        if index_type not in INDEX_TYPES:
            raise CatalogIndexError(
                f"Unknown index type. Received: {index_type!r}; expected one of {list(INDEX_TYPES)}"
            )
        if metric not in METRICS:
            raise CatalogIndexError(
                f"Unknown metric. Received: {metric!r}; expected one of {list(METRICS)}"
            )
        ids = _id_list(ids, "ids")
        vectors = np.asarray(vectors, np.float32)
        if len(ids) == 0 and dim is None:
            raise CatalogIndexError("The gallery is empty (give dim= to create an empty index)")
        if len(ids):
            vectors = unit_rows(vectors, "vectors")
            if len(vectors) != len(ids):
                raise CatalogIndexError(f"Got {len(ids)} ids for {len(vectors)} vectors")
            if dim is not None and vectors.shape[1] != int(dim):
                raise CatalogIndexError(f"vectors have width {vectors.shape[1]}, not dim={dim}")
            dim = vectors.shape[1]
        pymilvus = _pymilvus()
        client = connect(uri, token, timeout_s)
        with milvus_errors(f"Cannot build collection {collection!r} at {uri}"):
            if client.has_collection(collection):
                if not overwrite:
                    raise CatalogIndexError(
                        f"Collection {collection!r} exists already at {uri} "
                        f"(pass overwrite to replace it)"
                    )
                client.drop_collection(collection)
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(
                ID_FIELD, pymilvus.DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES
            )
            schema.add_field(VECTOR_FIELD, pymilvus.DataType.FLOAT_VECTOR, dim=int(dim))
            client.create_collection(collection, schema=schema)
            _insert(client, collection, ids, vectors)
            client.flush(collection)
            params = client.prepare_index_params()
            build = dict(INDEX_TYPES[index_type][0])
            build.update(index_params or {})
            # Build params nested under "params" (the ORM's wire form): a Milvus server reads
            # them as it reads the flat form; Milvus Lite 3.2 reads only this one.
            params.add_index(
                field_name=VECTOR_FIELD,
                index_type=index_type,
                metric_type=metric,
                params={"params": build},
            )
            try:
                client.create_index(collection, params)
            except pymilvus.MilvusException:
                # A build longer than the connection's keepalive makes pymilvus resend the
                # request, which then finds the index the first one built: that is success.
                built = client.describe_index(collection, VECTOR_FIELD) or {}
                if str(built.get("index_type", "")).upper() != index_type:
                    raise
            client.load_collection(collection)
        return cls(uri, collection, search_params, token, timeout_s, _client=client)

    @classmethod
    def from_run(cls, run_dir: str, uri: str = DEFAULT_URI, **kwargs) -> "CatalogIndex":
        """`create` from a run's FAM gallery features (`features/fam_gallery.npz`, the gallery the
        searcher is exported with); ids are its image paths, as the searcher's."""
        from flam_tf.serving import export  # imports TensorFlow: only when building from a run

        features, ids = export.gallery_from_npz(run_dir)
        return cls.create(ids, features, uri, **kwargs)

    @classmethod
    def from_manifest(
        cls, manifest_path: str, client, uri: str = DEFAULT_URI, **kwargs
    ) -> "CatalogIndex":
        """`create` from a gallery manifest's images, extracted by the served extractor.

        Args:
            manifest_path: manifest.csv of the gallery; ids are its `path` column.
            client: a `FlamClient` (flam_tf.serving.client); every batch is extracted by one
                model version (`call_consistent`), the one later queries must use.
        """
        ids, features = extract_manifest(manifest_path, client)
        return cls.create(ids, features, uri, **kwargs)

    # -- Changing and searching ---------------------------------------------------------------

    def __len__(self) -> int:
        with milvus_errors(f"Cannot count collection {self.collection!r}"):
            rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def present(self, ids) -> List[str]:
        """The ids of `ids` that are in the collection."""
        ids = _id_list(ids)
        found = set()
        with milvus_errors(f"Cannot look up ids in collection {self.collection!r}"):
            for start in range(0, len(ids), INSERT_BATCH):
                rows = self._client.get(
                    self.collection, ids=ids[start : start + INSERT_BATCH], output_fields=[ID_FIELD]
                )
                found.update(r[ID_FIELD] for r in rows)
        return [i for i in ids if i in found]

    def add(self, ids, vectors, replace: bool = False) -> int:
        """Adds items: ids [N] and their features [N, D] (normalised here). Returns N.

        They are searchable when this returns. With `replace`, ids already present get the new
        features (upsert); without, an id already present is an error.

        Raises:
            CatalogIndexError: a dimension mismatch, repeated ids, or ids present already.
        """
        ids = _id_list(ids)
        vectors = self._check_width(unit_rows(vectors, "vectors"), "vectors")
        if len(vectors) != len(ids):
            raise CatalogIndexError(f"Got {len(ids)} ids for {len(vectors)} vectors")
        if not ids:
            return 0
        if not replace:
            present = self.present(ids)
            if present:
                raise CatalogIndexError(
                    f"Already in collection {self.collection!r}: "
                    f"{_listing(present)} (remove them, or pass replace)"
                )
        with milvus_errors(f"Cannot add to collection {self.collection!r}"):
            _insert(self._client, self.collection, ids, vectors, upsert=replace)
        return len(ids)

    def remove(self, ids) -> int:
        """Removes items by id; returns how many. Gone from searches when this returns.

        Raises:
            CatalogIndexError: an id is not in the collection (nothing is removed then).
        """
        ids = _id_list(ids)
        if not ids:
            return 0
        present = set(self.present(ids))
        missing = [i for i in ids if i not in present]
        if missing:
            raise CatalogIndexError(
                f"Unknown id (not in collection {self.collection!r}): "
                f"{_listing(missing)}; nothing removed"
            )
        with milvus_errors(f"Cannot remove from collection {self.collection!r}"):
            for start in range(0, len(ids), INSERT_BATCH):
                self._client.delete(self.collection, ids=ids[start : start + INSERT_BATCH])
        return len(ids)

    def search(
        self, queries, k: int = 10, search_params: Optional[Dict] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (ids str [B, k'], cosine scores float32 [B, k']), best first.

        k' = min(k, items in the collection); a row an approximate index fills with fewer hits is
        padded with id "" and score NaN.

        Raises:
            CatalogIndexError: a dimension mismatch, or a zero or non-finite query.
        """
        queries = self._check_width(unit_rows(queries, "queries"), "queries")
        k = int(k)
        if k < 1:
            raise CatalogIndexError(f"k must be >= 1. Received: {k}")
        params = dict(self.search_params if search_params is None else search_params)
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), k)
        with milvus_errors(f"Cannot search collection {self.collection!r}"):
            hits = self._client.search(
                self.collection,
                data=queries,
                limit=k,
                anns_field=VECTOR_FIELD,
                output_fields=[ID_FIELD],
                search_params={"metric_type": self.metric, "params": params},
            )
        width = min(k, max((len(h) for h in hits), default=0))
        ids = np.full((len(queries), width), "", dtype=object)
        scores = np.full((len(queries), width), np.nan, np.float32)
        for row, found in enumerate(hits):
            for col, hit in enumerate(list(found)[:width]):
                ids[row, col], scores[row, col] = hit["id"], hit["distance"]
        return ids.astype(str), scores

    def info(self) -> Dict[str, object]:
        return {
            "uri": self.uri,
            "collection": self.collection,
            "items": len(self),
            "dim": self.dim,
            "index_type": self.index_type,
            "metric": self.metric,
            "search_params": self.search_params,
        }

    def drop(self) -> None:
        """Deletes the collection (the index is unusable afterwards)."""
        with milvus_errors(f"Cannot drop collection {self.collection!r}"):
            self._client.drop_collection(self.collection)

    def close(self) -> None:
        self._client.close()

    def _check_width(self, vectors: np.ndarray, what: str) -> np.ndarray:
        if vectors.shape[1] != self.dim:
            raise CatalogIndexError(
                f"{what} have width {vectors.shape[1]}; collection "
                f"{self.collection!r} holds {self.dim}-d features"
            )
        return vectors


def _insert(
    client, collection: str, ids: Sequence[str], vectors: np.ndarray, upsert: bool = False
) -> None:
    write = client.upsert if upsert else client.insert
    for start in range(0, len(ids), INSERT_BATCH):
        rows = [
            {ID_FIELD: i, VECTOR_FIELD: v}
            for i, v in zip(
                ids[start : start + INSERT_BATCH], vectors[start : start + INSERT_BATCH]
            )
        ]
        write(collection, rows)


def extract_manifest(manifest_path: str, client) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [N], features [N, D]) of a manifest's images, extracted by the served extractor in
    requests of at most sig.MAX_IMAGES_PER_REQUEST images, all on one model version."""
    manifest = manifest_lib.read_manifest(manifest_path)
    if len(manifest) == 0:
        raise CatalogIndexError(f"The gallery manifest has no rows: {manifest_path}")
    paths, step = manifest.absolute_paths(), sig.MAX_IMAGES_PER_REQUEST

    def extract(version):
        features = []
        for start in range(0, len(paths), step):
            features.append(
                client.extract(read_files(paths[start : start + step]), version=version)
            )
        return np.concatenate(features)

    return np.asarray(manifest["path"]).astype(str), client.call_consistent(extract)
