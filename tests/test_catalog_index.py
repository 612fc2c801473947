"""The catalogue index on Milvus Lite (flam_tf/serving/catalog_index.py): build, add, remove and
search round trips; with FLAT its top-k is the `searcher` signature's (and numpy's exact cosine
top-k) on the same gallery; one item added is found and one removed is gone without any re-export;
the command lines (`python -m serving.index`, `python -m serving.client search --index`); errors.

Needs the `index` extra (pip install -e '.[index]'): skipped, saying so, without it."""

import io
import os
import sys

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed: pip install -e '.[index]'")
milvus_lite = pytest.importorskip(
    "milvus_lite", reason="milvus-lite is not installed: pip install -e '.[index]'"
)

from serving_fixtures import FEATURE_DIM, cosine_top_k, gallery_npz  # noqa: E402

from flam_tf.serving import catalog_index as ci  # noqa: E402
from flam_tf.serving import client_cli  # noqa: E402
from flam_tf.serving import versions as versions_lib  # noqa: E402
from flam_tf.serving.catalog_index import CatalogIndex, CatalogIndexError  # noqa: E402

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module", autouse=True)
def lite():
    """Checks Milvus Lite starts here (skips the module with the reason if not); at the end,
    stops the embedded servers the module's .db files started."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            client = ci.connect(os.path.join(folder, "probe.db"))
            client.list_collections()
            client.close()
        except Exception as e:  # any failure to start is a reason to skip, named
            pytest.skip(f"Milvus Lite cannot run on this machine: {type(e).__name__}: {e}")
        yield
        milvus_lite.server_manager_instance.release_all()


@pytest.fixture
def uri(tmp_path):
    return str(tmp_path / "catalog.db")


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def queries(n=7, seed=1):
    return np.random.default_rng(seed).normal(size=(n, FEATURE_DIM)).astype(np.float32)


def test_flat_top_k_equals_searcher_and_numpy(run_dir, client, uri):
    gallery, ids = gallery_npz(run_dir)
    q = np.concatenate([queries(), gallery[:3] * 5.0])  # gallery rows, scaled: found first
    with CatalogIndex.from_run(run_dir, uri) as index:
        assert (len(index), index.dim, index.index_type, index.metric) == (
            len(ids),
            FEATURE_DIM,
            "FLAT",
            "COSINE",
        )
        got_ids, got_scores = index.search(q, k=10)
    searcher_ids, searcher_scores = client.search(q, k=10)  # the exported searcher signature
    want_ids, want_scores = cosine_top_k(q, gallery, ids, 10)
    np.testing.assert_array_equal(got_ids, searcher_ids)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, searcher_scores, atol=1e-5)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert list(got_ids[-3:, 0]) == list(ids[:3])
    # k above the gallery size: every item once, like the searcher's K cap.
    with CatalogIndex(uri) as index:
        all_ids, _ = index.search(q[:1], k=500)
    assert sorted(all_ids[0]) == sorted(ids)


def test_add_and_remove_without_reexport(run_dir, exported, client, uri):
    export_dir = os.path.dirname(exported["models.config"])
    versions = versions_lib.complete_versions(export_dir)
    gallery, ids = gallery_npz(run_dir)
    new = unit(queries(1, seed=7))
    CatalogIndex.from_run(run_dir, uri).close()

    with CatalogIndex(uri) as index:
        assert index.add(["images/new.png"], new) == 1
    with CatalogIndex(uri) as index:  # another handle sees it: it is in the collection
        assert len(index) == len(ids) + 1
        found, scores = index.search(new, k=3)
        assert found[0, 0] == "images/new.png" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
        assert "images/new.png" not in client.search(new, k=10)[0][0]  # the searcher: unchanged
        assert index.remove(["images/new.png", ids[0]]) == 2
        found, _ = index.search(np.concatenate([new, gallery[:1]]), k=len(ids))
        assert "images/new.png" not in found and ids[0] not in found
        assert len(index) == len(ids) - 1
        want, _ = cosine_top_k(new, gallery[1:], ids[1:], 5)
        np.testing.assert_array_equal(index.search(new, k=5)[0], want)
        # add with replace: an id present gets the new feature.
        index.add([ids[1]], new, replace=True)
        assert index.search(new, k=1)[0][0, 0] == ids[1]
        assert len(index) == len(ids) - 1
    assert versions_lib.complete_versions(export_dir) == versions  # no re-export


def test_build_from_manifest_through_served_extractor(run_dir, client, uri):
    manifest = os.path.join(run_dir, "data", "manifest.csv")
    with CatalogIndex.from_manifest(manifest, client, uri, index_type="HNSW") as index:
        assert index.index_type == "HNSW" and len(index) == 6
        image = os.path.join(run_dir, "data", "images", "item2.png")
        feature = client.extract([open(image, "rb").read()])
        found, scores = index.search(feature, k=6)
    assert found[0, 0] == "images/item2.png"
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert sorted(found[0]) == [f"images/item{i}.png" for i in range(6)]


def test_client_cli_searches_through_the_index(run_dir, server, client, uri, capsys):
    """python -m serving.client search --index: image -> extractor -> manipulator -> Milvus."""
    image = os.path.join(run_dir, "data", "images", "item0.png")
    index = CatalogIndex.from_run(run_dir, uri)
    out = io.StringIO()
    code = client_cli.run_cli(
        "search", server, images=[image], sets=["color=red"], k=4, out=out, index=uri
    )
    assert code == 0, capsys.readouterr().err
    rows = [line.split() for line in out.getvalue().splitlines()[1:]]
    edited = client.manipulate(client.extract([open(image, "rb").read()]), "color", "red")
    want_ids, want_scores = index.search(edited, k=4)
    assert [r[3] for r in rows] == list(want_ids[0])
    np.testing.assert_allclose([float(r[2]) for r in rows], want_scores[0], atol=1e-4)
    index.close()
    # --index is for search only; a missing collection is one line naming the fix.
    assert client_cli.run_cli("extract", server, images=[image], index=uri) == 1
    assert client_cli.run_cli("search", server, images=[image], index=uri, collection="nope") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "error: --index is for search only. Received: command='extract'"
    assert err[1].startswith("error: No collection 'nope' at ") and "serving.index build" in err[1]


def test_index_cli_round_trip(run_dir, uri, tmp_path, capsys):
    from serving import index as index_cli

    gallery, ids = gallery_npz(run_dir)
    new = tmp_path / "new.npy"
    np.save(new, unit(queries(1, seed=3)))
    assert (
        index_cli.main(
            [
                "build",
                "--uri",
                uri,
                "--run_dir",
                run_dir,
                "--index_type",
                "hnsw",
                "--index_params",
                '{"M": 8, "efConstruction": 64}',
            ]
        )
        == 0
    )
    assert "HNSW" in capsys.readouterr().out
    assert (
        index_cli.main(["add", "--uri", uri, "--id", "images/new.png", "--feature_npy", str(new)])
        == 0
    )
    assert (
        index_cli.main(
            [
                "search",
                "--uri",
                uri,
                "--feature_npy",
                str(new),
                "--k",
                "2",
                "--search_params",
                '{"ef": 16}',
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("added 1 item(s); 51 in 'flam_catalog'")
    assert out[2].split()[1:] == ["1", "1.0000", "images/new.png"]
    assert index_cli.main(["remove", "--uri", uri, "--id", "images/new.png"]) == 0
    assert index_cli.main(["remove", "--uri", uri, "--id", "images/new.png"]) == 1
    assert index_cli.main(["build", "--uri", uri, "--run_dir", run_dir]) == 1
    assert index_cli.main(["info", "--uri", uri]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("removed 1 item(s); 50 in 'flam_catalog'")
    assert "items          50" in captured.out
    assert captured.err.splitlines() == [
        "error: Unknown id (not in collection 'flam_catalog'): 'images/new.png'; nothing removed",
        f"error: Collection 'flam_catalog' exists already at {uri} (pass overwrite to replace it)",
    ]


def test_approximate_indexes_recall_against_exact(uri):
    rng = np.random.default_rng(0)
    gallery = unit(rng.normal(size=(2000, 32)).astype(np.float32))
    ids = [f"g{i}" for i in range(len(gallery))]
    q = rng.normal(size=(20, 32)).astype(np.float32)
    exact, _ = cosine_top_k(q, gallery, np.array(ids), 50)

    def recall(found):
        return np.mean([len(set(f) & set(e)) / 50 for f, e in zip(found, exact)])

    with CatalogIndex.create(ids, gallery, uri, collection="flat") as index:
        np.testing.assert_array_equal(index.search(q, 50)[0], exact)
    with CatalogIndex.create(ids, gallery, uri, collection="hnsw", index_type="HNSW") as index:
        assert recall(index.search(q, 50)[0]) >= 0.99
    with CatalogIndex.create(
        ids, gallery, uri, collection="ivf", index_type="IVF_FLAT", index_params={"nlist": 32}
    ) as index:
        assert recall(index.search(q, 50, {"nprobe": 32})[0]) == 1.0  # every list: exact
        assert recall(index.search(q, 50, {"nprobe": 1})[0]) < 0.9  # the params reach Milvus


def test_errors_are_one_line(uri, tmp_path):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(20, 4)).astype(np.float32)
    ids = [f"g{i}" for i in range(20)]
    index = CatalogIndex.create(ids, gallery, uri)

    def error(fn):
        with pytest.raises(CatalogIndexError) as e:
            fn()
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error(lambda: index.add(["x"], np.ones((1, 5)))) == (
        "vectors have width 5; collection 'flam_catalog' holds 4-d features"
    )
    assert error(lambda: index.search(np.ones((2, 3)), 5)) == (
        "queries have width 3; collection 'flam_catalog' holds 4-d features"
    )
    assert error(lambda: index.search(np.zeros((1, 4)), 5)) == (
        "queries row 0 is all zeros (no direction to search)"
    )
    assert error(lambda: index.search(np.full((1, 4), np.nan), 5)) == "queries must be finite"
    assert error(lambda: index.remove(["g1", "nope", "gone"])) == (
        "Unknown id (not in collection 'flam_catalog'): 'nope', 'gone'; nothing removed"
    )
    assert error(lambda: index.add(["g3", "new"], np.ones((2, 4)))) == (
        "Already in collection 'flam_catalog': 'g3' (remove them, or pass replace)"
    )
    assert error(lambda: index.add(["a", "a"], np.ones((2, 4)))) == "ids repeat: ['a']"
    assert error(lambda: index.add(["a", "b"], np.ones((3, 4)))) == "Got 2 ids for 3 vectors"
    assert len(index) == 20  # nothing above changed the collection
    assert error(lambda: CatalogIndex.create(ids, gallery, uri)).startswith(
        "Collection 'flam_catalog' exists already at "
    )
    assert error(
        lambda: CatalogIndex.create(ids, gallery, uri, collection="c", index_type="DISKANN")
    ) == ("Unknown index type. Received: 'DISKANN'; expected one of ['FLAT', 'HNSW', 'IVF_FLAT']")
    assert error(lambda: CatalogIndex(uri, "missing")).startswith("No collection 'missing' at ")
    assert error(lambda: CatalogIndex("catalog.sqlite")).startswith(
        "Index URI must be a local path ending in .db (Milvus Lite) or http://host:19530"
    )
    assert error(lambda: CatalogIndex(str(tmp_path / "no" / "such.db"))).startswith(
        "The folder of the index does not exist: "
    )
    index.close()


def test_missing_extra_names_the_install_command(monkeypatch, uri, capsys):
    installed = sys.modules["pymilvus"]
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus -> ImportError
    with pytest.raises(ci.MissingExtraError) as e:
        CatalogIndex(uri)
    assert isinstance(e.value, ImportError)
    assert str(e.value).endswith("pip install -e '.[index]'")
    assert client_cli.run_cli("search", "127.0.0.1:1", feature_npy="q.npy", index=uri) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith("pip install -e '.[index]'")
    monkeypatch.setitem(sys.modules, "pymilvus", installed)
    monkeypatch.setitem(sys.modules, "milvus_lite", None)
    with pytest.raises(ci.MissingExtraError, match=r"needs milvus-lite .*\.\[index\]'$"):
        ci.connect(uri)
