"""Typed configs: presets, JSON round trip, overrides, and documented fields."""

import json

import pytest

from flam_tf import config as config_lib


@pytest.mark.parametrize("name", list(config_lib.PRESETS))
def test_presets_validate_and_round_trip_through_json(name):
    config = config_lib.get_preset(name)
    config.validate()
    again = config_lib.ExperimentConfig.from_dict(json.loads(config.to_json()))
    assert again == config and again.preset == name


def test_paper_preset_has_the_papers_sizes():
    paper = config_lib.get_preset("paper")
    assert paper.extractor.backbone == "resnet50" and paper.extractor.pooling == "spoc"
    assert paper.extractor.feature_dim == 1024 and paper.embedder.embedding_dim == 32
    assert paper.baselines.block_dim == 341


def test_every_overridable_field_has_help_text():
    help_text = config_lib.field_help()
    names = [f"{s}.{n}" for s, n, _ in config_lib.overridable_fields()]
    assert [n for n in names if n not in help_text] == []


def test_overrides_convert_types_and_diff_names_them():
    config = config_lib.get_preset("smoke")
    config_lib.apply_override(config, "extractor", "epochs", "7")
    config_lib.apply_override(config, "manipulator", "adversarial", "true")
    assert config.extractor.epochs == 7 and config.manipulator.adversarial is True
    changed = config_lib.diff(config_lib.get_preset("smoke").to_dict(), config.to_dict())
    assert changed == ["extractor.epochs: 2 -> 7", "manipulator.adversarial: False -> True"]


@pytest.mark.parametrize("section, name, value, message", [
    ("manipulator", "matching", "X", "matching"),
    ("runtime", "strategy", "tpu", "strategy"),
    ("data", "attribute_source", "darn", "data directory"),
    ("extractor", "images_per_instance", 1, "images_per_instance"),
])
def test_bad_settings_are_refused_by_name(section, name, value, message):
    config = config_lib.get_preset("default")
    config_lib.apply_override(config, section, name, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_unknown_settings_and_presets_are_errors():
    with pytest.raises(ValueError, match="bogus"):
        config_lib.ExperimentConfig.from_dict({"extractor": {"bogus": 1}})
    with pytest.raises(ValueError, match="huge"):
        config_lib.get_preset("huge")


def test_ablations_may_be_added_to_a_finished_run_directory(tmp_path):
    from flam_tf.run_directory import RunDirectory

    run = RunDirectory(str(tmp_path))
    config = config_lib.get_preset("smoke")
    run.check_or_write_config(config)
    config.evaluation.ablations = True  # adds work only: accepted and recorded
    run.check_or_write_config(config)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["evaluation"]["ablations"] is True
    config.manipulator.epochs = 99  # changes what finished stages computed: refused
    with pytest.raises(ValueError, match="manipulator.epochs: 3 -> 99"):
        run.check_or_write_config(config)
