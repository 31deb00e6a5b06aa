"""Sliding-window inference of a segmentation model, as Segmenter evaluates ADE20K.

Written from a reading of rstrudel/segmenter ``segm/model/utils.py`` (``resize``, ``sliding_window``,
``merge_windows``, ``inference``) and its ADE20K test pipeline (``segm/data/config/ade20k.py``: mmseg's
``Resize`` with ``img_scale=(2048, 512), keep_ratio=True``), and ``segm/config.yml`` (ADE20K: window 512,
stride 512). For each image:

1. resize (bilinear) so the shorter side is ``short_side`` unless the longer side would pass ``long_side``
   (mmcv's keep-ratio rescale: factor ``min(long_side / long, short_side / short)``, sizes rounded);
2. if a side is still below the window, upsample so the shorter side equals the window (Segmenter's ``resize``);
3. windows of ``window x window`` at anchors ``0, stride, 2 * stride, ...`` below ``size - window``, plus a last one
   at ``size - window``, so every pixel is covered; the model runs on the windows in batches;
4. each pixel's logits are the mean over the windows covering it, then resized (bilinear) to the image's
   original size, which is its annotation's size.

Segmenter then takes a softmax; we return the averaged logits (same argmax), so attacks and metrics see logits.
Every step is differentiable: :class:`SlidingWindow` is a model an attack can run through. Differences from
Segmenter, stated: images are resized as [0, 1] floats with ``F.interpolate`` (mmseg resizes uint8 images with
cv2 before normalization: rounding-level differences); the crops go to the model as a batch of its input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def protocol_size(height: int, width: int, short_side: int | None = 512, long_side: int | None = 2048,
                  window: int | None = None) -> tuple[int, int]:
    """The size an image is evaluated at (steps 1-2 above); ``short_side=None`` skips step 1."""
    h, w = height, width
    if short_side:
        scale = short_side / min(h, w)
        if long_side:
            scale = min(scale, long_side / max(h, w))
        h, w = int(h * scale + 0.5), int(w * scale + 0.5)  # mmcv's rescale_size rounding
    if window and min(h, w) < window:
        ratio = max(h, w) / min(h, w)
        h, w = (window, int(ratio * window)) if h <= w else (int(ratio * window), window)
    return h, w


def window_anchors(size: int, window: int, stride: int) -> list[int]:
    """Segmenter's window starts along one side: ``range(0, size, stride)`` below ``size - window``, then
    ``size - window``, so the last window ends at the border."""
    if window > size:
        raise ValueError(f"window {window} is larger than the image side {size}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}: a larger stride leaves "
                         "pixels no window covers (Segmenter's merge would divide by a zero count there)")
    return [a for a in range(0, size, stride) if a < size - window] + [size - window]


def sliding_window_logits(model: nn.Module, images: torch.Tensor, window: int, stride: int,
                          batch_size: int = 8) -> torch.Tensor:
    """Mean per-pixel logits (B, C, H, W) of ``model`` over windows covering ``images`` (H, W >= window)."""
    B, _, H, W = images.shape
    anchors = [(top, left) for top in window_anchors(H, window, stride) for left in window_anchors(W, window, stride)]
    crops = torch.cat([images[:, :, t:t + window, l:l + window] for t, l in anchors])  # window-major
    outs = torch.cat([model(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)])
    if outs.shape[-2:] != (window, window):
        raise ValueError(f"the model returned logits of spatial size {tuple(outs.shape[-2:])} for "
                         f"{window}x{window} windows: a segmentation model returns logits at its input's resolution")
    summed = outs.new_zeros(B, outs.shape[1], H, W)
    count = outs.new_zeros(1, 1, H, W)
    for k, (t, l) in enumerate(anchors):
        summed[:, :, t:t + window, l:l + window] += outs[k * B:(k + 1) * B]
        count[:, :, t:t + window, l:l + window] += 1
    return summed / count


class SlidingWindow(nn.Module):
    """A segmentation model evaluated on images of any size with Segmenter's protocol; returns logits at the
    input's size. ``window`` defaults to the model's input size (its contract), ``stride`` to the window (as
    Segmenter's ADE20K setting). Wraps a [0, 1]-input model, so it is one too."""

    def __init__(self, model: nn.Module, window: int | None = None, stride: int | None = None, *,
                 short_side: int | None = 512, long_side: int | None = 2048, batch_size: int = 8):
        super().__init__()
        if window is None:
            size = getattr(model, "data_config", {}).get("input_size")
            if size is None:
                raise ValueError("SlidingWindow: the model declares no input_size; pass window=")
            if size[-1] != size[-2]:
                raise ValueError(f"SlidingWindow: square windows only, the model's input size is {tuple(size)}")
            window = int(size[-1])
        self.model, self.window, self.stride = model, int(window), int(stride or window)
        self.short_side, self.long_side, self.batch_size = short_side, long_side, batch_size
        self.data_config = dict(getattr(model, "data_config", {}) or {})

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or self.data_config.get("num_classes") or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        size = protocol_size(H, W, self.short_side, self.long_side, self.window)
        resized = x if size == (H, W) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        logits = sliding_window_logits(self.model, resized, self.window, self.stride, self.batch_size)
        if size != (H, W):
            logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        return logits
