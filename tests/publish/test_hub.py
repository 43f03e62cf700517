"""`push`: a checked folder, its files listed, the token handed only to the Hub client."""

from __future__ import annotations

import pytest
from factories import fake_hf_api, hub_cache


def test_push_dry_run_lists_the_files_and_the_card_has_the_essentials(trained_model, capsys):
    from spine_hf.cli import main

    assert main(["push", "--model", str(trained_model), "--repo-id", "me/spine", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "README.md"):
        assert name in out
    assert "would upload" in out and "(private)" in out
    card = (trained_model / "README.md").read_text()
    assert card.startswith("---\n") and "model-index" in card and "pipeline_tag: image-classification" in card
    assert "not a medical device" in card and "library_name: timm" in card


def test_push_hands_the_token_only_to_the_hub_client(trained_model, monkeypatch, caplog, capsys):
    import huggingface_hub

    from spine_hf.publish.hub import push

    token = "hf_PLANTED_secret_token_123"
    fake_api, calls = fake_hf_api()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake_api)
    caplog.set_level("DEBUG")
    plan = push(trained_model, "me/spine", private=True, token=token)
    assert calls[0] == ("init", token)
    assert calls[1] == ("create_repo", "me/spine", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[2][1]["folder_path"] == str(trained_model) and calls[2][1]["repo_id"] == "me/spine"
    assert {path for path, _ in plan} >= {"config.json", "model.safetensors", "README.md"}
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err + caplog.text
    assert not any(token in p.read_text(errors="ignore") for p in trained_model.rglob("*") if p.is_file())


def test_push_refuses_a_folder_without_a_model_card(trained_model, tmp_path):
    import shutil

    from spine_hf.publish.hub import push

    copy = tmp_path / "nocard"
    shutil.copytree(trained_model, copy)
    (copy / "README.md").unlink()
    with pytest.raises(ValueError, match="model card"):
        push(copy, "me/spine", dry_run=True)


def test_grade_ranges_and_referral_travel_with_push_and_load_by_repo_id(trusted_model, phantom_split, tmp_path,
                                                                       monkeypatch, capsys):  # fmt: skip
    """The files `calibrate` adds are uploaded with the folder and found again by a Hub repo id."""
    import huggingface_hub.constants

    from spine_hf.cli import main
    from spine_hf.predict.inference import Predictor

    assert main(["push", "--model", str(trusted_model), "--repo-id", "me/spine", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    for name in ("grade_ranges.json", "referral.json", "referral.safetensors", "calibration.json"):
        assert name in listed
    cache = hub_cache(tmp_path / "hub", "spine-org/trusted", trusted_model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    files = sorted((phantom_split / "test").rglob("*.png"))[:3]
    by_id, local = Predictor("spine-org/trusted").predict(files), Predictor(trusted_model).predict(files)
    assert [p.to_json() for p in by_id] == [p.to_json() for p in local]
    assert all(p.grade_range is not None and p.in_distribution is not None for p in by_id)
