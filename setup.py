"""flam_tf: feature-level attribute manipulation (FLAM) for fashion image retrieval.

Installs the `flam_tf` package only. The top-level `export/` and `serving/` folders are entry
points run from a checkout (`python -m export`, `python -m serving.client`), deliberately not
installed into site-packages under such generic names.
"""

from setuptools import find_packages, setup

# The stack measured together (pip check clean). `tensorflow` (not
# `tensorflow-cpu`): tensorflow-serving-api depends on it, and the two must never be mixed.
# No tensorflow-addons: its last release fails to import on TF 2.21 (see BUILD.md).
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "tensorflow-serving-api==2.21.0",
    "tensorboard>=2.21,<2.22",  # TF 2.21 no longer pulls it in; the train job writes summaries
    "numpy>=2.0,<2.5",
    "absl-py>=2.1",
    "pillow>=10",  # PNG writing and contact sheets of the synthetic benchmark
]

setup(
    name="flam_tf",
    version="0.1.0",
    description="Feature-level attribute manipulation (FLAM) for fashion image retrieval, "
    "in TensorFlow/Keras 3, with TF Serving export.",
    packages=find_packages(include=["flam_tf", "flam_tf.*"]),
    # The Shopping100k code table the reader loads at run time (flam_tf/data/readers/).
    package_data={"flam_tf.data.readers": ["shopping100k_codes.json"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8"],
        # What CI runs before the tests: lint and format (ruff), and the layers contract
        # (import-linter); both read their settings from pyproject.toml.
        "lint": ["ruff==0.17.6", "import-linter==2.17"],
        "plot": ["matplotlib>=3.8"],
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
        "bench": ["faiss-cpu"],
        # The catalogue index on Milvus (flam_tf/serving/catalog_index.py): the client, and Milvus
        # Lite, the embedded engine behind a local .db URI (it brings faiss-cpu). Pinned to the
        # versions measured with tensorflow 2.21 / protobuf 7 (pip check clean).
        "index": ["pymilvus==3.0.2", "milvus-lite==3.2.2"],
    },
)
