"""The configuration tree: strict keys, YAML + command-line overrides, clear errors."""

from __future__ import annotations

import pytest
from conftest import REPO

from spine_hf.config import Config, ConfigError, config_to_yaml, parse_config


def test_defaults_yaml_and_command_line_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\nmodel:\n  overrides:\n    hidden_size: 32\n")
    cfg = parse_config(["--config_path", str(path), "--optim.lr=3e-4", "--train.epochs", "7"])
    assert cfg.optim.lr == 3e-4 and cfg.train.epochs == 7
    assert cfg.model.overrides == {"hidden_size": 32}
    assert cfg.data.sampler == Config().data.sampler


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optim.lrr=3"], None),
        (["--optim.loss=hinge"], "optim.loss must be one of"),
        (["--model.library=keras"], "model.library"),
        (["--train.ema_decay=1.5"], "ema_decay"),
        (["--data.min_scale=0"], "min_scale"),
        (["--data.progressive_scale=1"], "data.progressive_scale must be in [0, 1)"),
        (["--data.full_side_min_scale=1.5"], "data.full_side_min_scale must be in [0, 1]"),
        (["--data.full_side_min_scale=0.85"], "acts only with progressive resizing"),
        (["--data.full_side_rotate=5"], "acts only with progressive resizing"),
        (["--data.progressive_max_epochs=-1"], "data.progressive_max_epochs must be >= 0"),
        (["--data.progressive_scale=0.75", "--data.full_side_rotate=-2"], "data.full_side_rotate must be >= 0"),
    ],
)
def test_bad_values_and_unknown_keys_are_refused(args, message):
    with pytest.raises((ConfigError, SystemExit)) as caught:
        parse_config(args)
    if message:
        assert message in str(caught.value)


def test_unknown_key_in_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_config(["--config_path", str(path)])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = parse_config(["--config_path", str(path)])
    assert cfg.train.output_dir.startswith("outputs/")


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config(["--optim.lr=0.123", "--model.overrides", "{depth: 2}"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_to_yaml(cfg))
    again = parse_config(["--config_path", str(path)])
    assert again == cfg


def test_accelerates_no_is_read_as_no_not_as_false(tmp_path):
    assert parse_config(["--train.mixed_precision=no"]).train.mixed_precision == "no"
    (tmp_path / "c.yaml").write_text("train:\n  mixed_precision: no\n")
    assert parse_config(["--config_path", str(tmp_path / "c.yaml")]).train.mixed_precision == "no"
