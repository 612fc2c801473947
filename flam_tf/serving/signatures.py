"""Public serving API names: defined once, imported by export, client, dev server and tests."""

# Model names in models.config and the export directory layout: E/<model>/<version>/.
EXTRACTOR = "extractor"
MANIPULATOR = "manipulator"
SEARCHER = "searcher"
MODEL_NAMES = (EXTRACTOR, MANIPULATOR, SEARCHER)

# Signature names.
SERVING_DEFAULT = "serving_default"
FROM_PIXELS = "from_pixels"  # extractor: uint8 pixels of any size
DESCRIBE = "describe"  # manipulator: predicted class name + score per attribute type

# Tensor (input/output) names.
IMAGE_BYTES = "image_bytes"  # DT_STRING [-1], JPEG or PNG
IMAGES = "images"  # DT_UINT8 [-1, -1, -1, 3]
FEATURE = "feature"  # DT_FLOAT [-1, D]
ATTRIBUTE = "attribute"  # DT_STRING [-1]
VALUE = "value"  # DT_STRING [-1]
IDS = "ids"  # DT_STRING [-1, K]
SCORES = "scores"  # DT_FLOAT [-1, K]
SCORE_SUFFIX = "_score"  # describe: "<attribute>_score", DT_FLOAT [-1]

DEFAULT_TOP_K = 100
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"

# Manipulator requests: one row may change several attributes in sequence. `attribute` and `value`
# hold the same number of names joined by EDIT_SEPARATOR, applied left to right:
#   attribute="color;pattern", value="red;striped"  ==  color -> red, then pattern -> striped.
# At most MAX_EDITS edits per row; an unknown attribute or value fails with INVALID_ARGUMENT.
# An empty batch (0 rows) is valid for every signature and returns empty outputs.
EDIT_SEPARATOR = ";"
MAX_EDITS = 3

# Request limits, asserted inside each signature's graph (so tensorflow_model_server enforces them
# too: INVALID_ARGUMENT naming the limit) and checked by the dev server before it builds a tensor.
# Images: 64 per request keeps the worst case of one request (64 x the pixel limit of
# flam_tf.data.pipeline.MAX_IMAGE_PIXELS decoded one at a time, 64 x S x S x 3 floats resized)
# to seconds of CPU; clients batch bigger galleries themselves. Features: 1024 rows of D floats
# (4 MiB at D = 1024) are far above an interactive query batch, and bound the searcher's [B, N]
# score matrix to 1024 x gallery size.
MAX_IMAGES_PER_REQUEST = 64  # extractor: serving_default and from_pixels
MAX_FEATURES_PER_REQUEST = 1024  # manipulator: serving_default and describe; searcher
