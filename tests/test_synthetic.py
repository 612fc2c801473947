"""The embedded synthetic benchmark: vocabulary coverage, twins, splits, determinism, the CLI."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from flam_tf import vocabulary
from flam_tf.data import manifest as manifest_lib
from flam_tf.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(directory):
    """sha256 of every file under `directory`, by relative path."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The CLI with the same flags, run twice into two directories."""
    dirs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "flam_tf.data.synthetic",
                "--out",
                str(out),
                "--num_instances",
                "200",
                "--seed",
                "7",
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        dirs.append(str(out))
    return dirs


def test_cli_writes_images_contact_sheet_and_manifest(written):
    out = written[0]
    m = manifest_lib.read_manifest(os.path.join(out, "manifest.csv"))
    assert set(manifest_lib.REQUIRED_COLUMNS) <= set(m.columns)
    assert os.path.getsize(os.path.join(out, "contact_sheet.png")) > 1000
    assert all(os.path.exists(p) for p in m.absolute_paths())
    from PIL import Image

    image = np.asarray(Image.open(m.absolute_paths()[0]))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_cli_is_byte_identical_for_the_same_seed(written):
    a, b = (_digest(d) for d in written)
    assert a == b and len(a) > 200


def test_other_seed_gives_other_images():
    config = synthetic.SyntheticConfig(num_instances=20, seed=1, image_size=32)
    other = synthetic.SyntheticConfig(num_instances=20, seed=2, image_size=32)
    a = synthetic.render_specs(synthetic.image_specs(config)[:8], config)
    b = synthetic.render_specs(synthetic.image_specs(other)[:8], other)
    assert not np.array_equal(a, b)


def test_rendering_does_not_depend_on_batch_size():
    config = synthetic.SyntheticConfig(num_instances=40, seed=3, image_size=32)
    specs = synthetic.image_specs(config)[:30]
    np.testing.assert_array_equal(
        synthetic.render_specs(specs, config, batch_size=7),
        synthetic.render_specs(specs, config, batch_size=64),
    )


def test_written_files_do_not_depend_on_the_number_of_processes(tmp_path):
    """write_benchmark renders batches in worker processes: the files are the same as one
    process writes (the batches are split unevenly over the workers)."""
    config = synthetic.SyntheticConfig(num_instances=60, seed=4, image_size=32)
    one = synthetic.write_benchmark(
        str(tmp_path / "one"), config, batch_size=50, progress=False, processes=1
    )
    two = synthetic.write_benchmark(
        str(tmp_path / "two"), config, batch_size=50, progress=False, processes=2
    )
    assert len(one) == len(two) > 100
    a, b = _digest(str(tmp_path / "one")), _digest(str(tmp_path / "two"))
    assert a == b and len(a) == len(one) + 2  # the images, manifest.csv, contact_sheet.png


def test_all_thirty_classes_appear_in_a_few_thousand_instances():
    instances = synthetic.sample_instances(synthetic.SyntheticConfig(num_instances=3000, seed=0))
    for attribute in vocabulary.ATTRIBUTE_TYPES:
        seen = {getattr(i, attribute) for i in instances}
        assert seen == set(range(10)), attribute


def test_twins_differ_in_exactly_one_attribute_and_keep_traits(written):
    m = manifest_lib.read_manifest(os.path.join(written[0], "manifest.csv"))
    twins = np.nonzero(m["twin_of"] != "")[0]
    assert len(twins) > 10
    by_id = {
        iid: i
        for i, iid in enumerate(m["instance_id"])
        if m["twin_of"][i] == "" and m["split"][i] == "fam_eval"
    }
    for t in twins:
        s = by_id[m["twin_of"][t]]
        changed = [a for a in vocabulary.ATTRIBUTE_TYPES if m[a][t] != m[a][s]]
        assert len(changed) == 1
        assert all(m[trait][t] == m[trait][s] for trait in synthetic.TRAITS)
        assert m["role"][t] == "fam_gallery" and "fam_query" in m["role"][s]


def test_twin_keeps_pose_and_changes_pixels():
    config = synthetic.SyntheticConfig(num_instances=60, seed=5, image_size=48)
    specs = synthetic.image_specs(config)
    twins = [s for s in specs if s.instance.twin_of is not None]
    source = {
        s.instance.index: s
        for s in specs
        if s.instance.split == "fam_eval" and s.instance.twin_of is None
    }
    color_twin = next(t for t in twins if t.instance.changed_attribute == "color")
    a, b = synthetic.render_specs([source[color_twin.instance.twin_of], color_twin], config)
    background = np.all(a == a[0, 0], axis=-1)  # the plain shop background, same in both
    assert background.mean() > 0.2
    np.testing.assert_array_equal(a[background], b[background])
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 1000


def test_splits_are_disjoint_by_instance_and_labels_follow_the_split():
    config = synthetic.SyntheticConfig(num_instances=400, seed=0, label_missing_prob=0.4)
    rows = [synthetic.manifest_row(s, config) for s in synthetic.image_specs(config)]
    split_of = {}
    for r in rows:
        key = r["twin_of"] or r["instance_id"]
        assert split_of.setdefault(key, r["split"]) == r["split"]
    assert set(split_of.values()) == set(manifest_lib.SPLITS)
    for split in ("extractor_train", "unlabelled"):
        assert all(
            r[a] == "" for r in rows if r["split"] == split for a in vocabulary.ATTRIBUTE_TYPES
        )
    assert all(
        r[a] != ""
        for r in rows
        if r["split"] in ("fam_eval", "fir_eval")
        for a in vocabulary.ATTRIBUTE_TYPES
    )
    attr = [
        r[a] == ""
        for r in rows
        if r["split"] == "attribute_train"
        for a in vocabulary.ATTRIBUTE_TYPES
    ]
    assert 0.3 < np.mean(attr) < 0.5  # label_missing_prob = 0.4 over ~330 labels


def test_views_cover_inshop_and_consumer_to_shop_roles():
    config = synthetic.SyntheticConfig(num_instances=100, seed=0)
    rows = [synthetic.manifest_row(s, config) for s in synthetic.image_specs(config)]
    fir = [r for r in rows if r["split"] == "fir_eval"]
    per_instance = {}
    for r in fir:
        per_instance.setdefault(r["instance_id"], []).append(r)
    for views in per_instance.values():
        roles = [r["role"] for r in views]
        assert roles.count("inshop_query;c2s_gallery") == 1
        assert roles.count("inshop_gallery") == config.fir_shop_views - 1
        assert roles.count("c2s_query") == config.fir_street_views
        assert all((r["domain"] == "street") == (r["role"] == "c2s_query") for r in views)


def test_joint_distribution_is_entangled_and_configurable():
    p = synthetic.joint_distribution(1.0)
    assert p.shape == (10, 10, 10) and abs(p.sum() - 1) < 1e-9 and p.min() > 0
    shapes, colors = vocabulary.CLASSES["shape"], vocabulary.CLASSES["color"]
    coat, pink, black = shapes.index("coat"), colors.index("pink"), colors.index("black")
    p_sc = p.sum(2)
    # Pink coats are much rarer than independence of shape and color would predict.
    independent = p_sc.sum(1)[coat] * p_sc.sum(0)[pink]
    assert p_sc[coat, pink] < 0.3 * independent
    # Black coats are more common than independence predicts (affinity 2, renormalised: ~1.3x).
    assert p_sc[coat, black] > 1.2 * p_sc.sum(1)[coat] * p_sc.sum(0)[black]
    assert p.max() / p.min() > 100  # some combinations are rare
    # entanglement=0: the joint factorises into its marginals.
    q = synthetic.joint_distribution(0.0)
    outer = q.sum((1, 2))[:, None, None] * q.sum((0, 2))[None, :, None] * q.sum((0, 1))[None, None]
    np.testing.assert_allclose(q, outer, rtol=1e-9)


def test_package_modules_import_only_lower_layers():
    """config <- catalogue <- rendering <- benchmark <- __main__: no module imports a higher one."""
    import ast

    layers = ["config", "catalogue", "rendering", "benchmark", "__main__"]
    package = os.path.join(REPO, "flam_tf", "data", "synthetic")
    for rank, name in enumerate(layers):
        with open(os.path.join(package, name + ".py")) as f:
            tree = ast.parse(f.read())
        imported = {
            node.module.rsplit(".", 1)[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("flam_tf.data.synthetic.")
        }
        assert imported <= set(layers[:rank]), (name, imported)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_instances": 3}, "num_instances"),
        ({"image_size": 8}, "image_size"),
        ({"label_missing_prob": 1.5}, "label_missing_prob"),
        ({"split_fractions": {"train": 1.0}}, "split_fractions"),
        ({"twins_per_item": 5}, "twins_per_item"),
    ],
)
def test_bad_config_is_refused_with_the_setting_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.SyntheticConfig(**kwargs).validate()
