"""The serving API's wire names, pinned: every model, signature and input/output tensor name with
its dtype and shape, written here as literal strings (deliberately not through
`flam_tf/serving/signatures.py`), checked against the exported SavedModels, against
signatures.py, and against the machine-readable table in BUILD.md section 4.

Clients in other languages hard-code these names; renaming one (say `from_pixels`) breaks them, so
it must fail here and be a deliberate, documented change of all three places.
"""

import os

from serving_fixtures import FEATURE_DIM
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from flam_tf import vocabulary
from flam_tf.serving import signatures as sig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- wire names: begin -->", "<!-- wire names: end -->"
METHOD = "tensorflow/serving/predict"
TOP_K = 10  # the `exported` fixture's top_k (its gallery is larger)

# (model, signature, "input" | "output", tensor, dtype, shape); D: feature width, K: results.
WIRE_NAMES = {
    ("extractor", "serving_default", "input", "image_bytes", "DT_STRING", "[-1]"),
    ("extractor", "serving_default", "output", "feature", "DT_FLOAT", "[-1, D]"),
    ("extractor", "from_pixels", "input", "images", "DT_UINT8", "[-1, -1, -1, 3]"),
    ("extractor", "from_pixels", "output", "feature", "DT_FLOAT", "[-1, D]"),
    ("manipulator", "serving_default", "input", "feature", "DT_FLOAT", "[-1, D]"),
    ("manipulator", "serving_default", "input", "attribute", "DT_STRING", "[-1]"),
    ("manipulator", "serving_default", "input", "value", "DT_STRING", "[-1]"),
    ("manipulator", "serving_default", "output", "feature", "DT_FLOAT", "[-1, D]"),
    ("manipulator", "describe", "input", "feature", "DT_FLOAT", "[-1, D]"),
    ("manipulator", "describe", "output", "shape", "DT_STRING", "[-1]"),
    ("manipulator", "describe", "output", "shape_score", "DT_FLOAT", "[-1]"),
    ("manipulator", "describe", "output", "color", "DT_STRING", "[-1]"),
    ("manipulator", "describe", "output", "color_score", "DT_FLOAT", "[-1]"),
    ("manipulator", "describe", "output", "pattern", "DT_STRING", "[-1]"),
    ("manipulator", "describe", "output", "pattern_score", "DT_FLOAT", "[-1]"),
    ("searcher", "serving_default", "input", "feature", "DT_FLOAT", "[-1, D]"),
    ("searcher", "serving_default", "output", "ids", "DT_STRING", "[-1, K]"),
    ("searcher", "serving_default", "output", "scores", "DT_FLOAT", "[-1, K]"),
}


def exported_wire_names(exported):
    """WIRE_NAMES-style rows read from each exported saved_model.pb's signature_defs."""
    rows, methods = set(), set()
    symbols = {FEATURE_DIM: "D", TOP_K: "K"}
    for model in ("extractor", "manipulator", "searcher"):
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(exported[model], "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        (meta_graph,) = saved_model.meta_graphs
        assert list(meta_graph.meta_info_def.tags) == ["serve"]
        for name, signature in meta_graph.signature_def.items():
            if name.startswith("__"):  # __saved_model_init_op: not a serving signature
                continue
            methods.add(signature.method_name)
            for direction, tensors in (("input", signature.inputs), ("output", signature.outputs)):
                for tensor, info in tensors.items():
                    dims = [symbols.get(d.size, str(d.size)) for d in info.tensor_shape.dim]
                    dtype = types_pb2.DataType.Name(info.dtype)
                    rows.add((model, name, direction, tensor, dtype, f"[{', '.join(dims)}]"))
    return rows, methods


def build_md_wire_names():
    """The rows of BUILD.md's wire-names table (backticks stripped)."""
    with open(os.path.join(REPO, "BUILD.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"BUILD.md needs one {BEGIN} ... {END}"
    table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    lines = [line.strip() for line in table.strip().splitlines()]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:6] == ["model", "signature", "in/out", "tensor", "dtype", "shape"], header
    assert set(lines[1].replace("|", "").strip()) <= set("-: "), lines[1]
    rows = []
    for line in lines[2:]:
        cells = [c.strip().strip("`").strip() for c in line.strip("|").split("|")]
        rows.append(tuple(cells[:6]))
    assert len(rows) == len(set(rows)), "a row appears twice in BUILD.md's wire-names table"
    return set(rows)


def test_exported_savedmodels_have_exactly_the_pinned_wire_names(exported):
    rows, methods = exported_wire_names(exported)
    assert methods == {METHOD}
    assert rows == WIRE_NAMES, (
        f"\nexported, not pinned: {sorted(rows - WIRE_NAMES)}"
        f"\npinned, not exported: {sorted(WIRE_NAMES - rows)}"
    )


def test_build_md_table_lists_exactly_the_pinned_wire_names():
    rows = build_md_wire_names()
    assert rows == WIRE_NAMES, (
        f"\nin BUILD.md, not pinned: {sorted(rows - WIRE_NAMES)}"
        f"\npinned, not in BUILD.md: {sorted(WIRE_NAMES - rows)}"
    )


def test_signatures_module_uses_the_pinned_names():
    assert (sig.EXTRACTOR, sig.MANIPULATOR, sig.SEARCHER) == (
        "extractor",
        "manipulator",
        "searcher",
    )
    assert sig.MODEL_NAMES == ("extractor", "manipulator", "searcher")
    assert (sig.SERVING_DEFAULT, sig.FROM_PIXELS, sig.DESCRIBE) == (
        "serving_default",
        "from_pixels",
        "describe",
    )
    assert (
        sig.IMAGE_BYTES,
        sig.IMAGES,
        sig.FEATURE,
        sig.ATTRIBUTE,
        sig.VALUE,
        sig.IDS,
        sig.SCORES,
        sig.SCORE_SUFFIX,
    ) == ("image_bytes", "images", "feature", "attribute", "value", "ids", "scores", "_score")
    assert tuple(vocabulary.ATTRIBUTE_TYPES) == ("shape", "color", "pattern")  # describe outputs
    assert sig.WARMUP_FILE == "assets.extra/tf_serving_warmup_requests"  # TF Serving's path
    assert {r[0] for r in WIRE_NAMES} == set(sig.MODEL_NAMES)
    assert {r[1] for r in WIRE_NAMES} == {sig.SERVING_DEFAULT, sig.FROM_PIXELS, sig.DESCRIBE}
    tensors = {
        sig.IMAGE_BYTES,
        sig.IMAGES,
        sig.FEATURE,
        sig.ATTRIBUTE,
        sig.VALUE,
        sig.IDS,
        sig.SCORES,
    }
    tensors |= {a + s for a in vocabulary.ATTRIBUTE_TYPES for s in ("", sig.SCORE_SUFFIX)}
    assert {r[3] for r in WIRE_NAMES} == tensors
