"""Hostile input: decompression bombs, amplified TensorProtos, echoed strings, oversize batches,
overflowing queries, a taken port and shutdown under load. Each request goes to a real in-process
dev server over gRPC; memory is the RSS of this process (the server runs in it)."""

import io
import os
import re
import socket
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import FEATURE_DIM, gallery_npz
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from flam_tf.data import pipeline
from flam_tf.serving import dev_server, preprocessing, servables
from flam_tf.serving import signatures as sig

pytestmark = pytest.mark.serving
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVALID = grpc.StatusCode.INVALID_ARGUMENT
LIMIT_TEXT = f"exceeds the limit of {pipeline.MAX_IMAGE_PIXELS} pixels (max_image_pixels)"
MB = 2**20


# ----------------------------------------------------------------------------------------------
# Helpers.


def rss_bytes() -> int:
    """Resident set size of this process (the in-process server's memory)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width=20000, height=20000, with_data=True) -> bytes:
    """A valid 1-bit grayscale PNG of zeros, compressed by hand (~50 KB for 20,000^2); never
    decoded here. Without data: the signature and IHDR only (what a header check reads)."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    if not with_data:
        return b"\x89PNG\r\n\x1a\n" + ihdr
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def gif_bytes(screen, frames) -> bytes:
    """A GIF written by hand: logical screen (w, h), frames [(w, h)], 2-colour global table,
    each frame's LZW data one clear code + end code (frames are not decoded here)."""
    out = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0x80, 0, 0)
    out += b"\0\0\0\xff\xff\xff"
    for w, h in frames:
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
        out += b"\x02\x01\x2c\x00"  # LZW minimum code size 2; clear + end codes; terminator
    return out + b"\x3b"


def bmp_bytes(pixels: np.ndarray, top_down: bool = False) -> bytes:
    """A 24-bit BMP written by hand (rows padded to 4 bytes, BGR); negative height = top-down."""
    height, width, _ = pixels.shape
    stride = (3 * width + 3) // 4 * 4
    rows = pixels if top_down else pixels[::-1]
    body = b"".join(r[:, ::-1].tobytes() + b"\0" * (stride - 3 * width) for r in rows)
    info = struct.pack(
        "<IiiHHIIiiII",
        40,
        width,
        -height if top_down else height,
        1,
        24,
        0,
        len(body),
        2835,
        2835,
        0,
        0,
    )
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(body), 0, 0, 54) + info + body


def jpeg_size(data: bytes):
    """(height, width) from a JPEG's SOF marker, parsed with struct (independent of TF)."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return struct.unpack(">HH", data[i + 5 : i + 9])
        i += 2 + length
    raise ValueError("no SOF marker")


def reference_size(data: bytes):
    """(height, width) from the header bytes with struct.unpack."""
    if data[:3] == b"\xff\xd8\xff":
        return jpeg_size(data)
    if data[:4] == b"\x89PNG":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:3] == b"GIF":
        width, height = struct.unpack("<HH", data[6:10])
        return height, width
    width, height = struct.unpack("<ii", data[18:26])
    return abs(height), width


def tensor_proto(dtype, dims, **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
        ),
    )
    for field, value in values.items():
        getattr(proto, field).extend(value)
    return proto


def predict(server, model, signature, inputs, timeout=30.0):
    """Raw gRPC Predict: inputs are numpy arrays or TensorProtos; returns numpy outputs."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(
            value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        )
    with grpc.insecure_channel(
        server, options=[("grpc.max_send_message_length", 128 * MB)]
    ) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=timeout
        )
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def predict_error(server, model, signature, inputs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        predict(server, model, signature, inputs)
    return e.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_UNIT = (np.eye(FEATURE_DIM)[:2] * 0.6 + 0.8 / np.sqrt(FEATURE_DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def server(exported):
    grpc_server, port, _ = dev_server.create_server(exported["models.config"], port=0)
    grpc_server.start()
    address = f"127.0.0.1:{port}"
    predict(
        address,
        sig.EXTRACTOR,
        sig.SERVING_DEFAULT,  # warm: first-call allocations
        {
            sig.IMAGE_BYTES: np.array(
                [tf.io.encode_png(np.zeros((9, 9, 3), np.uint8)).numpy()], dtype=object
            )
        },
    )
    predict(address, sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: _UNIT})
    yield address
    grpc_server.stop(0).wait()


# ----------------------------------------------------------------------------------------------
# Served: bombs, amplification, echoes, batches, overflow.


def test_png_bomb_is_refused_before_decoding(server):
    bomb = png_bomb()
    assert len(bomb) < 100_000
    before = rss_bytes()
    start = time.monotonic()
    e = predict_error(
        server,
        sig.EXTRACTOR,
        sig.SERVING_DEFAULT,
        {sig.IMAGE_BYTES: np.array([bomb], dtype=object)},
    )
    elapsed = time.monotonic() - start
    grown = rss_bytes() - before
    assert e.code() == INVALID, e.details()
    assert f"Image of 20000 x 20000 pixels {LIMIT_TEXT}" in e.details()
    assert grown < 100 * MB, f"RSS grew by {grown / MB:.0f} MB"
    assert elapsed < 5.0


def test_gif_frame_larger_than_its_logical_screen_is_refused(server):
    """TF's GIF canvas is the largest frame, not the logical screen: a 1 x 1 screen holding a
    20,000 x 20,000 frame must be refused as 20,000 x 20,000."""
    bomb = gif_bytes((1, 1), [(20000, 20000)])
    before = rss_bytes()
    e = predict_error(
        server,
        sig.EXTRACTOR,
        sig.SERVING_DEFAULT,
        {sig.IMAGE_BYTES: np.array([bomb], dtype=object)},
    )
    assert e.code() == INVALID and f"Image of 20000 x 20000 pixels {LIMIT_TEXT}" in e.details()
    assert rss_bytes() - before < 100 * MB


@pytest.mark.parametrize(
    "dims,fragment",
    [
        ([400000, 256], f"At most {sig.MAX_FEATURES_PER_REQUEST} rows per request"),
        ([1000, 100000], "more than the 67108864 bytes a request may hold (max_request_mb)"),
    ],
)
def test_amplified_tensor_proto_is_refused_before_it_is_built(server, dims, fragment):
    """59 bytes declaring 400 MB (one float value, which tf.make_ndarray would repeat)."""
    proto = tensor_proto(types_pb2.DT_FLOAT, dims, float_val=[1.0])
    assert proto.ByteSize() < 64
    before = rss_bytes()
    e = predict_error(server, sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: proto})
    grown = rss_bytes() - before
    assert e.code() == INVALID, e.details()
    assert fragment in e.details()
    assert grown < 100 * MB, f"RSS grew by {grown / MB:.0f} MB"


def test_malformed_tensor_protos_are_invalid_and_one_value_still_broadcasts(server):
    bad = {
        "negative dim": tensor_proto(types_pb2.DT_FLOAT, [-1, FEATURE_DIM], float_val=[1.0]),
        "too many values": tensor_proto(
            types_pb2.DT_FLOAT, [1, FEATURE_DIM], float_val=[1.0] * (FEATURE_DIM + 1)
        ),
        "short content": tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_content=b"\0" * 4,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[
                    tensor_shape_pb2.TensorShapeProto.Dim(size=2),
                    tensor_shape_pb2.TensorShapeProto.Dim(size=FEATURE_DIM),
                ]
            ),
        ),
    }
    for name, proto in bad.items():
        e = predict_error(server, sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: proto})
        assert e.code() == INVALID and e.details().startswith(f"Input {sig.FEATURE}: "), name
    # As in TF (Tensor::FromProto), one value fills a (small) declared shape.
    one = tensor_proto(types_pb2.DT_FLOAT, [3, FEATURE_DIM], float_val=[0.5])
    got = predict(server, sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: one})
    want = predict(
        server,
        sig.SEARCHER,
        sig.SERVING_DEFAULT,
        {sig.FEATURE: np.full((3, FEATURE_DIM), 0.5, np.float32)},
    )
    np.testing.assert_array_equal(got[sig.IDS], want[sig.IDS])


@pytest.mark.parametrize(
    "attribute", [b"x" * 2**20, b"\xff\xfe col\xc3our \x80" * 3], ids=["1MB", "non_utf8"]
)
def test_attribute_is_not_echoed_whole(server, attribute):
    e = predict_error(
        server,
        sig.MANIPULATOR,
        sig.SERVING_DEFAULT,
        {
            sig.FEATURE: _UNIT[:1],
            sig.ATTRIBUTE: np.array([attribute], dtype=object),
            sig.VALUE: np.array([b"red"], dtype=object),
        },
    )
    assert e.code() == INVALID, e.details()
    message = e.details()  # TF's Assert format: "assertion failed: [<message>]"
    real = "assertion failed: [Unknown attribute. Received: attribute="
    assert message.startswith(real), message[:200]
    assert len(message) < 500
    quoted = message[len(real) :].split(";")[0]
    assert len(quoted) <= preprocessing.QUOTE_CHARS + 3
    assert "expected one of [shape, color, pattern]" in message


def test_server_messages_are_capped_and_valid_utf8():
    long = dev_server.clean_message("é" * 10**6)
    assert len(long.encode("utf-8")) <= dev_server.MAX_MESSAGE_BYTES and long.endswith("...")
    assert dev_server.clean_message(b"bad \xff byte") == "bad \ufffd byte"
    assert dev_server.clean_message("short") == "short"


@pytest.mark.parametrize(
    "model,signature,key,rows,limit",
    [
        (
            sig.EXTRACTOR,
            sig.SERVING_DEFAULT,
            sig.IMAGE_BYTES,
            sig.MAX_IMAGES_PER_REQUEST + 1,
            sig.MAX_IMAGES_PER_REQUEST,
        ),
        (
            sig.EXTRACTOR,
            sig.FROM_PIXELS,
            sig.IMAGES,
            sig.MAX_IMAGES_PER_REQUEST + 1,
            sig.MAX_IMAGES_PER_REQUEST,
        ),
        (
            sig.SEARCHER,
            sig.SERVING_DEFAULT,
            sig.FEATURE,
            sig.MAX_FEATURES_PER_REQUEST + 1,
            sig.MAX_FEATURES_PER_REQUEST,
        ),
        (
            sig.MANIPULATOR,
            sig.DESCRIBE,
            sig.FEATURE,
            sig.MAX_FEATURES_PER_REQUEST + 1,
            sig.MAX_FEATURES_PER_REQUEST,
        ),
    ],
)
def test_batch_over_the_maximum_is_invalid(server, exported, model, signature, key, rows, limit):
    png = tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy()
    value = {
        sig.IMAGE_BYTES: np.array([png] * rows, dtype=object),
        sig.IMAGES: np.zeros((rows, 4, 4, 3), np.uint8),
        sig.FEATURE: np.ones((rows, FEATURE_DIM), np.float32),
    }[key]
    # The dev server checks the declared shape ...
    e = predict_error(server, model, signature, {key: value})
    assert e.code() == INVALID and f"At most {limit} rows per request" in e.details()
    # ... and the graph asserts it too, so tensorflow_model_server enforces the same limit.
    fn = tf.saved_model.load(exported[model]).signatures[signature]
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"At most {limit} "):
        fn(**{key: tf.constant(value)})
    fn(**{key: tf.constant(value[:limit])})  # the maximum itself is accepted


def test_from_pixels_refuses_images_over_the_pixel_limit(exported):
    fn = tf.saved_model.load(exported[sig.EXTRACTOR]).signatures[sig.FROM_PIXELS]
    too_wide = tf.zeros([1, 1, pipeline.MAX_IMAGE_PIXELS + 1, 3], tf.uint8)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=re.escape(f"Image of {pipeline.MAX_IMAGE_PIXELS + 1} x 1 pixels {LIMIT_TEXT}"),
    ):
        fn(images=too_wide)


def test_huge_finite_query_ranks_like_its_direction(server, run_dir):
    gallery, ids = gallery_npz(run_dir)
    unit = gallery[3] + 0.3 * gallery[7]
    unit /= np.linalg.norm(unit)
    queries = np.stack([unit, unit * 3e38, np.zeros_like(unit)]).astype(np.float32)
    assert np.isfinite(queries).all()
    out = predict(server, sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: queries})
    np.testing.assert_array_equal(out[sig.IDS][1], out[sig.IDS][0])
    np.testing.assert_allclose(out[sig.SCORES][1], out[sig.SCORES][0], atol=1e-6)
    assert out[sig.IDS][0][0].decode() == ids[3]
    np.testing.assert_array_equal(out[sig.SCORES][2], 0.0)  # zero query: zeros, not NaN


# ----------------------------------------------------------------------------------------------
# Start-up and shutdown.


def test_taken_port_fails_fast_without_loading_models(monkeypatch):
    class MustNotLoad:
        def __init__(self, *args, **kwargs):
            raise AssertionError("models loaded before the port was bound")

    monkeypatch.setattr(dev_server, "ModelRegistry", MustNotLoad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(OSError, match=f"Cannot bind 127.0.0.1:{port}"):
            dev_server.create_server("no/such/models.config", port=port)
        assert time.monotonic() - start < 0.5


def test_failed_load_releases_the_port(monkeypatch):
    class FailingLoad:
        def __init__(self, *args, **kwargs):
            raise FileNotFoundError("no models")

    monkeypatch.setattr(dev_server, "ModelRegistry", FailingLoad)
    port = free_port()
    with pytest.raises(FileNotFoundError):
        dev_server.create_server("no/such/models.config", port=port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again


def test_stop_drains_in_flight_requests_and_refuses_new_ones(exported, monkeypatch):
    """serve() stopped while a slow request runs: it completes; a new one is refused."""
    slow, entered = threading.Event(), threading.Event()
    original = servables.Servable.predict

    def slow_predict(self, request):
        if slow.is_set():
            entered.set()
            time.sleep(3.0)
        return original(self, request)

    monkeypatch.setattr(servables.Servable, "predict", slow_predict)
    port, ready, stop = free_port(), threading.Event(), threading.Event()
    thread = threading.Thread(
        target=dev_server.serve,
        args=(exported["models.config"],),
        kwargs=dict(port=port, grace_s=10.0, ready=ready, stop=stop),
        daemon=True,
    )
    thread.start()
    assert ready.wait(60)
    address, result = f"127.0.0.1:{port}", {}

    def in_flight():
        try:
            result["out"] = predict(
                address, sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: _UNIT}
            )
        except grpc.RpcError as e:
            result["error"] = e

    slow.set()
    request = threading.Thread(target=in_flight)
    request.start()
    assert entered.wait(10)
    stop.set()
    time.sleep(1.0)  # serve() sees `stop` within 0.5 s and starts draining
    with pytest.raises(grpc.RpcError) as refused:
        predict(address, sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: _UNIT}, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    request.join(15)
    assert "error" not in result, result.get("error")
    assert result["out"][sig.IDS].shape == (2, 10)
    thread.join(15)
    assert not thread.is_alive()


# ----------------------------------------------------------------------------------------------
# The training pipeline's decoding.


def _images():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (37, 53, 3), np.uint8)
    from PIL import Image

    gif = io.BytesIO()
    Image.fromarray(pixels).convert("P").save(gif, format="GIF")
    bmp = io.BytesIO()
    Image.fromarray(pixels).save(bmp, format="BMP")
    return {
        "jpeg": tf.io.encode_jpeg(pixels).numpy(),
        "png": tf.io.encode_png(pixels).numpy(),
        "gif": gif.getvalue(),
        "bmp": bmp.getvalue(),
        "bmp_top_down": bmp_bytes(pixels, top_down=True),
        "gif_by_hand": gif_bytes((300, 200), [(300, 200)]),
    }


@pytest.mark.parametrize("name", ["jpeg", "png", "gif", "bmp", "bmp_top_down", "gif_by_hand"])
def test_image_size_from_header_matches_struct_reference(name):
    data = _images()[name]
    want = reference_size(data)
    assert tuple(pipeline.image_size_from_header(data).numpy()) == want
    graph = tf.function(
        pipeline.image_size_from_header, input_signature=[tf.TensorSpec([], tf.string)]
    )
    assert tuple(graph(tf.constant(data)).numpy()) == want
    if name != "gif_by_hand":  # decodable: the header's size is what TF decodes to
        assert tf.io.decode_image(data, channels=3, expand_animations=False).shape[:2] == want


@pytest.mark.parametrize("name", ["jpeg", "png", "gif", "bmp", "bmp_top_down"])
def test_decode_image_gives_the_same_pixels_as_before(name):
    data = _images()[name]
    before = tf.image.resize(
        tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32), (16, 16)
    )
    np.testing.assert_array_equal(pipeline.decode_image(data, 16).numpy(), before.numpy())
    ds = tf.data.Dataset.from_tensors(data).map(lambda b: pipeline.decode_image(b, 16))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), before.numpy())


def test_decode_image_refuses_oversize_headers_before_decoding():
    header_only = png_bomb(with_data=False)  # not decodable: only the check can fail first
    assert len(header_only) == 33
    for data in (header_only, gif_bytes((20000, 20000), [(1, 1)])):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=re.escape(f"Image of 20000 x 20000 pixels {LIMIT_TEXT}"),
        ):
            pipeline.decode_image(data, 16)
    ds = tf.data.Dataset.from_tensors(header_only).map(lambda b: pipeline.decode_image(b, 16))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        next(iter(ds))
    # PNG sizes are uint32: 2^32 - 1 squared must not overflow into a "small" image.
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        pipeline.decode_image(png_bomb(2**32 - 1, 2**32 - 1, with_data=False), 16)


def test_decode_image_limit_is_configurable_and_counts_all_gif_frames():
    data = _images()["png"]
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=re.escape("Image of 53 x 37 pixels exceeds the limit of 1000"),
    ):
        pipeline.decode_image(data, 8, max_pixels=1000)
    assert pipeline.decode_image(data, 8, max_pixels=37 * 53).shape == (8, 8, 3)
    frames = gif_bytes((100, 100), [(100, 100)] * 3)  # 30,000 pixels decoded in all
    with pytest.raises(tf.errors.InvalidArgumentError, match="30000 in all GIF frames"):
        pipeline.decode_image(frames, 8, max_pixels=20000)


def test_unknown_format_still_fails_clearly():
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        pipeline.decode_image(b"definitely not an image", 8)


# ----------------------------------------------------------------------------------------------
# BUILD.md states the limits the code enforces.


def test_build_md_limits_match_the_code():
    with open(os.path.join(ROOT, "BUILD.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("### Limits on requests and images", 1)[1].split("\n#", 1)[0]
    numbers = {int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", section)}
    for value in (
        pipeline.MAX_IMAGE_PIXELS,
        sig.MAX_IMAGES_PER_REQUEST,
        sig.MAX_FEATURES_PER_REQUEST,
        servables.DEFAULT_MAX_REQUEST_MB,
        dev_server.MAX_MESSAGE_BYTES,
        int(dev_server.DEFAULT_GRACE_S),
        preprocessing.QUOTE_CHARS,
    ):
        assert value in numbers, value
    assert "data.max_image_pixels" in section and "max_image_pixels=" in section
