"""Paper 2's baseline CNNs from torchvision (Table 3: VGG16, VGG19, AlexNet, ResNet50, MobileNetV2),
as image encoders with the ImageNet classifier's last layer removed.

The paper compares its LDC-Model with these networks "as pretrained models, by transfer learning"
(ImageNet weights, then fine-tuning on the 4 classes). Nothing is downloaded: ``pretrained`` names a
local torchvision state-dict file (``vgg16-397923af.pth`` as torchvision saves it); without one the
network starts from torchvision's own random initialisation, and the reproduction table names the
row "from scratch" (:func:`lungsearch.training.recipes.variants`). ResNet50 is the ``resnet50``
encoder of :mod:`lungsearch.models.encoders`. InceptionV5 (also in Table 3) does not exist as a
published architecture (Inception stops at v4 / Inception-ResNet-v2) and is not offered.

Each encoder keeps the whole torchvision network except the 1000-way output layer, so ``pooled``
is what that layer saw (VGG/AlexNet: the second 4096-unit dense layer after its ReLU and dropout;
MobileNetV2: the 1280-d global average after its dropout) and the profile's ``linear`` head is the
replaced output layer. ``fmap`` is the last convolutional map (Grad-CAM in ``explain()``).

One-channel input: the first convolution takes 1 channel. With pretrained weights its RGB kernels
are summed (the same response to a grey image copied to 3 channels); from scratch it keeps
channel 0 of torchvision's own initialisation (VGG and MobileNetV2 initialise with fan-out Kaiming,
which does not depend on the input channels, so the scheme stays the architecture's).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lungsearch.errors import ConfigError
from lungsearch.models.encoders import ImageEncoder, _load_state, _to_one_channel
from lungsearch.models.registry import IMAGE_ENCODERS, BuildContext, take_params

__all__ = ["TorchvisionEncoder", "BASELINE_ARCHS", "TORCHVISION_FILES"]

#: The torchvision networks offered here -> the state-dict key prefix of their last (1000-way) layer.
BASELINE_ARCHS: dict[str, str] = {
    "vgg16": "classifier.6.",
    "vgg19": "classifier.6.",
    "alexnet": "classifier.6.",
    "mobilenet_v2": "classifier.1.",
}

#: File names torchvision gives its ImageNet weights (``~/.cache/torch/hub/checkpoints/``), for
#: the presets' ``baseline_weights`` (any file holding the same state dict works).
TORCHVISION_FILES: dict[str, str] = {
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "alexnet": "alexnet-owt-7be5be79.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "vit_b_16": "vit_b_16-c867db91.pth",
}


def _first_conv(features: nn.Sequential) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent module, attribute name, conv) of the first convolution under ``features``."""
    for name, mod in features.named_modules():
        if isinstance(mod, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = features.get_submodule(parent_name) if parent_name else features
            return parent, attr, mod
    raise ConfigError("torchvision network without a convolution")  # pragma: no cover - programming error


class TorchvisionEncoder(ImageEncoder):
    """A torchvision classification network on 1-channel input, without its output layer.

    Args:
        arch: one of :data:`BASELINE_ARCHS`.
        pretrained: path to a local torchvision state dict of ``arch`` (ImageNet); None = from scratch.
            Every key must fit except the output layer's, which may be absent.
        freeze: keep the convolutional part fixed (the dense layers still train).
    """

    def __init__(self, arch: str, pretrained: str | None = None, freeze: bool = False) -> None:
        super().__init__()
        import torchvision

        if arch not in BASELINE_ARCHS:
            raise ConfigError(
                f"torchvision baseline {arch!r} is not offered; known: {', '.join(sorted(BASELINE_ARCHS))}"
            )
        net = getattr(torchvision.models, arch)(weights=None)  # weights=None: never a download
        head_prefix = BASELINE_ARCHS[arch]
        if pretrained:
            state = _load_state(pretrained)
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith(head_prefix)]
            if missing or unexpected:
                raise ConfigError(
                    f"pretrained weights do not fit {arch}: {len(missing)} missing, {len(unexpected)} unexpected keys"
                )
        parent, attr, conv = _first_conv(net.features)
        one = nn.Conv2d(
            1,
            conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            one.weight.copy_(_to_one_channel(conv.weight) if pretrained else conv.weight[:, :1])
            if conv.bias is not None:
                one.bias.copy_(conv.bias)
        setattr(parent, attr, one)
        last = int(head_prefix.split(".")[1])
        head = list(net.classifier.children())
        self.out_dim = int(head[last].in_features)
        self.features_net = net.features
        # VGG/AlexNet: their adaptive average pool (7x7 / 6x6) then the dense layers; MobileNetV2:
        # global average (torchvision's forward does it functionally), then its dropout.
        self.spatial_pool = net.avgpool if hasattr(net, "avgpool") else nn.AdaptiveAvgPool2d(1)
        self.dense = nn.Sequential(*head[:last])
        self.arch = arch
        self.pretrained = bool(pretrained)
        if freeze:
            for prm in self.features_net.parameters():
                prm.requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_net(images)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.flatten(self.spatial_pool(fmap), 1))


def _builder(arch: str):
    def build(params: dict[str, Any], ctx: BuildContext) -> TorchvisionEncoder:
        p = take_params(arch, params, {"pretrained": None, "freeze": False})
        return TorchvisionEncoder(arch, **p)

    return build


for _arch in BASELINE_ARCHS:
    IMAGE_ENCODERS.register(_arch)(_builder(_arch))
