import torch
import torch.nn.functional as F
from PIL import Image

from proxynorm.data.transforms import (
    cifar_augment,
    mix_batch,
    normalize,
    random_resized_crop,
    resize_center_crop,
)


def test_cifar_augment_is_a_padded_crop_or_its_flip():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = cifar_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crops = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    again = cifar_augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, cifar_augment(x, torch.Generator().manual_seed(1)))


def test_normalize():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.testing.assert_close(out, torch.full((2, 3, 4, 4), 2.0))


def test_mixup_and_cutmix_targets():
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8) % 4
    for kw in (
        {"mixup_alpha": 0.4},
        {"cutmix_alpha": 1.0},
        {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    ):
        xm, t = mix_batch(x, y, 4, torch.Generator().manual_seed(0), **kw)
        assert xm.shape == x.shape and t.shape == (8, 4)
        torch.testing.assert_close(t.sum(1), torch.ones(8))
    xm, t = mix_batch(x, y, 4, torch.Generator().manual_seed(0))
    assert torch.equal(xm, x) and torch.equal(t.argmax(1), y)


def test_imagenet_style_crops():
    img = Image.new("RGB", (120, 80), color=(10, 200, 30))
    out = random_resized_crop(img, 48, torch.Generator().manual_seed(0))
    assert out.size == (48, 48)
    assert resize_center_crop(img, 48).size == (48, 48)
