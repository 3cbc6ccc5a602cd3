"""Model registry: every family builds the same way, the heads are the paper's, weights come only
from a local file."""

from __future__ import annotations

import pytest
import timm
import torch

from softprep import SoftprepError
from softprep_train.models import MODELS, ASPP, build_model


@pytest.mark.parametrize("name", ["hrnetv2_w18_small", "deeplabv3plus_r18"])
def test_small_models_give_full_size_logits_and_learn(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 5, 64, 96)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_heads_follow_the_paper():
    hrnet = build_model("hrnetv2_w18_small", 19)
    assert hrnet.head.fuse[0].in_channels == 18 + 36 + 72 + 144  # all four branches concatenated
    deeplab = build_model("deeplabv3plus_r18", 19)
    assert deeplab.head.low[0].out_channels == 48
    rates = [b[0].dilation[0] for b in deeplab.head.aspp.branches[1:]]
    assert rates == [6, 12, 18]  # output stride 16
    assert [b[0].dilation[0] for b in ASPP(8, (12, 24, 36)).branches[1:]] == [12, 24, 36]
    assert MODELS["deeplabv3plus_r101"].output_stride == 8 and MODELS["hrnetv2_w48"].backbone == "hrnet_w48"


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("deeplabv3plus_r18", 19, pretrained=path)
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.backbone.pretrained_tensors == (len(model.backbone.state_dict()),) * 2
    with pytest.raises(SoftprepError, match="pretrained weights file not found"):
        build_model("deeplabv3plus_r18", 19, pretrained=tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), wrong)
    with pytest.raises(SoftprepError, match=r"only \d+ of the 20 weight tensors of resnet18's backbone match this file"):
        build_model("deeplabv3plus_r18", 19, pretrained=wrong)


def test_unknown_model():
    with pytest.raises(SoftprepError, match="unknown model 'unet'; choose one of hrnetv2_w48"):
        build_model("unet", 19)


def test_unet_small_predicts_at_full_resolution_and_fits_a_fixed_batch():
    """The experiment's model: under 2 M parameters, logits at the input size (odd sizes padded and
    cropped back), and 60 AdamW steps on one fixed batch cut the loss at least 4-fold."""
    torch.manual_seed(0)
    model = build_model("unet_small", num_classes=4)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model(torch.randn(1, 3, 45, 61)).shape == (1, 4, 45, 61)
    x = torch.randn(4, 3, 24, 32)
    target = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # a per-pixel rule the model must learn
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4, (losses[0], losses[-1])
    with pytest.raises(SoftprepError, match="unet_small has no pretrained weights"):
        build_model("unet_small", 4, pretrained="x.pth")


def test_smp_models_come_from_the_registry_and_learn_on_a_store(demo_root, tmp_path):
    """segmentation_models_pytorch's DeepLabV3+ by name (smp:ARCH/ENCODER), trained with the KL loss
    from a store for a few iterations on CPU: the loss falls."""
    pytest.importorskip("segmentation_models_pytorch", reason="needs the smp extra: pip install -e '.[smp]'")
    import json

    from softprep.build import build
    from softprep.datasets import get_dataset
    from softprep_train.train import TrainConfig, fit

    model = build_model("smp:DeepLabV3Plus/resnet18", 7)
    assert model.eval()(torch.randn(1, 3, 45, 61)).shape == (1, 7, 45, 61)  # any size: padded, cropped back
    with pytest.raises(SoftprepError) as error:
        build_model("smp:Nope/resnet18", 7)
    assert str(error.value).startswith("smp:Nope/resnet18: segmentation_models_pytorch has no architecture 'Nope'; "
                                       "choose one of deeplabv3, deeplabv3plus,")  # whole names, never cut mid-name
    assert "upernet (e.g. smp:DeepLabV3Plus/resnet50)" in str(error.value)
    with pytest.raises(SoftprepError, match=r"no encoder 'nope'; it has \d+, e.g. resnet18, resnet34"):
        build_model("smp:Unet/nope", 7)
    store = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", demo_root), store, [0.5], jobs=1)
    fit(TrainConfig(store=str(store), scale="0.5", out=str(tmp_path / "run"), model="smp:Unet/resnet18", iters=30,
                    batch_size=4, lr=1e-3, optimizer="adamw", workers=0, log_every=1, seed=0), progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
