"""Augmentations: CIFAR (pad-4 random crop + flip, vectorized on uint8 batches), ImageNet
(random-resized crop + flip; resize + center crop for eval, on PIL images), Mixup and CutMix."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def normalize(images: Tensor, mean=CIFAR_MEAN, std=CIFAR_STD) -> Tensor:
    """uint8 (N, 3, H, W) -> float32 standardized per channel (on the images' device)."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def cifar_augment(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop after zero padding by ``pad``, and random horizontal flip, per image.

    The random draws come from ``generator`` (a CPU generator) whatever the images' device, and
    the crop and flip run on the images' device: the same batches on CPU and GPU.
    """
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(dev)
    rows = (oy + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (ox + torch.arange(w, device=dev)).view(n, 1, 1, w).expand(n, c, h, w)
    out = out.gather(3, cols)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def random_resized_crop(
    img: Image.Image, size: int, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> Image.Image:
    """Inception-style crop (area fraction in ``scale``, aspect in ``ratio``), resized to size,
    then a random horizontal flip."""
    w, h = img.size
    box = None
    for _ in range(10):
        area = w * h * torch.empty(1).uniform_(*scale, generator=generator).item()
        log_r = torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
        r = math.exp(log_r.item())
        cw, ch = round(math.sqrt(area * r)), round(math.sqrt(area / r))
        if 0 < cw <= w and 0 < ch <= h:
            x0 = torch.randint(0, w - cw + 1, (1,), generator=generator).item()
            y0 = torch.randint(0, h - ch + 1, (1,), generator=generator).item()
            box = (x0, y0, x0 + cw, y0 + ch)
            break
    if box is None:  # fall back to a center crop
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    out = img.resize((size, size), Image.BILINEAR, box=box)
    if torch.rand(1, generator=generator).item() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


def resize_center_crop(img: Image.Image, size: int, crop_fraction: float = 0.875) -> Image.Image:
    """Resize the shorter side to ``size / crop_fraction``, then center-crop ``size``."""
    w, h = img.size
    short = round(size / crop_fraction)
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def mix_batch(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    generator: torch.Generator,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) with a shuffled copy of the batch.

    With both enabled, each batch uses one of them with probability 1/2. Returns the mixed inputs
    and soft targets (N, num_classes).
    """
    target = F.one_hot(y, num_classes).to(x.dtype)
    use_cutmix = cutmix_alpha > 0 and (
        mixup_alpha <= 0 or torch.rand(1, generator=generator).item() < 0.5
    )
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    if alpha <= 0:
        return x, target
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if use_cutmix:
        h, w = x.shape[2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy = torch.randint(0, h, (1,), generator=generator).item()
        cx = torch.randint(0, w, (1,), generator=generator).item()
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]
