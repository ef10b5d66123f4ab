"""Random affine augmentation of a batch on the device, the way the paper's notebooks draw it.

    images = augment(images, generator=rng, **AUGMENTATIONS["mnist5k"])

Keras ImageDataGenerator's transforms, done with `affine_grid` and `grid_sample`
on whatever device the images are on; the random parameters come from the
generator given, never from the global RNG.
"""

import math

import torch
import torch.nn.functional as F

from permcodec.errors import SpecError

# The settings of the paper's notebooks (Keras ImageDataGenerator).
AUGMENTATIONS = {
    "mnist": dict(rotation_deg=10, zoom=0.1, shift=0.1, hflip=False),
    "mnist5k": dict(rotation_deg=10, zoom=0.1, shift=0.1, hflip=False),
    "cifar10": dict(rotation_deg=15, zoom=0.0, shift=0.1, hflip=True),
}


def augment(
    images: torch.Tensor,
    *,
    rotation_deg: float,
    zoom: float,
    shift: float,
    hflip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random affine transforms of a float batch (N, C, H, W), the way Keras ImageDataGenerator draws them.

    Per image: an angle uniform in +-rotation_deg degrees; zoom factors for x and
    y, each uniform in [1-zoom, 1+zoom] (below 1 magnifies, as in Keras); shifts
    uniform in +-shift of the width and height; a horizontal flip with
    probability 0.5 if `hflip`. Pixels from outside repeat the border
    (Keras fill_mode='nearest'); interpolation is bilinear (Keras order 1).
    The parameters are drawn from `generator` on its own device, so a seed
    gives the same transforms whatever device the images are on.
    """
    _check_augment_arguments(images, rotation_deg, zoom, shift)
    draws = torch.rand(len(images), 6, generator=generator, device=generator.device, dtype=torch.float64)
    symmetric = 2 * draws[:, :5] - 1  # uniform in [-1, 1)
    theta = affine_theta(
        angle_rad=symmetric[:, 0] * math.radians(rotation_deg),
        zoom_x=1 + symmetric[:, 1] * zoom,
        zoom_y=1 + symmetric[:, 2] * zoom,
        shift_x=symmetric[:, 3] * shift * images.shape[3],
        shift_y=symmetric[:, 4] * shift * images.shape[2],
        flip=(draws[:, 5] < 0.5) & hflip,
        height=images.shape[2],
        width=images.shape[3],
    )
    return warp(images, theta.to(images.device, images.dtype))


def _check_augment_arguments(images, rotation_deg, zoom, shift) -> None:
    if not images.is_floating_point() or images.dim() != 4:
        raise SpecError(f"images must be floating point (N, C, H, W), found {images.dtype} {tuple(images.shape)}")
    if not 0 <= rotation_deg <= 180:
        raise SpecError(f"rotation_deg must be in [0, 180], found {rotation_deg}")
    if not 0 <= zoom < 1:
        raise SpecError(f"zoom must be in [0, 1), found {zoom}")
    if not 0 <= shift <= 1:
        raise SpecError(f"shift must be a fraction of the image size in [0, 1], found {shift}")


def affine_theta(angle_rad, zoom_x, zoom_y, shift_x, shift_y, flip, height: int, width: int) -> torch.Tensor:
    """The (N, 2, 3) matrices for `affine_grid` that map output to input coordinates.

    As in Keras: input = R (Z out + shift) about the image centre, with shifts in
    pixels; a flip mirrors the output x axis.
    """
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    mirror = 1 - 2 * flip.to(angle_rad.dtype)
    # Pixel-space linear part R @ Z @ diag(mirror, 1), in (x, y) order.
    a = torch.stack([cos * zoom_x * mirror, sin * zoom_y, -sin * zoom_x * mirror, cos * zoom_y], dim=1).view(-1, 2, 2)
    offset = torch.stack([cos * shift_x + sin * shift_y, -sin * shift_x + cos * shift_y], dim=1)
    # From pixels to affine_grid's normalized coordinates, where [-1, 1] spans width and height.
    half = torch.tensor([width / 2, height / 2], dtype=angle_rad.dtype, device=angle_rad.device)
    linear = a * half[None, None, :] / half[None, :, None]
    translation = offset / half
    return torch.cat([linear, translation[:, :, None]], dim=2)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample `images` through the output-to-input affine maps `theta` (N, 2, 3), border padding."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
