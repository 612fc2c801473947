"""tf.data input: PK batches, determinism, decoding in manifest order."""

import numpy as np
import pytest
import tensorflow as tf

from flam_tf.data import manifest as manifest_lib
from flam_tf.data import pipeline, synthetic


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = synthetic.SyntheticConfig(num_instances=60, seed=4, image_size=24)
    return synthetic.write_benchmark(str(out), config, progress=False), config


def test_pk_batches_hold_p_instances_with_k_images_each(bench):
    m, config = bench
    train = m.split("extractor_train")
    ds, info = pipeline.pk_dataset(
        train, 24, instances_per_batch=4, images_per_instance=3, num_ce_classes=5, seed=1
    )
    for images, labels in ds.take(3):
        assert images.shape == (12, 24, 24, 3)
        ids, counts = np.unique(labels["instance"].numpy(), return_counts=True)
        assert len(ids) == 4 and set(counts) == {3}
        assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0
    assert info["num_ce_classes"] == 5


def test_pk_dataset_is_deterministic_for_a_seed(bench):
    m, _ = bench
    train = m.split("extractor_train")

    def first(seed):
        ds, _ = pipeline.pk_dataset(train, 24, 4, 2, 5, seed=seed)
        images, labels = next(iter(ds))
        return images.numpy(), labels["instance"].numpy()

    a, b, c = first(3), first(3), first(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_instance_labels_pick_the_most_frequent_ids():
    m = manifest_lib.Manifest(
        {
            "path": np.array(["a", "b", "c", "d", "e", "f"]),
            "instance_id": np.array(["x", "y", "y", "z", "z", "z"]),
        },
        "",
    )
    instance, ce_class, n = pipeline.instance_labels(m, num_ce_classes=2)
    assert n == 3
    # z has 3 images (class 0), y has 2 (class 1), x is not among the top 2.
    np.testing.assert_array_equal(ce_class, [-1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(instance, [0, 1, 1, 2, 2, 2])


def test_image_dataset_decodes_in_manifest_order(bench):
    from PIL import Image

    m, _ = bench
    first = next(iter(pipeline.image_dataset(m, 24, batch_size=5))).numpy()
    for i in range(5):
        np.testing.assert_allclose(
            first[i], np.asarray(Image.open(m.absolute_paths()[i])), atol=1e-4
        )


def test_pk_dataset_refuses_too_few_instances(bench):
    m, _ = bench
    with pytest.raises(ValueError, match="instances_per_batch"):
        pipeline.pk_dataset(m.split("fir_eval"), 24, 1000, 2, 5)


def test_labelled_dataset_pairs_each_image_with_its_own_labels(bench):
    m, _ = bench
    train = m.split("attribute_train")
    labels = np.arange(len(train) * 3, dtype=np.int32).reshape(-1, 3)  # a unique row per image
    ds = pipeline.labelled_dataset(train, labels, 24, batch_size=5, seed=2)
    # Unaugmented reference pixels per label row, to find which image each batch row came from.
    reference = np.concatenate([batch.numpy() for batch in pipeline.image_dataset(train, 24)])
    # A colour signature that flips, crops and brightness shifts barely move: channel means
    # minus their average.
    signature = reference.mean(axis=(1, 2))
    signature -= signature.mean(axis=1, keepdims=True)
    seen = set()
    for images, batch_labels in ds.take(4):
        assert images.shape == (5, 24, 24, 3) and batch_labels.shape == (5, 3)
        for image, row in zip(images.numpy(), batch_labels.numpy()):
            index = int(row[0]) // 3
            assert labels[index].tolist() == row.tolist()
            own = image.mean(axis=(0, 1))
            distance = np.abs(signature - (own - own.mean())).sum(axis=1)
            assert distance[index] <= np.sort(distance)[len(distance) // 4]  # its own image
            seen.add(index)
    assert len(seen) > 5  # shuffled over the split, not the first rows only
    with pytest.raises(ValueError, match="labels"):
        pipeline.labelled_dataset(train, labels[:-1], 24, batch_size=5)


def test_decode_cache_gives_the_same_batches_as_decoding_files(bench):
    """The decoded-image cache only moves where pixels come from: same images, same labels."""
    m, _ = bench
    train = m.split("extractor_train")
    decoded = pipeline.decode_cache(train, 24, budget_bytes=2**30)
    assert decoded.dtype == np.uint8 and decoded.shape == (len(train), 24, 24, 3)
    from_files, _ = pipeline.pk_dataset(train, 24, 4, 2, 5, seed=3, skip_batches=2)
    from_cache, _ = pipeline.pk_dataset(train, 24, 4, 2, 5, seed=3, skip_batches=2, decoded=decoded)
    for (a, la), (b, lb) in zip(from_files.take(3), from_cache.take(3)):
        np.testing.assert_array_equal(la["instance"].numpy(), lb["instance"].numpy())
        np.testing.assert_array_equal(la["ce_class"].numpy(), lb["ce_class"].numpy())
        # The images are already 24 x 24, so the resize is exact and uint8 loses nothing.
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-3)
    labels = np.arange(len(train) * 3, dtype=np.int32).reshape(-1, 3)
    files = pipeline.labelled_dataset(train, labels, 24, 8, seed=1, skip_batches=1)
    cache = pipeline.labelled_dataset(train, labels, 24, 8, seed=1, skip_batches=1, decoded=decoded)
    for (a, la), (b, lb) in zip(files.take(2), cache.take(2)):
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-3)


def test_decode_cache_respects_its_budget_and_checks_its_shape(bench):
    m, _ = bench
    train = m.split("extractor_train")
    assert pipeline.decode_cache(train, 24, budget_bytes=0) is None
    assert pipeline.decode_cache(train, 24, budget_bytes=len(train) * 24 * 24 * 3 - 1) is None
    wrong = np.zeros((len(train), 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"decoded must be uint8 \["):
        pipeline.pk_dataset(train, 24, 4, 2, 5, decoded=wrong)


def test_training_and_extraction_pipelines_run_without_the_autotuning_model(bench):
    """Every dataset a fit or the features stage iterates has tf.data's autotuning model off:
    its optimisation thread made the iterator's deletion after a fit wait 20-50 s."""
    from flam_tf.stages.fits import feature_dataset

    m, _ = bench
    train = m.split("extractor_train")
    datasets = [
        pipeline.pk_dataset(train, 24, 4, 2, 5, seed=1)[0],
        pipeline.labelled_dataset(train, train.label_matrix(), 24, 4),
        pipeline.image_dataset(train, 24),
        feature_dataset(np.zeros((40, 8), np.float32), None, 8, seed=0, passes=2)[0],
    ]
    datasets.append(tf.data.Dataset.zip((datasets[0], datasets[1])))  # the extractor's input
    for ds in datasets:
        assert ds.options().autotune.enabled is False
