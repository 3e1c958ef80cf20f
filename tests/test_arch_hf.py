"""Hugging Face transformers models (dcvit/arch/hf_*.py): ViT, DeiT, DINOv2 and Swin built tiny from configs (random
init, no download) through plan, compress, save/load and export; edits checked exact. Skipped without transformers."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import dcvit
from dcvit.arch import UnsupportedModelError, get_adapter
from dcvit.config import CompressConfig
from dcvit.data import eval_transform

transformers = pytest.importorskip("transformers")
hf_vit = pytest.importorskip("dcvit.arch.hf_vit")

SMOKE = CompressConfig(
    epochs=1, trial_epochs=1, batch_size=8, synth_images=8, synth_iterations=2, search_steps=1, progress=False
)


def tiny_hf(channels=1, **kwargs):
    torch.manual_seed(0)
    settings = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
    settings.update(image_size=28, patch_size=7, num_channels=channels, num_labels=10, **kwargs)
    return transformers.ViTForImageClassification(transformers.ViTConfig(**settings)).eval()


def shots(n=16):
    gen = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(torch.randn(n, 1, 28, 28, generator=gen), torch.zeros(n, dtype=torch.long))


def test_wrapper_gives_the_hf_logits_and_a_data_config_from_the_hf_config(caplog):
    model = tiny_hf()
    x = torch.randn(2, 1, 28, 28)
    with caplog.at_level(logging.WARNING, logger="dcvit"):
        wrapped = dcvit.arch.runnable(model)
    assert torch.equal(wrapped(x), model(pixel_values=x).logits)
    assert wrapped.hf is model  # parameters shared, the user's model untouched
    cfg = wrapped.pretrained_cfg
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == (0.5,) and cfg["std"] == (0.5,)
    assert "mean 0.5, std 0.5" in caplog.text  # neutral statistics are said, not silent
    image = Image.fromarray(np.full((28, 28, 3), 255, dtype=np.uint8))
    assert torch.allclose(eval_transform(wrapped)(image), torch.ones(1, 28, 28))  # (1 - 0.5) / 0.5, one channel


def test_an_image_processor_gives_its_statistics():
    processor = transformers.ViTImageProcessor(image_mean=[0.2, 0.3, 0.4], image_std=[0.5, 0.6, 0.7], resample=3)
    cfg = hf_vit.wrap(tiny_hf(channels=3), processor).pretrained_cfg
    assert cfg["mean"] == (0.2, 0.3, 0.4) and cfg["std"] == (0.5, 0.6, 0.7) and cfg["interpolation"] == "bicubic"


def test_plan_apply_save_load_export(tmp_path):
    model = tiny_hf()
    plan = dcvit.plan(model, 0.7)
    assert plan.n_blocks >= 1 and plan.macs_planned <= plan.macs_target * 1.01
    small = dcvit.apply_plan(model, plan, plan.candidate_blocks[: plan.n_blocks])
    x = torch.randn(2, 1, 28, 28)
    assert small(x).shape == (2, 10)
    dcvit.save(small, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["adapter"] == "transformers-vit" and spec["base"]["kwargs"]["num_channels"] == 1
    loaded = dcvit.load(tmp_path / "m")
    assert torch.equal(loaded(x), small(x))
    exported = torch.export.export(loaded, (x,))
    torch.testing.assert_close(exported.module()(x), loaded(x))


def test_heads_mlp_removal_and_drops_edit_exactly():
    model = tiny_hf()
    adapter = get_adapter(model)
    assert adapter.attention_heads(adapter.blocks(model)[0]) == 4
    edited = dcvit.surgery.edit_blocks(model, {0: (True, [], [0, 2]), 1: (True, list(range(50))), 2: (False, [])})
    x = torch.randn(2, 1, 28, 28)
    assert edited(x).shape == (2, 10)
    assert edited.hf.vit.layers[0].attention.q_proj.out_features == 32
    assert model.vit.layers[0].attention.q_proj.out_features == 64  # the input model is never modified


def test_compress_one_step():
    model = tiny_hf()
    result = dcvit.compress(model, 0.8, shots(), SMOKE)
    assert result.macs <= result.plan.macs_target
    assert result.model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_bad_spec_is_refused_in_one_line(tmp_path):
    small = dcvit.drop_blocks(tiny_hf(), [3])
    dcvit.save(small, tmp_path / "m")
    spec_file = tmp_path / "m" / "spec.json"
    spec = json.loads(spec_file.read_text())
    spec["base"]["kwargs"]["auto_map"] = {"AutoModel": "evil.Model"}  # remote code must never be reachable
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'auto_map' is not accepted") as err:
        dcvit.load(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_an_unsupported_hf_class_is_named_with_the_supported_ones():
    model = transformers.ViTForMaskedImageModeling(tiny_hf().config)
    with pytest.raises(UnsupportedModelError) as err:
        get_adapter(model)
    message = str(err.value)
    assert message.startswith("transformers ViTForMaskedImageModeling is not supported") and "\n" not in message
    for name in ("ViTForImageClassification", "DeiTForImageClassificationWithTeacher", "Dinov2Model", "SwinModel"):
        assert name in message
