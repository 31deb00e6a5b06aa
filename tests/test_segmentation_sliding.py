"""Sliding-window inference as Segmenter evaluates ADE20K (segm/model/utils.py): windows cover every pixel,
a translation-equivariant (pointwise) model gives the full-image logits, the protocol's resizes, gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_rpc.models import load_model
from robustbench_rpc.models.sliding import SlidingWindow, protocol_size, sliding_window_logits, window_anchors


class Pointwise(nn.Module):
    """Per-pixel logits from that pixel alone: the same at any position, so windows must reproduce the image."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, classes, 1))

    def forward(self, x):
        return self.net(x)


class Ones(nn.Module):
    def forward(self, x):
        return torch.ones(x.shape[0], 2, *x.shape[-2:])


def test_anchors_follow_segmenter_and_cover_every_pixel():
    assert window_anchors(512, 512, 512) == [0]
    assert window_anchors(683, 512, 512) == [0, 171]  # ADE20K's 512x683 at Segmenter's stride 512
    assert window_anchors(1000, 512, 341) == [0, 341, 488]
    for size in range(8, 60, 3):
        for window in (8, 13, size):
            if window > size:
                continue
            for stride in (1, 5, window - 1, window):
                covered = torch.zeros(size, dtype=torch.bool)
                for a in window_anchors(size, window, stride):
                    assert 0 <= a <= size - window
                    covered[a:a + window] = True
                assert covered.all(), (size, window, stride)
    with pytest.raises(ValueError, match="larger than the image side"):
        window_anchors(10, 12, 4)
    with pytest.raises(ValueError, match="leaves pixels no window covers"):
        window_anchors(17, 8, 12)  # Segmenter's anchors 0, 9 would miss pixel 8


def test_anchors_are_mmsegmentations_slide_windows_too():
    """mmseg's EncoderDecoder.slide_inference places windows at y1 = i * stride, moved back to end at the border;
    for images at least a window large that is the same set of windows."""
    for size in range(23, 90, 7):
        for window in (16, 23):
            for stride in (5, 12, window):
                grids = max(size - window + stride - 1, 0) // stride + 1
                mmseg = sorted({max(min(i * stride + window, size) - window, 0) for i in range(grids)})
                assert window_anchors(size, window, stride) == mmseg, (size, window, stride)


@pytest.mark.parametrize("shape,window,stride", [((37, 50), 16, 16), ((70, 100), 32, 20), ((32, 32), 32, 32)])
def test_every_pixel_is_averaged_and_pointwise_model_gives_full_image_logits(shape, window, stride):
    x = torch.rand(2, 3, *shape)
    ones = sliding_window_logits(Ones(), x, window, stride, batch_size=3)
    assert torch.equal(ones, torch.ones_like(ones))  # a pixel no window covered would be 0/0
    model = Pointwise()
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_logits(model, x, window, stride, batch_size=5), model(x),
                                   atol=1e-6, rtol=1e-5)


def test_protocol_sizes_as_mmseg_resize_then_segmenter_resize():
    assert protocol_size(512, 683) == (512, 683)
    assert protocol_size(256, 384) == (512, 768)
    assert protocol_size(1024, 768) == (683, 512)  # int(1024 * 0.6667 + 0.5)
    assert protocol_size(100, 1000, window=512) == (512, int(2048 / 205 * 512))  # long side capped, then upsampled
    assert protocol_size(30, 45, short_side=None, window=32) == (32, 48)


def test_sliding_window_module_resizes_and_returns_logits_at_the_input_size():
    model = Pointwise(3)
    wrapped = SlidingWindow(model, window=32, stride=24, short_side=64)
    x = torch.rand(1, 3, 30, 45)
    with torch.no_grad():
        out = wrapped(x)
        resized = F.interpolate(x, size=(64, 96), mode="bilinear", align_corners=False)
        ref = F.interpolate(model(resized), size=(30, 45), mode="bilinear", align_corners=False)
    assert out.shape == (1, 3, 30, 45)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_segmenter_through_windows_is_differentiable_and_takes_its_window_from_the_contract():
    seg = load_model("segmenter_linear_symvit_micro")
    wrapped = SlidingWindow(seg, short_side=None)
    assert wrapped.window == 64 == wrapped.stride and wrapped.num_classes == 11
    x = torch.rand(1, 3, 64, 96, requires_grad=True)
    out = wrapped(x)
    assert out.shape == (1, 11, 64, 96) and torch.isfinite(out).all()
    out[:, 3].sum().backward()
    assert x.grad is not None and x.grad[..., :32].abs().sum() > 0 and x.grad[..., -32:].abs().sum() > 0
    with torch.no_grad():  # the window at the image's size is the model itself
        torch.testing.assert_close(SlidingWindow(seg, short_side=None)(x[..., :64]), seg(x[..., :64]))
