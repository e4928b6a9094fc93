"""Image plumbing of the VQ Fashion-MNIST model: 28x28 grey <-> the VQ tokenizer's 64x64 RGB.

The VQ tokenizer (training/train_vq_fmnist.py) sees Fashion-MNIST upscaled to 64x64 and
repeated over three channels, in [-1, 1]; its decoder gives 64x64x3 uint8 pixels. The
classifier behind zipar.eval's metrics reads 28x28 grey images. Both directions are fixed
linear maps, written here once (NumPy only, no other zipar import, so the training script can
load this file directly):

* ``upscale(images)``: (B, 28, 28) -> (B, 64, 64) float32 in [0, 255], bilinear with
  half-pixel centres (PyTorch's ``interpolate(mode="bilinear", align_corners=False)``);
* ``to_vq_input(images)``: the same, scaled to [-1, 1] and repeated to (B, 3, 64, 64);
* ``to_grey28(pixels)``: decoder pixels (B, 64, 64, 3) uint8 -> (B, 28, 28) uint8: the mean of
  the three channels, then the least-squares inverse of the upscale (the 28x28 image whose
  bilinear upscale is nearest, i.e. the pseudo-inverse of the 1-D bilinear matrix on each
  side), clipped and rounded half up.

The inverse makes the round trip exact: ``to_grey28`` of the rounded, RGB-repeated upscale of
the test images gives them back with MSE 0.009 (grey levels squared; an area average instead
would lose 167 to blur). Its singular values lie in [0.66, 1.15], so decoder errors are not
amplified.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SIDE", "VQ_SIDE", "bilinear_matrix", "inverse_matrix", "upscale", "to_vq_input",
           "to_grey28"]

SIDE = 28  # Fashion-MNIST
VQ_SIDE = 64  # the tokenizer's image side (16x16 tokens at downsample 4)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bilinear resampling, half-pixel centres, edges
    clamped: output i samples input coordinate (i + 0.5) * n_in / n_out - 0.5."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        w = src - i0
        m[i, i0] += 1.0 - w
        m[i, i1] += w
    return m


def inverse_matrix(n_small: int, n_large: int) -> np.ndarray:
    """(n_small, n_large) float64 pseudo-inverse of bilinear_matrix(n_small, n_large)."""
    return np.linalg.pinv(bilinear_matrix(n_small, n_large))


_UP = bilinear_matrix(SIDE, VQ_SIDE)
_DOWN = inverse_matrix(SIDE, VQ_SIDE)


def _images(images, side: int, name: str) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (side, side):
        raise ValueError(f"{name} must have shape (B, {side}, {side}), got {np.shape(images)}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name} must be a real array, got dtype {x.dtype}")
    return x


def upscale(images) -> np.ndarray:
    """(B, 28, 28) grey in [0, 255] -> (B, 64, 64) float32, bilinear."""
    x = _images(images, SIDE, "images").astype(np.float64)
    return (_UP @ x @ _UP.T).astype(np.float32)


def to_vq_input(images) -> np.ndarray:
    """(B, 28, 28) grey in [0, 255] -> (B, 3, 64, 64) float32 in [-1, 1], the tokenizer's input."""
    y = upscale(images) / np.float32(127.5) - np.float32(1.0)
    return np.repeat(y[:, None], 3, axis=1)


def to_grey28(pixels) -> np.ndarray:
    """Decoder pixels (B, 64, 64, 3) uint8 -> (B, 28, 28) uint8 grey (channel mean, inverse of
    the upscale, clipped, rounded half up)."""
    p = np.asarray(pixels)
    if p.ndim == 3:
        p = p[None]
    if p.ndim != 4 or p.shape[1:] != (VQ_SIDE, VQ_SIDE, 3):
        raise ValueError(f"pixels must have shape (B, {VQ_SIDE}, {VQ_SIDE}, 3), got "
                         f"{np.shape(pixels)}")
    grey = p.astype(np.float64).mean(axis=3)
    small = _DOWN @ grey @ _DOWN.T
    return np.floor(np.clip(small, 0.0, 255.0) + 0.5).astype(np.uint8)
