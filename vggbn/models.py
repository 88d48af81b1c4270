"""ONE VGG builder: an arch list plus flags (bn and its position, dropout and its position,
residual, activation, width, init).

Every study row is `build_model(cfg)` with different flags (timm's vgg.py style), so no variant
can be a hand-written class that silently differs from its name.
"""

from __future__ import annotations

import torch
from torch import nn

from vggbn.config import PRESETS, TrialConfig
from vggbn.data import NUM_CLASSES

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


def norm_act(c: int, cfg) -> list[nn.Module]:
    """BN and activation in the config's order (no BN: the activation alone)."""
    if not cfg.bn:
        return [make_activation(cfg)]
    if cfg.bn_position == "after_activation":
        return [make_activation(cfg), nn.BatchNorm2d(c)]
    return [nn.BatchNorm2d(c), make_activation(cfg)]


class ConvBNAct(nn.Sequential):
    """3x3 conv, then BN and activation in `bn_position` order: one layer of the plain VGG."""

    def __init__(self, cin: int, cout: int, cfg):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), *norm_act(cout, cfg))


class ResidualBlock(nn.Module):
    """act(BN(conv(act(BN(conv(x))))) + shortcut(x)); shortcut = 1x1 conv + BN where channels change.
    `bn_position: after_activation` swaps the first BN and activation; the BN before the add stays."""

    def __init__(self, cin: int, cout: int, cfg):
        super().__init__()

        def norm(c):
            return nn.BatchNorm2d(c) if cfg.bn else nn.Identity()

        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), *norm_act(cout, cfg),
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
        hidden_layer = [nn.Linear(fan_in, hidden), make_activation(cfg)]
        if cfg.dropout > 0:
            drop = nn.Dropout(cfg.dropout)
            hidden_layer = ([drop, *hidden_layer] if cfg.dropout_position == "before_hidden"
                            else [*hidden_layer, drop])
        head += hidden_layer
    head.append(nn.Linear(hidden, num_classes))
    model = VGG(nn.Sequential(*features), nn.Sequential(*head))
    init_weights(model, cfg.init)
    return model


def init_weights(model: nn.Module, scheme: str) -> None:
    """Conv/linear weights by `scheme`, their biases zero, BN weight 1 and bias 0; 'default' keeps
    PyTorch's init (kaiming_uniform_ with a=sqrt(5): uniform on +-1/sqrt(fan_in), biases too)."""
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(m.weight)
            elif scheme == "kaiming_fan_out":  # the study's LeakyReLU class, verbatim (a=0: gain sqrt 2)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def model_cost(cfg) -> tuple[float, int]:
    """(GFLOPs of one forward pass at batch 1, counted by torch's FlopCounterMode; parameters)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    channels = 1 if cfg.dataset == "fashion_mnist" else 3
    model = build_model(cfg, channels, NUM_CLASSES.get(cfg.dataset, 10)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, channels, 32, 32))
    return counter.get_total_flops() / 1e9, count_params(model)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def structure(cfg) -> str:
    """A conv layer and a classifier hidden layer of `cfg`'s model, in words (from the built model,
    so it cannot disagree with it), e.g. 'conv-ReLU-BN; head Dropout-Linear-ReLU x2'."""
    names = {nn.Conv2d: "conv", nn.BatchNorm2d: "BN", nn.Linear: "Linear", nn.Dropout: "Dropout",
             nn.ReLU: "ReLU", nn.GELU: "GELU", nn.ELU: "ELU", nn.SiLU: "SiLU"}

    def words(mods) -> str:
        return "-".join(f"LeakyReLU({m.negative_slope:g})" if isinstance(m, nn.LeakyReLU)
                        else names[type(m)] for m in mods if not isinstance(m, nn.Identity))

    small = build_model(cfg.model_copy(update={"width": 1 / 16, "arch": "vgg_a"}), 3, 10)
    first = small.features[0]
    layer = (f"res(conv-{words(first.body[1:])})+{words([first.act])}" if cfg.residual
             else words(first))
    per_hidden = len(small.classifier) // 2  # two hidden layers, then the output Linear
    return f"{layer}; head {words(small.classifier[:per_hidden])} x2"


def preset_rows() -> list[dict]:
    """The study's rows (`vggbn presets`): structure, flags, the `seed` recipe's init and parameter
    counts with CIFAR-10 input."""
    rows = []
    for name, p in PRESETS.items():
        cfg = TrialConfig.from_flat({"preset": name, "recipe": "seed"})
        rows.append({"preset": name, "section": p["section"], "label": p["label"],
                     "structure": structure(cfg),
                     "flags": ", ".join(f"{k}={v}" for k, v in p["flags"].items()),
                     "seed_init": p["seed_init"],
                     "params": count_params(build_model(cfg, 3, 10))})
    return rows
