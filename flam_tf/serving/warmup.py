"""Warm-up requests: `<version>/assets.extra/tf_serving_warmup_requests` (`sig.WARMUP_FILE`).

A TFRecord file of PredictionLog records that TF Serving (and the dev server) replays when it
loads a version; a failing request fails the load. Every version folder of an export carries one
request per signature.
"""

import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from flam_tf import vocabulary
from flam_tf.serving import signatures as sig


def _request(model: str, signature: str, inputs: Dict[str, np.ndarray]):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def warmup_requests(
    model: str, feature_dim: int, image_size: int
) -> List[predict_pb2.PredictRequest]:
    """Valid PredictRequests that exercise every signature of `model` once (TF Serving runs them
    at load time; a failing warm-up request fails the load)."""
    feature = np.full((2, feature_dim), 1.0 / np.sqrt(feature_dim), np.float32)
    if model == sig.EXTRACTOR:
        pixels = np.full((2, image_size, image_size, 3), 128, np.uint8)
        png = tf.io.encode_png(pixels[0]).numpy()
        return [
            _request(model, sig.SERVING_DEFAULT, {sig.IMAGE_BYTES: np.array([png, png])}),
            _request(model, sig.FROM_PIXELS, {sig.IMAGES: pixels}),
        ]
    if model == sig.MANIPULATOR:
        a, b = vocabulary.ATTRIBUTE_TYPES[:2]
        edits = {
            sig.FEATURE: feature,
            sig.ATTRIBUTE: np.array([a.encode(), f"{a}{sig.EDIT_SEPARATOR}{b}".encode()]),
            sig.VALUE: np.array(
                [
                    vocabulary.CLASSES[a][0].encode(),
                    f"{vocabulary.CLASSES[a][1]}{sig.EDIT_SEPARATOR}"
                    f"{vocabulary.CLASSES[b][0]}".encode(),
                ]
            ),
        }
        return [
            _request(model, sig.SERVING_DEFAULT, edits),
            _request(model, sig.DESCRIBE, {sig.FEATURE: feature}),
        ]
    if model == sig.SEARCHER:
        return [_request(model, sig.SERVING_DEFAULT, {sig.FEATURE: feature})]
    raise ValueError(f"Unknown model. Received: model={model!r}; expected one of {sig.MODEL_NAMES}")


def write_warmup(path: str, requests: Sequence[predict_pb2.PredictRequest]) -> str:
    """Writes PredictRequests as a TFRecord file of PredictionLog records; returns `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup(path: str) -> List[predict_pb2.PredictRequest]:
    """Reads the PredictRequests of a warm-up file (TFRecord of PredictionLog)."""
    out = []
    for record in tf.data.TFRecordDataset(path):
        out.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request)
    return out
