"""Read and write TF Serving's `models.config` (a text-format `ModelServerConfig`).

Only the `model_config_list` form is used: one entry per model with `name`, `base_path` and
`model_platform: "tensorflow"`, optionally a `model_version_policy`. The same file feeds
`tensorflow_model_server --model_config_file=...` and `python -m serving.dev_server`. The export
pins every model to one version (`specific`), so the file, replaced atomically, commits an export.
"""

import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

PLATFORM = "tensorflow"


def build_config(
    base_paths: Mapping[str, str], versions: Optional[Mapping[str, Sequence[int]]] = None
) -> model_server_config_pb2.ModelServerConfig:
    """Builds a ModelServerConfig naming each model.

    Args:
        base_paths: model name -> base path (the folder holding the integer version folders).
        versions: optional model name -> versions to serve (a `specific` version policy);
            models not named here serve their latest version (TF Serving's default).

    Returns:
        A `ModelServerConfig` with a `model_config_list`.
    """
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in base_paths.items():
        entry = config.model_config_list.config.add(
            name=name, base_path=base_path, model_platform=PLATFORM
        )
        if versions and versions.get(name):
            entry.model_version_policy.specific.versions.extend(int(v) for v in versions[name])
    return config


def write_config(
    path: str,
    config: model_server_config_pb2.ModelServerConfig,
    before_replace: Optional[Callable[[], None]] = None,
) -> str:
    """Writes `config` as text format to `path` atomically; returns `path`.

    The text goes to `<path>.tmp-<pid>` (flushed and fsync'ed), which then replaces `path`
    (os.replace): a reader sees the old file or the new one, never a part. `before_replace` is
    called between the two (a test hook).
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(config))
        f.flush()
        os.fsync(f.fileno())
    if before_replace is not None:
        before_replace()
    os.replace(tmp, path)
    return path


def pinned_versions(config: model_server_config_pb2.ModelServerConfig) -> Dict[str, List[int]]:
    """Model name -> the versions its `specific` version policy names (models without one are
    left out: TF Serving serves their latest version)."""
    out = {}
    for entry in config.model_config_list.config:
        if entry.model_version_policy.WhichOneof("policy_choice") == "specific":
            out[entry.name] = sorted(entry.model_version_policy.specific.versions)
    return out


def read_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parses a text-format models.config.

    Relative base paths are resolved against the config file's folder (TF Serving resolves them
    against its working directory; absolute paths, the export default, avoid the difference).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a valid text-format ModelServerConfig with a
            `model_config_list`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"models.config not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a valid ModelServerConfig: {e}") from None
    if not config.HasField("model_config_list"):
        raise ValueError(f"{path}: expected a model_config_list")
    root = os.path.dirname(os.path.abspath(path))
    for entry in config.model_config_list.config:
        if not os.path.isabs(entry.base_path) and "://" not in entry.base_path:
            entry.base_path = os.path.normpath(os.path.join(root, entry.base_path))
    return config


def base_paths(config: model_server_config_pb2.ModelServerConfig) -> Dict[str, str]:
    """Returns model name -> base path of a parsed config."""
    return {c.name: c.base_path for c in config.model_config_list.config}
