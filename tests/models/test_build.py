"""`build_model`: five-grade heads from either library, the library a name belongs to, the precision."""

from __future__ import annotations

import pytest
import torch

from spine_hf.config import ConfigError, ModelConfig
from spine_hf.models.build import build_model, native_bf16, resolve_library, resolve_precision


def test_names_go_to_the_library_that_knows_them():
    assert resolve_library(ModelConfig(name="resnet18")) == "timm"
    assert resolve_library(ModelConfig(name="timm/convnext_small.fb_in22k_ft_in1k")) == "timm"
    assert resolve_library(ModelConfig(name="google/vit-base-patch16-224")) == "transformers"
    assert resolve_library(ModelConfig(name="resnet18", library="transformers")) == "transformers"


def test_both_libraries_build_a_five_grade_head_with_their_preprocessing():
    timm_model, timm_prep = build_model(ModelConfig(name="test_resnet", image_size=32))
    vit = ModelConfig(name="vit", library="transformers", image_size=32,
                      overrides={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 64, "patch_size": 8})  # fmt: skip
    hf_model, hf_prep = build_model(vit)
    pixels = torch.zeros(2, 3, 32, 32)
    assert timm_model(pixels).shape == hf_model(pixels).shape == (2, 5)
    assert timm_prep.size == hf_prep.size == (32, 32) and hf_prep.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="not a timm model"):
        build_model(ModelConfig(name="no_such_net_v9", library="timm"))


def test_auto_precision_is_bf16_only_where_it_is_native():
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


# ------------------------------------------------------------------ pretrained checkpoints, offline

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MEAN, STD = (0.3, 0.35, 0.4), (0.2, 0.25, 0.3)  # not ImageNet's: proves where the preprocessing came from


def _publish(cache, repo_id: str, folder) -> None:
    """Lay `folder` out in `cache` as huggingface_hub lays out a downloaded snapshot of `repo_id`."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hub cache holding a timm ConvNeXt and a transformers ViT, both with 1000-class heads."""
    import huggingface_hub.constants
    import timm
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cache = tmp_path / "hub"
    torch.manual_seed(0)
    convnext = timm.create_model("test_convnext", pretrained=False, num_classes=1000)
    convnext.pretrained_cfg = {**convnext.pretrained_cfg, "mean": MEAN, "std": STD}
    timm.models.save_for_hf(convnext, tmp_path / "convnext", safe_serialization=True)
    _publish(cache, "timm/test_convnext.r160_in1k", tmp_path / "convnext")
    vit_config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           patch_size=8, image_size=32, num_labels=1000)  # fmt: skip
    vit = ViTForImageClassification(vit_config)
    vit.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(MEAN), image_std=list(STD)).save_pretrained(
        tmp_path / "vit"
    )
    _publish(cache, "tiny-org/vit-1k", tmp_path / "vit")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return {"timm": convnext.state_dict(), "transformers": vit.state_dict()}


def _assert_starts_from(model, checkpoint: dict, head: str, moved: tuple[str, ...] = ()) -> None:
    """Every backbone weight equals the checkpoint's (but the `moved` ones: position embeddings at another input
    shape); the head is new, with five outputs."""
    ours = model.state_dict()
    backbone = [key for key in checkpoint if not key.startswith(head) and key not in moved]
    assert backbone and all(torch.equal(ours[key], checkpoint[key]) for key in backbone)
    heads = [key for key in ours if key.startswith(head) and key.endswith("weight")]
    assert heads and all(ours[key].shape[0] == 5 for key in heads)


def test_a_pretrained_timm_checkpoint_from_the_hub_cache(hub_cache):
    from conftest import REPO

    from spine_hf.config import parse_config
    from spine_hf.models.card import model_card

    cfg = parse_config(["--config_path", str(REPO / "configs" / "convnext-small.yaml"),
                        "--model.name=timm/test_convnext.r160_in1k", "--model.image_size=64"])  # fmt: skip
    assert cfg.model.pretrained
    model, preprocessing = build_model(cfg.model)
    _assert_starts_from(model, hub_cache["timm"], "head.fc.")
    assert preprocessing.mean == MEAN and preprocessing.std == STD
    assert "base_model: timm/test_convnext.r160_in1k" in model_card(cfg, None, "timm")
    random, _ = build_model(ModelConfig(name="test_convnext", image_size=64))
    assert not torch.equal(random.state_dict()["stem.0.weight"], model.state_dict()["stem.0.weight"])


def test_a_pretrained_transformers_checkpoint_from_the_hub_cache(hub_cache):
    from conftest import REPO

    from spine_hf.config import parse_config
    from spine_hf.models.card import model_card

    cfg = parse_config(["--config_path", str(REPO / "configs" / "vit-base.yaml"), "--model.name=tiny-org/vit-1k",
                        "--model.image_size=32"])  # fmt: skip
    assert cfg.model.pretrained and cfg.model.library == "transformers"
    model, preprocessing = build_model(cfg.model)
    _assert_starts_from(model.hf_model, hub_cache["transformers"], "classifier.")
    assert preprocessing.mean == MEAN and preprocessing.std == STD
    assert model.hf_model.config.id2label[4] == "Severe" and model.hf_model.config.hidden_dropout_prob == 0.1
    assert "base_model: tiny-org/vit-1k" in model_card(cfg, None, "transformers")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["convnext-small", "vit-base", "spine-convnext-small", "spine-vit-base"])
def test_fine_tuning_a_pretrained_checkpoint_saves_a_folder_that_loads(hub_cache, recipe, tmp_path, phantom_split):
    """Each GPU recipe as shipped, with a tiny pretrained checkpoint and a small input of the recipe's shape (the
    spine recipes' tall ones: a ViT's position embeddings move to it), trains and saves a folder pipeline() loads."""
    from conftest import REPO
    from transformers import pipeline

    from spine_hf.config import parse_config
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.imaging import decode_image
    from spine_hf.training.loop import fit, prepare

    convert_to_dataset(phantom_split, tmp_path / "ds")
    library = "transformers" if "vit" in recipe else "timm"
    checkpoints = {"timm": ("timm/test_convnext.r160_in1k", "head.fc."),
                   "transformers": ("tiny-org/vit-1k", "classifier.")}  # fmt: skip
    name, head = checkpoints[library]
    shipped = parse_config(["--config_path", str(REPO / "configs" / f"{recipe}.yaml")]).model.image_size
    tall = recipe.startswith("spine-")
    assert isinstance(shipped, list) == tall and (not tall or shipped[0] >= 2.5 * shipped[1])
    side = {"timm": [96, 32] if tall else 64, "transformers": [48, 16] if tall else 32}[library]
    cfg = parse_config(["--config_path", str(REPO / "configs" / f"{recipe}.yaml"), f"--model.name={name}",
                        f"--model.image_size={side}", f"--data.dataset={tmp_path / 'ds'}", "--data.num_workers=0",
                        f"--train.output_dir={tmp_path / 'run'}", "--train.epochs=2", "--train.batch_size=8",
                        "--train.mixed_precision=no"])  # fmt: skip
    from accelerate.state import AcceleratorState

    # accelerate keeps one mixed-precision setting per process; earlier in-process runs may have set bf16.
    AcceleratorState._reset_state(reset_partial_state=True)
    run = prepare(cfg)
    model = run.accelerator.unwrap_model(run.model)
    moved = ("vit.embeddings.position_embeddings",) if tall else ()
    _assert_starts_from(model.hf_model if library == "transformers" else model, hub_cache[library], head, moved)
    fit(run)
    best = tmp_path / "run" / "best"
    assert f"base_model: {name}" in (best / "README.md").read_text()
    scores = pipeline("image-classification", model=str(best), top_k=5)(
        decode_image(next(phantom_split.rglob("*.png")))
    )
    assert len(scores) == 5 and {s["label"] for s in scores} == {"Healthy", "Doubtful", "Minimal", "Moderate", "Severe"}


def test_a_pretrained_vit_moves_to_a_tall_input_once_and_saves_at_it(hub_cache, tmp_path):
    """A 32 x 32 checkpoint (a 4 x 4 patch grid) at [48, 16]: the position embeddings are interpolated when the
    model is built, and the saved folder loads at the new shape with no extra flag."""
    from transformers import AutoModelForImageClassification

    from spine_hf.config import Config
    from spine_hf.models.folder import ModelFolder, save_for_hub

    tall = ModelConfig(name="tiny-org/vit-1k", library="transformers", pretrained=True, image_size=[48, 16])
    cfg = Config(model=tall)
    model, preprocessing = build_model(cfg.model)
    table = model.hf_model.vit.embeddings.position_embeddings
    assert preprocessing.size == (48, 16) and table.shape == (1, 1 + 6 * 2, 32)
    checkpoint = hub_cache["transformers"]["vit.embeddings.position_embeddings"]
    assert torch.equal(table[:, 0], checkpoint[:, 0])  # the class token's position is kept as it was
    grid = checkpoint[0, 1:].reshape(4, 4, 32)
    # The first column of the new grid comes from the old grid's left half, never the right one.
    left, right = grid[:, :2].mean(), grid[:, 2:].mean()
    assert abs(float(table[0, 1:].reshape(6, 2, 32)[:, 0].mean() - left)) < abs(float(left - right))
    pixels = torch.randn(2, 3, 48, 16)
    expected = model(pixels)
    save_for_hub(model, cfg, preprocessing, tmp_path / "tall")
    assert ModelFolder.read(tmp_path / "tall").preprocessing.size == (48, 16)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "tall").eval()
    model.eval()
    assert loaded.config.image_size == [48, 16]
    assert torch.allclose(loaded(pixel_values=pixels).logits, model(pixels), atol=1e-5)
    assert not torch.equal(expected, torch.zeros_like(expected))
