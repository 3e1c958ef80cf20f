"""Compressed models stay deployable: torch.jit.script and torch.export.export give the eager outputs, for every
edit (attention removed, MLP narrowed, MLP removed, block dropped) in timm ViT, timm Swin and torchvision ViT, also
after a save/load round trip. timm's ViT calls its blocks with attn_mask/is_causal when given a mask: edited blocks
take those keywords, in eager mode and in TorchScript."""

import pytest
import torch
import torchvision
from helpers.models import small_vit, tiny_swin

import dcvit
from dcvit.surgery import DroppedBlock, MlpOnlyBlock, ZeroMlp, edit_blocks

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def every_edit(model):
    """Block 0 loses its attention (and keeps a narrowed MLP), 1 a narrowed MLP, 2 its MLP, 3 is dropped."""
    return edit_blocks(model, {0: (False, [0, 2, 5]), 1: (True, [1, 3, 4, 7]), 2: (True, []), 3: (False, [])})


def torchvision_vit():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()


FAMILIES = {
    "timm-vit": (lambda: small_vit(depth=4, dim=32, heads=2), (3, 32, 32)),
    "timm-swin": (tiny_swin, (3, 56, 56)),
    "torchvision-vit": (torchvision_vit, (3, 32, 32)),
}


@pytest.fixture(params=list(FAMILIES))
def compressed(request):
    make, size = FAMILIES[request.param]
    torch.manual_seed(0)
    model = every_edit(make()).eval()
    blocks = dcvit.get_adapter(model).blocks(model)
    kinds = [type(b).__name__ for b in blocks]
    assert isinstance(blocks[0], MlpOnlyBlock) and isinstance(blocks[3], DroppedBlock), kinds
    assert isinstance(dcvit.get_adapter(model).mlp_parts(blocks[2]).mlp, ZeroMlp), kinds
    return model, torch.randn(2, *size, generator=torch.Generator().manual_seed(1))


def test_torchscript_matches_eager(compressed):
    model, x = compressed
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_torch_export_matches_eager(compressed):
    model, x = compressed
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


def test_loaded_model_scripts_and_exports(tmp_path):
    torch.manual_seed(0)
    model = every_edit(small_vit(depth=4, dim=32, heads=2))
    dcvit.save(model, tmp_path / "m")
    loaded = dcvit.load(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(loaded)(x), model(x))
        torch.testing.assert_close(torch.export.export(loaded, (x,)).module()(x), model(x))


def test_vit_blocks_take_the_mask_keywords():
    """timm's ViT passes attn_mask (and is_causal) to every block when given a mask."""
    torch.manual_seed(0)
    model = every_edit(small_vit(depth=4, dim=32, heads=2))
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 17, 17)
    mask[..., -3:] = float("-inf")  # the last three patches are hidden from every query
    with torch.no_grad():
        masked = model(x, attn_mask=mask)
        assert not torch.allclose(masked, model(x))  # the mask reached the attention that is left
        torch.testing.assert_close(torch.jit.script(model)(x, attn_mask=mask), masked)
