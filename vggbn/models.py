"""ONE VGG builder: an arch list plus flags (bn, dropout, residual, activation, width, init).

Every study row is `build_model(cfg)` with different flags (timm's vgg.py style), so no variant
can be a hand-written class that silently differs from its name.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PRESETS, TrialConfig

M = "M"  # 2x2 max-pool
# arch name -> (conv layer list, classifier hidden size at width 1)
ARCHS: dict[str, tuple[list, int]] = {
    "vgg_a": ([64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M], 512),
    "vgg_b": ([64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M], 512),
    "vgg_d": ([64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M], 512),
    "vgg_e": ([64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M,
               512, 512, 512, 512, M], 512),
    "vgg_light": ([16, M, 32, M], 128),
}


def make_activation(cfg) -> nn.Module:
    if cfg.activation == "leaky_relu":
        return nn.LeakyReLU(cfg.leaky_slope)
    return {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "silu": nn.SiLU}[cfg.activation]()


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class ConvBNAct(nn.Sequential):
    """3x3 conv (+ BN) + activation: one layer of the plain VGG."""

    def __init__(self, cin: int, cout: int, cfg):
        layers = [nn.Conv2d(cin, cout, 3, padding=1)]
        if cfg.bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(make_activation(cfg))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """act(BN(conv(act(BN(conv(x))))) + shortcut(x)); shortcut = 1x1 conv + BN where channels change."""

    def __init__(self, cin: int, cout: int, cfg):
        super().__init__()

        def norm(c):
            return nn.BatchNorm2d(c) if cfg.bn else nn.Identity()

        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), norm(cout), make_activation(cfg),
            nn.Conv2d(cout, cout, 3, padding=1), norm(cout))
        self.shortcut = (nn.Identity() if cin == cout
                         else nn.Sequential(nn.Conv2d(cin, cout, 1), norm(cout)))
        self.act = make_activation(cfg)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(cfg, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> VGG:
    """The VGG that `cfg` describes (a TrialConfig or anything with its attributes)."""
    layer_list, hidden = ARCHS[cfg.arch]
    block = ResidualBlock if cfg.residual else ConvBNAct
    features, c, size = [], in_channels, image_size
    for v in layer_list:
        if v == M:
            features.append(nn.MaxPool2d(2))
            size //= 2
        else:
            features.append(block(c, scaled(v, cfg.width), cfg))
            c = scaled(v, cfg.width)
    if size < 1:
        raise ValueError(f"arch {cfg.arch} pools {image_size}px inputs below 1px")
    hidden = scaled(hidden, cfg.width)
    head = []
    for fan_in in (c * size * size, hidden):
        head += [nn.Linear(fan_in, hidden), make_activation(cfg)]
        if cfg.dropout > 0:
            head.append(nn.Dropout(cfg.dropout))
    head.append(nn.Linear(hidden, num_classes))
    model = VGG(nn.Sequential(*features), nn.Sequential(*head))
    init_weights(model, cfg.init)
    return model


def init_weights(model: nn.Module, scheme: str) -> None:
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preset_rows() -> list[dict]:
    """The study's rows (`vggbn presets`): flags and parameter counts with CIFAR-10 input."""
    return [{"preset": name, "section": p["section"], "label": p["label"],
             "flags": ", ".join(f"{k}={v}" for k, v in p["flags"].items()),
             "params": count_params(build_model(TrialConfig.from_flat({"preset": name}), 3, 10))}
            for name, p in PRESETS.items()]
