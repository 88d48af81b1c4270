import itertools
import operator

import pytest
import torch
from torch import fx, nn

from vggbn.config import PRESETS, TrialConfig
from vggbn.models import ResidualBlock, build_model, count_params

# The original study's models (CIFAR-10 input), counted from its code.
STUDY_PARAMS = {
    "vgg_a": 9_750_922, "vgg_a_leaky_relu": 9_750_922, "vgg_a_l2": 9_750_922,
    "vgg_a_bn": 9_756_426, "vgg_a_dropout_bn": 9_756_426, "vgg_a_bn_sgd": 9_756_426,
    "vgg_light": 285_162, "vgg_a_dropout_bn_res": 20_740_938,
}


def model_of(preset, **kw):
    return build_model(TrialConfig.from_flat({"preset": preset, **kw}), 3, 10)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_parity_with_the_study(preset):
    assert count_params(model_of(preset)) == STUDY_PARAMS[preset]


def structure(model):
    mods = list(model.modules())
    adds = [n for n in fx.symbolic_trace(model).graph.nodes
            if n.op == "call_function" and n.target in (operator.add, torch.add)]
    return {
        "bn": sum(isinstance(m, nn.BatchNorm2d) for m in mods),
        "dropout": [m.p for m in mods if isinstance(m, nn.Dropout)],
        "leaky": sum(isinstance(m, nn.LeakyReLU) for m in mods),
        "relu": sum(isinstance(m, nn.ReLU) for m in mods),
        "res_blocks": sum(isinstance(m, ResidualBlock) for m in mods),
        "adds_in_forward": len(adds),
        "convs": sum(isinstance(m, nn.Conv2d) for m in mods),
    }


def test_each_preset_builds_what_its_name_says():
    """The study trained its BN+dropout model for both its 'Res' and 'LeakyReLU' rows; we can't."""
    s = {p: structure(model_of(p)) for p in PRESETS}
    assert s["vgg_a"] == dict(bn=0, dropout=[], leaky=0, relu=10, res_blocks=0, adds_in_forward=0,
                              convs=8)
    assert s["vgg_a_bn"]["bn"] == 8 and s["vgg_a_bn"]["dropout"] == []
    assert s["vgg_a_dropout_bn"]["bn"] == 8 and s["vgg_a_dropout_bn"]["dropout"] == [0.5, 0.5]
    res = s["vgg_a_dropout_bn_res"]
    assert res["res_blocks"] == 8 and res["adds_in_forward"] == 8
    assert res["convs"] == 16 + 4 and res["bn"] == 16 + 4 and res["dropout"] == [0.5, 0.5]
    leaky = s["vgg_a_leaky_relu"]
    assert leaky["leaky"] == 10 and leaky["relu"] == 0 and leaky["bn"] == 0
    assert leaky["adds_in_forward"] == 0 and leaky["dropout"] == []
    assert s["vgg_light"]["convs"] == 2 and s["vgg_light"]["bn"] == 0
    assert s["vgg_a_l2"] == s["vgg_a"] and s["vgg_a_bn_sgd"] == s["vgg_a_bn"]
    for p in PRESETS:
        if p != "vgg_a_dropout_bn_res":
            assert s[p]["adds_in_forward"] == 0, p


def test_residual_path_is_used_in_forward():
    """Zero the block's body: the output must be act(shortcut(x)), not zero."""
    cfg = TrialConfig.from_flat({"residual": True, "bn": False, "width": 0.125})
    block = ResidualBlock(4, 8, cfg).eval()
    for p in block.body.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))


FLAGS = list(itertools.product(["vgg_a", "vgg_light"], [False, True], [0.0, 0.3], [False, True],
                               ["relu", "leaky_relu", "gelu", "elu", "silu"]))


@pytest.mark.parametrize("arch,bn,dropout,residual,act", FLAGS)
def test_every_flag_combination_trains(arch, bn, dropout, residual, act):
    torch.manual_seed(0)
    cfg = TrialConfig.from_flat(dict(arch=arch, bn=bn, dropout=dropout, residual=residual,
                                     activation=act, width=0.0625))
    model = build_model(cfg, 3, 10)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    conv_biases = {f"{m}.bias" for m, mod in model.named_modules() if isinstance(mod, nn.Conv2d)}
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if bn and name in conv_biases:  # BN (train mode) subtracts the batch mean: the gradient of
            continue                    # a bias before it is 0 in exact arithmetic
        assert p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_width_scales_channels_and_hidden_and_other_inputs():
    m = build_model(TrialConfig.from_flat({"width": 0.5}), 1, 100)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].out_channels == 32 and convs[-1].out_channels == 256
    lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lins] == [(256, 256), (256, 256), (256, 100)]
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("arch,convs", [("vgg_b", 10), ("vgg_d", 13), ("vgg_e", 16)])
def test_deeper_archs(arch, convs):
    m = build_model(TrialConfig.from_flat({"arch": arch, "width": 0.0625}), 3, 10)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == convs
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_init_schemes():
    xav = build_model(TrialConfig.from_flat({"init": "xavier"}), 3, 10)
    kai = build_model(TrialConfig.from_flat({"init": "kaiming"}), 3, 10)
    w_x, w_k = xav.features[4][0].weight, kai.features[4][0].weight  # a 128->256 conv
    fan_in, fan_out = 128 * 9, 256 * 9
    assert abs(w_x.std().item() - (2 / (fan_in + fan_out)) ** 0.5) < 0.05 * (2 / (fan_in + fan_out)) ** 0.5
    assert abs(w_k.std().item() - (2 / fan_in) ** 0.5) < 0.05 * (2 / fan_in) ** 0.5
    assert all((m.bias == 0).all() for m in xav.modules() if isinstance(m, nn.Conv2d))
