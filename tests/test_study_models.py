"""The presets under the `seed` recipe are the original study's classes, layer by layer.

The study's rows silently differed from their names (its "Res" and "LeakyReLU" rows trained its
BN + dropout model). These tests pin each preset, built with `recipe: seed`, to the class the study
meant, written out below by hand in the study's own style (explicit nn.Sequential lists, a ResBlock
class):

* the leaf modules run in the study's order, with its channels, slopes and dropout rates;
* the weights are drawn from the study's init (xavier_normal, kaiming_normal fan_out, or
  PyTorch's default), checked layer by layer by std, kurtosis and bounds;
* with the same parameters and buffers, the preset's forward equals the reference class's forward
  in eval and train mode; a model with a swapped layer order does not (so the check can fail).
"""

import functools
import math

import pytest
import scipy.stats
import torch
from torch import nn

from vggbn.config import PRESETS, TrialConfig
from vggbn.models import build_model

# ------------------------------------------------------------------ the study's classes (reference)


def conv3x3(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1)


class Study(nn.Module):
    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class VGG_A(Study):
    """VGG-A: conv-act per layer (vgg_a, vgg_a_l2; with LeakyReLU(0.1): vgg_a_leaky_relu)."""

    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.features = nn.Sequential(
            conv3x3(3, 64), act(), nn.MaxPool2d(2),
            conv3x3(64, 128), act(), nn.MaxPool2d(2),
            conv3x3(128, 256), act(), conv3x3(256, 256), act(), nn.MaxPool2d(2),
            conv3x3(256, 512), act(), conv3x3(512, 512), act(), nn.MaxPool2d(2),
            conv3x3(512, 512), act(), conv3x3(512, 512), act(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), act(),
            nn.Linear(512, 512), act(),
            nn.Linear(512, 10))


class VGG_BatchNorm(Study):
    """conv-BN-ReLU per layer (vgg_a_bn, vgg_a_bn_sgd)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv3x3(3, 64), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            conv3x3(64, 128), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
            conv3x3(128, 256), nn.BatchNorm2d(256), nn.ReLU(),
            conv3x3(256, 256), nn.BatchNorm2d(256), nn.ReLU(), nn.MaxPool2d(2),
            conv3x3(256, 512), nn.BatchNorm2d(512), nn.ReLU(),
            conv3x3(512, 512), nn.BatchNorm2d(512), nn.ReLU(), nn.MaxPool2d(2),
            conv3x3(512, 512), nn.BatchNorm2d(512), nn.ReLU(),
            conv3x3(512, 512), nn.BatchNorm2d(512), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, 10))


def dropout_classifier():
    return nn.Sequential(
        nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 10))


class VGG_BatchNorm_Dropout(Study):
    """conv-ReLU-BN per layer (BN after the activation), dropout before the hidden Linears."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv3x3(3, 64), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2),
            conv3x3(64, 128), nn.ReLU(), nn.BatchNorm2d(128), nn.MaxPool2d(2),
            conv3x3(128, 256), nn.ReLU(), nn.BatchNorm2d(256),
            conv3x3(256, 256), nn.ReLU(), nn.BatchNorm2d(256), nn.MaxPool2d(2),
            conv3x3(256, 512), nn.ReLU(), nn.BatchNorm2d(512),
            conv3x3(512, 512), nn.ReLU(), nn.BatchNorm2d(512), nn.MaxPool2d(2),
            conv3x3(512, 512), nn.ReLU(), nn.BatchNorm2d(512),
            conv3x3(512, 512), nn.ReLU(), nn.BatchNorm2d(512), nn.MaxPool2d(2))
        self.classifier = dropout_classifier()


class VGG_Light(Study):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(32 * 8 * 8, 128), nn.ReLU(),
            nn.Linear(128, 128), nn.ReLU(),
            nn.Linear(128, 10))


class ResBlock(nn.Module):
    """relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)); shortcut = 1x1 conv + BN if channels change."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = conv3x3(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
                         if cin != cout else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class VGG_BatchNorm_Dropout_Res(Study):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            ResBlock(3, 64), nn.MaxPool2d(2),
            ResBlock(64, 128), nn.MaxPool2d(2),
            ResBlock(128, 256), ResBlock(256, 256), nn.MaxPool2d(2),
            ResBlock(256, 512), ResBlock(512, 512), nn.MaxPool2d(2),
            ResBlock(512, 512), ResBlock(512, 512), nn.MaxPool2d(2))
        self.classifier = dropout_classifier()


REFERENCE = {
    "vgg_a": VGG_A,
    "vgg_a_bn": VGG_BatchNorm,
    "vgg_a_dropout_bn": VGG_BatchNorm_Dropout,
    "vgg_light": VGG_Light,
    "vgg_a_dropout_bn_res": VGG_BatchNorm_Dropout_Res,
    "vgg_a_leaky_relu": lambda: VGG_A(act=lambda: nn.LeakyReLU(negative_slope=0.1)),
    "vgg_a_l2": VGG_A,
    "vgg_a_bn_sgd": VGG_BatchNorm,
}
# weight init under the seed recipe (biases zero except for "default")
INIT = {"vgg_a": "xavier_normal", "vgg_a_bn": "xavier_normal", "vgg_a_l2": "xavier_normal",
        "vgg_a_bn_sgd": "xavier_normal", "vgg_a_leaky_relu": "kaiming_normal_fan_out",
        "vgg_a_dropout_bn": "default", "vgg_light": "default", "vgg_a_dropout_bn_res": "default"}
STUDY_PARAMS = {"vgg_a": 9_750_922, "vgg_a_l2": 9_750_922, "vgg_a_leaky_relu": 9_750_922,
                "vgg_a_bn": 9_756_426, "vgg_a_bn_sgd": 9_756_426, "vgg_a_dropout_bn": 9_756_426,
                "vgg_light": 285_162, "vgg_a_dropout_bn_res": 20_740_938}
DROPOUT_PRESETS = {"vgg_a_dropout_bn", "vgg_a_dropout_bn_res"}
ALL = list(PRESETS)


def test_the_reference_covers_every_preset():
    assert set(REFERENCE) == set(PRESETS) == set(INIT)


def build(preset, **flags):
    return build_model(TrialConfig.from_flat({"preset": preset, "recipe": "seed", **flags}), 3, 10)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ execution order of the leaves


def describe(m):
    """A leaf module's type and the attributes that make it the study's layer."""
    if isinstance(m, nn.Conv2d):
        attrs = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.bias is not None)
    elif isinstance(m, nn.Linear):
        attrs = (m.in_features, m.out_features, m.bias is not None)
    elif isinstance(m, nn.BatchNorm2d):
        attrs = (m.num_features, m.eps, m.momentum, m.affine)
    elif isinstance(m, nn.Dropout):
        attrs = (m.p,)
    elif isinstance(m, nn.LeakyReLU):
        attrs = (m.negative_slope,)
    elif isinstance(m, nn.MaxPool2d):
        attrs = (m.kernel_size, m.stride, m.padding)
    else:
        attrs = ()
    return (type(m).__name__, *attrs)


def execution_order(model):
    """describe() of each leaf module (Identity left out) in the order one eval forward of a
    (2,3,32,32) batch runs them."""
    ran = []
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.append(describe(mod)))
             for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    return ran


@functools.cache
def preset_order(preset):
    return execution_order(build(preset))


@functools.cache
def reference_order(preset):
    return execution_order(REFERENCE[preset]())


ACTIVATIONS = set(torch.nn.modules.activation.__all__)


@pytest.mark.parametrize("preset", ALL)
def test_module_sequence_is_the_study_class(preset):
    assert preset_order(preset) == reference_order(preset)


@pytest.mark.parametrize("preset", ALL)
def test_activation_slopes(preset):
    acts = [d for d in preset_order(preset) if d[0] in ACTIVATIONS]
    assert len(acts) == len([d for d in reference_order(preset) if d[0] in ACTIVATIONS])
    if preset == "vgg_a_leaky_relu":
        assert set(acts) == {("LeakyReLU", 0.1)}, acts
    else:
        assert set(acts) == {("ReLU",)}, acts


@pytest.mark.parametrize("preset", ALL)
def test_dropout_positions(preset):
    seq = preset_order(preset)
    drops = [i for i, d in enumerate(seq) if d[0] == "Dropout"]
    if preset not in DROPOUT_PRESETS:
        assert drops == []
        return
    linears = [i for i, d in enumerate(seq) if d[0] == "Linear"]
    assert [seq[i] for i in drops] == [("Dropout", 0.5)] * 2
    assert [i + 1 for i in drops] == linears[:2]  # directly before the first and second Linear


# ------------------------------------------------------------------ init, layer by layer


def init_problems(model, scheme):
    """What differs from `scheme` in the model's weights, one line per problem (empty: none)."""
    problems = []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            if not (torch.all(m.weight == 1) and torch.all(m.bias == 0)):
                problems.append(f"{name}: BatchNorm weight must be 1, bias 0")
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.detach().double().flatten()
        receptive = math.prod(m.weight.shape[2:])
        fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
        bound = 1 / math.sqrt(fan_in)  # PyTorch's default: uniform(+-bound) for weight and bias
        std = {"xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
               "kaiming_normal_fan_out": math.sqrt(2 / fan_out),
               "default": bound / math.sqrt(3)}[scheme]
        n = w.numel()
        tol = max(0.03, 4 / math.sqrt(2 * n))  # 4 standard errors of a normal sample's std
        if abs(w.std().item() / std - 1) > tol:
            problems.append(f"{name}: weight std {w.std().item():.5f}, expected {std:.5f} +-{tol:.0%}")
        if abs(w.mean().item()) > 5 * std / math.sqrt(n):
            problems.append(f"{name}: weight mean {w.mean().item():.5f} is not 0")
        kurt = scipy.stats.kurtosis(w.numpy())  # excess: normal 0, uniform -1.2
        if scheme == "default":
            if kurt > -0.6 or w.abs().max() > bound * (1 + 1e-6):
                problems.append(f"{name}: weights not uniform on +-{bound:.5f} "
                                f"(kurtosis {kurt:.2f}, max {w.abs().max().item():.5f})")
            b = m.bias.detach()
            if not (b.abs().max() > 0 and b.abs().max() <= bound * (1 + 1e-6)):
                problems.append(f"{name}: default bias must be nonzero, within +-{bound:.5f}")
        else:
            if kurt < -0.6:
                problems.append(f"{name}: weights not normal (kurtosis {kurt:.2f})")
            if not torch.all(m.bias == 0):
                problems.append(f"{name}: bias must be zero under {scheme}")
    return problems


@pytest.mark.parametrize("preset", ALL)
def test_init_distribution_layer_by_layer(preset):
    torch.manual_seed(0)  # build_model draws from torch's global RNG
    assert init_problems(build(preset), INIT[preset]) == []


def reinit(model, weight_init):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight_init(m.weight)
            nn.init.zeros_(m.bias)
    return model


@pytest.mark.parametrize("preset,weight_init", [
    ("vgg_a", nn.init.xavier_uniform_),  # uniform, not normal
    ("vgg_a", lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),  # std of fan_in
    ("vgg_a_leaky_relu", nn.init.xavier_normal_),  # std of fan_in + fan_out
    ("vgg_light", nn.init.xavier_normal_),  # normal, zero biases
])
def test_init_check_tells_the_schemes_apart(preset, weight_init):
    torch.manual_seed(0)
    assert init_problems(reinit(build(preset), weight_init), INIT[preset]) != []


# ------------------------------------------------------------------ forward equal to the reference


def scramble_batchnorm(model):
    """Non-trivial BN affine parameters and running stats, so BN's position matters in eval too."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def copy_by_position(src, dst):
    """src's parameters and buffers into dst, in registration order, after checking the shapes."""
    s, d = list(src.state_dict().values()), list(dst.state_dict().items())
    assert [tuple(v.shape) for v in s] == [tuple(v.shape) for _, v in d], \
        "parameter/buffer shapes differ from the study's class"
    dst.load_state_dict({k: v.clone() for (k, _), v in zip(d, s)})


def assert_same_forward(model, ref):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for train, seed in ((False, 10), (True, 11)):
        outs = []
        for m in (model, ref):
            m.train(train)
            torch.manual_seed(seed)  # the same dropout masks
            with torch.no_grad():
                outs.append(m(x))
        torch.testing.assert_close(outs[0], outs[1], msg=lambda s, train=train: f"train={train}: {s}")
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):  # BN running stats
        torch.testing.assert_close(a, b)


def matched_pair(preset, **flags):
    torch.manual_seed(0)
    model, ref = build(preset, **flags), REFERENCE[preset]()
    scramble_batchnorm(model)
    copy_by_position(model, ref)
    return model, ref


@pytest.mark.parametrize("preset", ALL)
def test_forward_equals_the_study_class(preset):
    model, ref = matched_pair(preset)
    assert n_params(ref) == n_params(model) == STUDY_PARAMS[preset]
    assert_same_forward(model, ref)


@pytest.mark.parametrize("preset,flags", [
    ("vgg_a_dropout_bn", {"bn_position": "before_activation"}),
    ("vgg_a_bn", {"bn_position": "after_activation"}),
    ("vgg_a_dropout_bn", {"dropout_position": "after_hidden"}),  # torchvision's Linear-ReLU-Dropout
])
def test_a_swapped_layer_order_does_not_match(preset, flags):
    model, ref = matched_pair(preset, **flags)  # same shapes, so the copy itself succeeds
    with pytest.raises(AssertionError):
        assert_same_forward(model, ref)


# ------------------------------------------------------------------ what the recipe rows change


@pytest.mark.parametrize("preset", ALL)
def test_optimizer_of_each_row(preset):
    cfg = TrialConfig.from_flat({"preset": preset, "recipe": "seed"})
    assert cfg.width == 1.0 and cfg.lr == 1e-3
    assert cfg.weight_decay == (1e-4 if preset == "vgg_a_l2" else 0.0)
    if preset == "vgg_a_bn_sgd":
        assert cfg.optimizer == "sgd" and cfg.momentum == 0.9
    else:
        assert cfg.optimizer == "adam"
