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


@pytest.mark.parametrize(
    "section, name, value, message",
    [
        ("manipulator", "matching", "X", "matching"),
        ("runtime", "strategy", "tpu", "strategy"),
        ("data", "attribute_source", "darn", "data directory"),
        ("extractor", "images_per_instance", 1, "images_per_instance"),
        ("extractor", "backbone", "vgg", "extractor.backbone"),
        ("extractor", "pooling", "avg", "extractor.pooling"),
        ("data", "image_size", 0, r"data.image_size must be >= 16"),
        ("data", "num_instances", 5, "data.num_instances"),
        ("data", "entanglement", -1.0, "data.entanglement"),
        ("data", "label_missing_prob", 1.0, r"data.label_missing_prob must be in \[0, 1\)"),
        ("data", "label_missing_prob", -0.1, "data.label_missing_prob"),
        ("data", "twins_per_item", 4, "data.twins_per_item"),
        ("data", "top_n_classes", 0, "data.top_n_classes"),
        ("data", "top_n_classes", 11, "data.top_n_classes"),
        ("data", "fam_eval_size", -1, "data.fam_eval_size"),
        ("data", "max_image_pixels", 0, r"data.max_image_pixels must be >= 1"),
        ("data", "decode_cache_mb", -1, r"data.decode_cache_mb must be >= 0"),
        ("manipulator", "precision", "float16", "manipulator.precision"),
        ("runtime", "min_steps_per_epoch", 0, r"runtime.min_steps_per_epoch must be >= 1"),
        ("extractor", "feature_dim", 0, "extractor.feature_dim"),
        ("extractor", "num_ce_classes", 0, "extractor.num_ce_classes"),
        ("extractor", "margin", -0.1, "extractor.margin"),
        ("extractor", "instances_per_batch", 1, "extractor.instances_per_batch"),
        ("extractor", "epochs", -1, r"extractor.epochs must be >= 1. Received: -1"),
        ("extractor", "steps_per_epoch", 0, "extractor.steps_per_epoch"),
        ("extractor", "learning_rate", 0.0, r"extractor.learning_rate must be > 0"),
        ("extractor", "learning_rate", float("nan"), "extractor.learning_rate"),
        ("embedder", "embedding_dim", 0, "embedder.embedding_dim"),
        ("embedder", "hidden_units", 0, "embedder.hidden_units"),
        ("embedder", "margin", -1.0, "embedder.margin"),
        ("embedder", "batch_size", 1, "embedder.batch_size"),
        ("embedder", "epochs", 0, "embedder.epochs"),
        ("embedder", "learning_rate", -1e-3, "embedder.learning_rate"),
        ("manipulator", "g_hidden", 0, "manipulator.g_hidden"),
        ("manipulator", "d_hidden", 0, "manipulator.d_hidden"),
        ("manipulator", "adv_weight", -1.0, "manipulator.adv_weight"),
        ("manipulator", "match_weight", -1.0, "manipulator.match_weight"),
        ("manipulator", "cycle_weight", -1.0, "manipulator.cycle_weight"),
        ("manipulator", "teacher_weight", -1.0, "manipulator.teacher_weight"),
        ("manipulator", "retrieval_weight", float("inf"), "manipulator.retrieval_weight"),
        ("manipulator", "distance_weight", -1.0, "manipulator.distance_weight"),
        ("manipulator", "retrieval_temperature", 0.0, "manipulator.retrieval_temperature"),
        ("manipulator", "memory_temperature", 0.0, "manipulator.memory_temperature"),
        ("manipulator", "batch_size", 1, "manipulator.batch_size"),
        ("manipulator", "epochs", 0, "manipulator.epochs"),
        ("manipulator", "paper_epochs", 0, "manipulator.paper_epochs"),
        ("manipulator", "g_learning_rate", 0.0, "manipulator.g_learning_rate"),
        ("manipulator", "d_learning_rate", 0.0, "manipulator.d_learning_rate"),
        ("baselines", "block_dim", 0, "baselines.block_dim"),
        ("baselines", "batch_size", 0, "baselines.batch_size"),
        ("baselines", "epochs", 0, "baselines.epochs"),
        ("baselines", "learning_rate", 0.0, "baselines.learning_rate"),
        ("baselines", "pixel_epochs", -1, "baselines.pixel_epochs"),
        ("baselines", "pixel_steps_per_epoch", 0, "baselines.pixel_steps_per_epoch"),
        ("baselines", "pixel_batch_size", 0, "baselines.pixel_batch_size"),
        ("evaluation", "figure_queries", 0, "evaluation.figure_queries"),
        ("runtime", "seed", -1, "runtime.seed"),
    ],
)
def test_bad_settings_are_refused_by_name(section, name, value, message):
    config = config_lib.get_preset("default")
    config_lib.apply_override(config, section, name, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_every_numeric_setting_is_range_checked():
    """Each int/float field has a check in validate(); 0 is accepted only where it means 'off'."""
    from flam_tf import vocabulary

    numeric = {
        f"{s}.{n}" for s, n, f in config_lib.overridable_fields() if type(f.default) in (int, float)
    }
    checked = [name for name, _, _ in config_lib._NUMERIC_CHECKS]
    assert sorted(checked) == sorted(numeric)
    assert all(len(c) == 10 for c in vocabulary.CLASSES.values())  # data.top_n_classes <= 10


def test_max_image_pixels_setting():
    config = config_lib.get_preset("default")
    assert config.data.max_image_pixels == 4096 * 4096
    assert "data.max_image_pixels" in config_lib.field_help()
    config_lib.apply_override(config, "data", "max_image_pixels", "1")
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


def test_only_a_valid_config_is_written(tmp_path):
    from flam_tf.run_directory import RunDirectory

    run = RunDirectory(str(tmp_path))
    config = config_lib.get_preset("smoke")
    config.extractor.epochs = -1
    with pytest.raises(ValueError, match="extractor.epochs"):
        run.check_or_write_config(config)
    assert not (tmp_path / "config.json").exists()
    config.extractor.epochs = 2
    run.check_or_write_config(config)
    assert (tmp_path / "config.json").exists()


def test_a_setting_added_later_at_its_default_is_no_difference(tmp_path):
    """A run directory written before data.max_image_pixels existed still reruns."""
    from flam_tf.run_directory import RunDirectory, write_json

    config = config_lib.get_preset("smoke")
    old = config.to_dict()
    del old["data"]["max_image_pixels"]
    write_json(str(tmp_path / "config.json"), old)
    config.data.max_image_pixels = 100
    with pytest.raises(ValueError, match="data.max_image_pixels: None -> 100"):
        RunDirectory(str(tmp_path)).check_or_write_config(config)
    config.data.max_image_pixels = 4096 * 4096
    RunDirectory(str(tmp_path)).check_or_write_config(config)  # accepted, and recorded
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["data"]["max_image_pixels"] == 4096 * 4096


def test_damaged_config_json_is_named(tmp_path):
    from flam_tf.run_directory import RunDirectory

    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json is damaged"):
        RunDirectory(str(tmp_path)).check_or_write_config(config_lib.get_preset("smoke"))


def test_run_dir_that_is_a_file_or_inside_one_is_refused(tmp_path):
    from flam_tf.run_directory import RunDirectory

    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        RunDirectory(str(tmp_path / "f"))
    with pytest.raises(ValueError, match="is inside a file"):
        RunDirectory(str(tmp_path / "f" / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "models").write_text("")
    with pytest.raises(ValueError, match="models is a file"):
        RunDirectory(str(tmp_path / "run"))
