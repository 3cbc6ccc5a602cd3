"""KL loss (eq. 4): zero at the target, CE - H per pixel, valid-fraction weighting, MC switch,
gradients against autograd and the closed form; the NN cross-entropy baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softprep_train.losses import SINGLE_CLASS_EPS, ce_nn_loss, kl_loss


def soft_target(generator, b=2, c=4, h=3, w=5, dtype=torch.float64):
    """Strictly positive distributions scaled by a valid fraction in (0, 1]."""
    y = torch.rand((b, c, h, w), generator=generator, dtype=dtype) + 0.05
    y = y / y.sum(1, keepdim=True)
    valid = torch.rand((b, 1, h, w), generator=generator, dtype=dtype) * 0.7 + 0.3
    return y * valid


def test_zero_when_prediction_equals_target():
    y = soft_target(torch.Generator().manual_seed(0))
    logits = torch.log(y / y.sum(1, keepdim=True))
    assert abs(kl_loss(logits, y).item()) < 1e-12


def test_equals_cross_entropy_minus_entropy_weighted_by_valid_fraction():
    g = torch.Generator().manual_seed(1)
    y = soft_target(g)
    logits = torch.randn(y.shape, generator=g, dtype=torch.float64)
    v = y.sum(1)
    q = y / v[:, None]
    ce = -(q * F.log_softmax(logits, 1)).sum(1)
    entropy = -(q * q.log()).sum(1)
    expected = (v * (ce - entropy)).sum() / v.sum()
    torch.testing.assert_close(kl_loss(logits, y), expected, rtol=1e-12, atol=1e-12)
    # one pixel alone: KL = CE - H
    one = kl_loss(logits[:1, :, :1, :1], y[:1, :, :1, :1])
    torch.testing.assert_close(one, ce[0, 0, 0] - entropy[0, 0, 0], rtol=1e-12, atol=1e-12)


def test_ignored_and_padded_pixels_do_not_count():
    g = torch.Generator().manual_seed(2)
    y = soft_target(g)
    logits = torch.randn(y.shape, generator=g, dtype=torch.float64)
    padded_y = torch.cat([y, torch.zeros_like(y)], dim=3)
    padded_logits = torch.cat([logits, torch.randn(logits.shape, generator=g, dtype=torch.float64)], dim=3)
    torch.testing.assert_close(kl_loss(padded_logits, padded_y), kl_loss(logits, y), rtol=1e-12, atol=1e-12)


def test_no_mc_keeps_single_class_pixels_only():
    logits = torch.randn((1, 3, 1, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.zeros((1, 3, 1, 3), dtype=torch.float64)
    y[0, 0, 0, 0] = 1.0                      # pure
    y[0, 1, 0, 1] = 0.5                      # pure, half ignored
    y[0, :2, 0, 2] = torch.tensor([0.75, 0.25])  # mixed
    pure = (-F.log_softmax(logits, 1)[0, 0, 0, 0] * 1.0 - F.log_softmax(logits, 1)[0, 1, 0, 1] * 0.5) / 1.5
    torch.testing.assert_close(kl_loss(logits, y, mc=False), pure, rtol=1e-12, atol=1e-12)
    assert kl_loss(logits, y, mc=True) > 0 and not torch.isclose(kl_loss(logits, y, mc=True), pure)
    y[0, :2, 0, 2] = torch.tensor([1 - SINGLE_CLASS_EPS / 2, SINGLE_CLASS_EPS / 2])  # within eps: single-class
    assert kl_loss(logits, y, mc=False) != pure


def test_gradients_match_autograd_and_closed_form():
    g = torch.Generator().manual_seed(4)
    y = soft_target(g, b=1, c=3, h=2, w=2)
    logits = torch.randn(y.shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: kl_loss(z, y), (logits,))
    assert torch.autograd.gradcheck(lambda z: kl_loss(z, y, class_weights=torch.tensor([1.0, 2.0, 0.5])), (logits,))
    kl_loss(logits, y).backward()
    v = y.sum(1, keepdim=True)
    closed_form = (F.softmax(logits.detach(), 1) - y / v) * v / v.sum()
    torch.testing.assert_close(logits.grad, closed_form, rtol=1e-10, atol=1e-12)


def test_class_weights_weight_pixels_by_their_target():
    logits = torch.zeros((1, 2, 1, 2), dtype=torch.float64)
    y = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    logits[0, 0, 0, 0] = 2.0  # pixel 0 is well predicted, pixel 1 is not
    per_pixel = -F.log_softmax(logits, 1)[0, [0, 1], 0, [0, 1]]
    weighted = kl_loss(logits, y, class_weights=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(weighted, (per_pixel[0] + 3 * per_pixel[1]) / 4)


def test_ce_nn_is_cross_entropy_with_ignore():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn((2, 4, 3, 3), generator=g)
    labels = torch.randint(0, 4, (2, 3, 3), generator=g)
    labels[0, 0] = 255
    torch.testing.assert_close(ce_nn_loss(logits, labels), F.cross_entropy(logits, labels, ignore_index=255))
    assert ce_nn_loss(logits, torch.full_like(labels, 255)).item() == 0.0
