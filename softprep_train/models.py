"""Segmentation models, all built the same way: ``build_model(name, num_classes, pretrained=None)``.

A timm backbone (``features_only``, never downloaded) plus a small in-tree head:

* HRNetV2: every branch upsampled to 1/4, concatenated, 1x1 conv-BN-ReLU, 1x1 classifier.
* DeepLabV3+: ASPP (rates 6/12/18 at output stride 16, doubled at 8, plus image pooling) on the
  last feature map, and a decoder that joins it at 1/4 with a 48-channel projection of the
  stride-4 features, two 3x3 conv-BN-ReLU, 1x1 classifier.

And a compact U-Net (``unet_small``, under 1 M parameters): logits at full input resolution from
a 4-level encoder-decoder, the model that can see 3-pixel poles at 1/8 of CamVid on a CPU (the
timm backbones above predict at stride 4: one logit per 32x32 full-resolution pixels at 1/8); and
its 3-D sibling ``unet3d`` for volume stores (any number of input channels, InstanceNorm).

And every architecture of ``segmentation_models_pytorch`` (the ``smp`` extra), named
``smp:ARCH/ENCODER`` (``smp:DeepLabV3Plus/resnet50``, ``smp:Unet/resnet34``, ``smp:FPN/resnet18``,
``smp:Segformer/mit_b2``): the field's standard implementations, built with ``encoder_weights=None``
(weights only from a local file: ``pretrained=PATH`` fills the encoder).

And SegFormer (Xie et al. 2021, the paper's ADE20K model): Hugging Face ``transformers``'
``SegformerForSemanticSegmentation`` (MiT encoder + all-MLP decoder), its field's standard
implementation; the ``segformer`` extra.

``forward(x (B, 3, H, W))`` returns logits ``(B, C, H, W)`` (bilinear from 1/4). ImageNet
weights only come from a local file (``pretrained=PATH``: a timm / torchvision state dict; for
SegFormer also a local Hugging Face model folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from softprep.errors import SoftprepError, install_hint


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class HRNetV2Head(nn.Module):
    """Upsample all branches to the first (1/4), concatenate, 1x1 conv-BN-ReLU, 1x1 classifier."""

    def __init__(self, channels: list[int], num_classes: int):
        super().__init__()
        total = sum(channels)
        self.fuse = conv_bn_relu(total, total)
        self.classifier = nn.Conv2d(total, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        joined = torch.cat([features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                            for f in features[1:]], dim=1)
        return self.classifier(self.fuse(joined))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches, image pooling."""

    def __init__(self, cin: int, rates: tuple[int, int, int], cout: int = 256):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(rates) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deep features; decoder with a 48-channel projection of the stride-4 features."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, output_stride: int):
        super().__init__()
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(high_channels, rates)
        self.low = conv_bn_relu(low_channels, 48)
        self.decode = nn.Sequential(conv_bn_relu(256 + 48, 256, 3), conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, high = features
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decode(torch.cat([high, self.low(low)], dim=1)))


class Segmenter(nn.Module):
    """Backbone + head; logits upsampled (bilinear) to the input size.

    Inputs of any size work: they are zero-padded (bottom, right) to a multiple of the backbone's
    largest stride, which HRNet's branch fusion needs, and the logits are cropped back.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.stride = max(backbone.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        logits = self.head(self.backbone(padded))
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


class UNet(nn.Module):
    """A compact U-Net, 2-D or 3-D (``dims``): ``len(widths)`` levels of two 3x3(x3) conv-norm-ReLU
    (BatchNorm for images; InstanceNorm for volumes, trained in batches of a few patches), max-pooling
    down, (tri)linear upsampling and skip concatenation up, a 1x1 classifier at full input resolution.

    Inputs of any size: zero-padded (at the end of each axis) to a multiple of ``2 ** (levels - 1)``,
    logits cropped back. ``(B, in_channels, H, W) -> (B, C, H, W)``; volumes ``(B, in_channels, X, Y, Z)``.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...], dims: int = 2, in_channels: int = 3):
        super().__init__()
        self.stride, self.dims = 2 ** (len(widths) - 1), dims
        channels = (in_channels, *widths)
        self.down = nn.ModuleList(_double_conv(cin, cout, dims) for cin, cout in zip(channels[:-1], channels[1:]))
        self.up = nn.ModuleList(_double_conv(deep + skip, skip, dims) for deep, skip in zip(widths[:0:-1], widths[-2::-1]))
        self.classifier = (nn.Conv2d if dims == 2 else nn.Conv3d)(widths[0], num_classes, 1)
        self.backbone = self.down  # the encoder: what a caller asks about pretrained tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        x = F.pad(x, [pad for n in reversed(size) for pad in (0, -n % self.stride)])
        pool, mode = (F.max_pool2d, "bilinear") if self.dims == 2 else (F.max_pool3d, "trilinear")
        skips = []
        for level, block in enumerate(self.down):
            x = block(pool(x, 2) if level else x)
            skips.append(x)
        for block, skip in zip(self.up, skips[-2::-1]):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False), skip], 1))
        return self.classifier(x)[(..., *(slice(0, n) for n in size))]


def _double_conv(cin: int, cout: int, dims: int = 2) -> nn.Sequential:
    if dims == 2:
        return nn.Sequential(conv_bn_relu(cin, cout, 3), conv_bn_relu(cout, cout, 3))
    return nn.Sequential(*(nn.Sequential(nn.Conv3d(c, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout, affine=True),
                                         nn.ReLU(inplace=True)) for c in (cin, cout)))


class SMPSegmenter(nn.Module):
    """A ``segmentation_models_pytorch`` model; inputs padded to a multiple of its encoder's stride
    (32), logits cropped back: ``(B, 3, H, W) -> (B, C, H, W)``."""

    stride = 32

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.backbone = model.encoder  # what pretrained weights fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        return self.model(padded)[..., :h, :w]


SMP_PREFIX = "smp:"


def is_model_name(name: str) -> bool:
    """A registered model, or an ``smp:ARCH/ENCODER`` name."""
    return name in MODELS or (name.startswith(SMP_PREFIX) and "/" in name)


def slow_on_cpu(name: str) -> bool:
    return MODELS[name].slow_on_cpu if name in MODELS else not name.endswith(("resnet18", "resnet34"))


def _smp(name: str, num_classes: int, pretrained: str | Path | None) -> SMPSegmenter:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise SoftprepError(f"{name} needs the smp extra: {install_hint('smp')}") from None
    arch, _, encoder = name[len(SMP_PREFIX):].partition("/")
    architectures = {a.lower(): a for a in smp.MODEL_ARCHITECTURES_MAPPING}
    encoders = smp.encoders.get_encoder_names()
    if arch.lower() not in architectures:
        raise SoftprepError(f"{name}: segmentation_models_pytorch has no architecture {arch!r}; choose one of "
                            f"{', '.join(sorted(architectures))} (e.g. smp:DeepLabV3Plus/resnet50)")
    if encoder not in encoders:
        raise SoftprepError(f"{name}: segmentation_models_pytorch has no encoder {encoder!r}; it has {len(encoders)}, "
                            f"e.g. {', '.join(encoders[:6])} (all: segmentation_models_pytorch.encoders.get_encoder_names())")
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes)
    wrapped = SMPSegmenter(model)
    if pretrained is not None:
        wrapped.backbone.pretrained_tensors = load_backbone_weights(wrapped.backbone, pretrained, encoder)
    return wrapped


class SegFormer(nn.Module):
    """Hugging Face's SegFormer; inputs padded to a multiple of 32, logits upsampled (bilinear) and cropped."""

    stride = 32

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.backbone = model.segformer  # the MiT encoder: what pretrained weights fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        logits = self.model(pixel_values=padded).logits
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the backbone (timm name, or MiT size) and how to build the head on it."""

    backbone: str
    family: str  # "hrnetv2" | "deeplabv3plus" | "segformer" | "unet"
    output_stride: int = 8
    widths: tuple[int, ...] = ()  # unet: channels per level
    slow_on_cpu: bool = False  # fit says so before a long CPU run
    dims: int = 2  # spatial axes: 2 (images) or 3 (volumes)


MODELS: dict[str, ModelSpec] = {
    "hrnetv2_w48": ModelSpec("hrnet_w48", "hrnetv2", slow_on_cpu=True),
    "hrnetv2_w18_small": ModelSpec("hrnet_w18_small_v2", "hrnetv2"),
    "deeplabv3plus_r101": ModelSpec("resnet101", "deeplabv3plus", 8, slow_on_cpu=True),
    "deeplabv3plus_r101_os16": ModelSpec("resnet101", "deeplabv3plus", 16, slow_on_cpu=True),
    "deeplabv3plus_r50": ModelSpec("resnet50", "deeplabv3plus", 8, slow_on_cpu=True),
    "deeplabv3plus_r18": ModelSpec("resnet18", "deeplabv3plus", 16),
    "segformer_b2": ModelSpec("mit_b2", "segformer", 32),
    "unet_small": ModelSpec("", "unet", 1, widths=(16, 32, 64, 128)),
    "unet3d": ModelSpec("", "unet", 1, widths=(16, 32, 64, 128), dims=3),
}

#: MiT encoder sizes (SegFormer paper, Table 6) and the all-MLP decoder width that goes with them.
MIT_SIZES = {
    "mit_b2": {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "num_attention_heads": [1, 2, 5, 8],
               "sr_ratios": [8, 4, 2, 1], "decoder_hidden_size": 768},
}


#: Below this share of the backbone's tensors matched by name and shape, a weights file is refused.
MIN_PRETRAINED_MATCH = 0.5


def _backbone(spec: ModelSpec) -> nn.Module:
    import timm  # here, not at the top: it pulls in torchvision and torch._dynamo (2 s), which unet_small never needs

    options: dict = {"features_only": True}
    if spec.family == "hrnetv2":
        options.update(feature_location="", out_indices=(1, 2, 3, 4))  # raw branches at 1/4 .. 1/32
    else:
        options.update(output_stride=spec.output_stride, out_indices=(1, 4))  # stride 4 and the deepest
    return timm.create_model(spec.backbone, **options)


def load_backbone_weights(backbone: nn.Module, path: str | Path, name: str) -> tuple[int, int]:
    """Copy the tensors of a local state dict (timm / torchvision; ``state_dict``/``model`` nesting and
    ``module.`` prefixes allowed) into ``backbone`` by name and shape. Returns ``(loaded, total)``.

    Raises:
        SoftprepError: a missing or unreadable file, or fewer than half of the backbone's tensors
            found in it (the wrong file: training would start from random weights).
    """
    path = Path(path)
    if not path.is_file():
        raise SoftprepError(f"{path}: pretrained weights file not found (weights are never downloaded; name a local file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickles with code, truncated files: one line
        raise SoftprepError(f"{path}: cannot read pretrained weights ({type(error).__name__}); "
                            "expected a torch state dict of tensors") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SoftprepError(f"{path}: not a state dict")
    return load_backbone_weights_from_state(backbone, state, path, name)


def load_backbone_weights_from_state(backbone: nn.Module, state: dict, path, name: str) -> tuple[int, int]:
    """:func:`load_backbone_weights` once the file is read: match by name and shape, refuse a poor match."""
    state = {k.removeprefix("module.").removeprefix("segformer."): v for k, v in state.items() if torch.is_tensor(v)}
    own = backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    # judged on the weight tensors (convolutions, linear layers): BN statistics and counters of a
    # common width match between unrelated networks by chance
    weights = [k for k, v in own.items() if v.ndim >= 2]
    matched_weights = sum(k in matched for k in weights)
    if matched_weights < MIN_PRETRAINED_MATCH * len(weights):
        raise SoftprepError(f"{path}: only {matched_weights} of the {len(weights)} weight tensors of {name}'s backbone "
                            "match this file by name and shape; is it a checkpoint of that backbone?")
    backbone.load_state_dict(matched, strict=False)
    return len(matched), len(own)


def model_dims(name: str) -> int:
    """Spatial axes a model segments: 2 (images) or 3 (volumes, ``unet3d``)."""
    return MODELS[name].dims if name in MODELS else 2


def build_model(name: str, num_classes: int, pretrained: str | Path | None = None, in_channels: int = 3) -> Segmenter:
    """The registered model ``name`` with a ``num_classes`` head; backbone weights from ``pretrained`` (a
    local file). ``in_channels``: 3 for colour images; a volume's channel count (U-Nets only)."""
    if name.startswith(SMP_PREFIX) or (name in MODELS and MODELS[name].family != "unet"):
        if in_channels != 3:
            raise SoftprepError(f"{name} takes colour images (3 channels), not {in_channels}; for volumes use --model unet3d")
    if name.startswith(SMP_PREFIX):
        return _smp(name, num_classes, pretrained)
    if name not in MODELS:
        raise SoftprepError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, or smp:ARCH/ENCODER")
    spec = MODELS[name]
    if spec.family == "segformer":
        return _segformer(spec, num_classes, pretrained)
    if spec.family == "unet":
        if pretrained is not None:
            raise SoftprepError(f"{name} has no pretrained weights (it is trained from scratch); drop --pretrained")
        return UNet(num_classes, spec.widths, spec.dims, in_channels)
    backbone = _backbone(spec)
    if pretrained is not None:
        loaded, total = load_backbone_weights(backbone, pretrained, spec.backbone)
        backbone.pretrained_tensors = (loaded, total)
    channels = backbone.feature_info.channels()
    if spec.family == "hrnetv2":
        head: nn.Module = HRNetV2Head(channels, num_classes)
    else:
        head = DeepLabV3PlusHead(channels[0], channels[1], num_classes, spec.output_stride)
    return Segmenter(backbone, head)




def _segformer(spec: ModelSpec, num_classes: int, pretrained: str | Path | None) -> SegFormer:
    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel
    except ImportError:
        raise SoftprepError(f"segformer models need the segformer extra: {install_hint('segformer')}") from None
    config = SegformerConfig(num_labels=num_classes, **MIT_SIZES[spec.backbone])
    model = SegFormer(SegformerForSemanticSegmentation(config))
    if pretrained is None:
        return model
    if Path(pretrained).is_dir():  # a local Hugging Face model folder (config.json + weights)
        try:
            encoder = SegformerModel.from_pretrained(str(pretrained), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - a wrong or damaged folder: one line
            raise SoftprepError(f"{pretrained}: cannot load a SegFormer encoder from this folder ({type(error).__name__})") from None
        loaded, total = load_backbone_weights_from_state(model.backbone, encoder.state_dict(), pretrained, spec.backbone)
    else:
        loaded, total = load_backbone_weights(model.backbone, pretrained, spec.backbone)
    model.backbone.pretrained_tensors = (loaded, total)
    return model
