"""Santurkar probes: exact on a quadratic, and invisible to training."""
import torch
from torch import nn

from conftest import tiny
from vggbn.probes import probe
from vggbn.train import fit

TIMING = {"epoch_time_s", "images_per_s"}


def test_probes_match_the_closed_form_on_a_quadratic():
    """L(W) = mean((X Wᵀ − Y)²): ∇L(W − ηg) − ∇L(W) = −η H g exactly, so β = ‖Hg‖/‖g‖ for
    every η and gradient predictiveness = η‖Hg‖."""
    torch.manual_seed(0)
    n, d, k = 64, 10, 3
    X, Y = torch.randn(n, d, dtype=torch.float64), torch.randn(n, k, dtype=torch.float64)
    model = nn.Linear(d, k, bias=False).double()
    loss_fn = lambda m: ((m(X) - Y) ** 2).mean()  # noqa: E731
    loss_fn(model).backward()
    W = model.weight.detach().clone()
    g = model.weight.grad.detach().clone()
    torch.testing.assert_close(g, 2 / (n * k) * (X @ W.T - Y).T @ X)
    Hg = 2 / (n * k) * g @ X.T @ X
    lr, etas = 0.1, (0.5, 1.0, 2.0, 4.0)
    rows = probe(model, loss_fn, lr, etas)
    assert rows.shape == (4, 4) and rows.dtype == torch.float64
    for (eta, loss, diff, beta), m in zip(rows.tolist(), etas):
        assert abs(eta - m * lr) < 1e-15
        expected_loss = ((X @ (W - eta * g).T - Y) ** 2).mean().item()
        assert abs(loss - expected_loss) < 1e-5
        assert abs(diff - eta * Hg.norm().item()) < 1e-5
        assert abs(beta - (Hg.norm() / g.norm()).item()) < 1e-5
    # the weights and the gradient the optimizer will use are exactly as before
    assert torch.equal(model.weight, W) and torch.equal(model.weight.grad, g)


def test_probe_restores_batchnorm_statistics_and_rng():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 2)).train()
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    loss_fn = lambda m: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    loss_fn(model).backward()
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    rng = torch.get_rng_state()
    rows = probe(model, loss_fn, 0.1, (1.0, 2.0))
    assert torch.isfinite(rows).all()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])
    assert torch.equal(torch.get_rng_state(), rng)


def test_probes_leave_training_unchanged():
    cfg = tiny(epochs=3, bn=True, dropout=0.3, augment=True, synthetic_size=640)
    finals = {}

    def keep(tag):
        return lambda m, s: finals.__setitem__(tag, {k: v.clone() for k, v in s["model"].items()})

    plain = fit(cfg, on_epoch=keep("plain"))
    probed = fit({**cfg, "probe_every": 3}, on_epoch=keep("probed"))
    strip = lambda h: [{k: v for k, v in e.items() if k not in TIMING} for e in h]  # noqa: E731
    assert strip(probed["history"]) == strip(plain["history"])
    for k, v in finals["plain"].items():
        assert torch.equal(v, finals["probed"][k]), k
    steps = 3 * (640 // 64)
    assert len(probed["probes"]) == (steps // 3) * 4 and plain["probes"] == []
    first = probed["probes"][:4]
    assert [p["step"] for p in first] == [3] * 4 and [p["eta_mult"] for p in first] == [0.5, 1, 2, 4]
    assert all(p["beta"] > 0 and p["grad_diff"] > 0 for p in probed["probes"])
    assert first[1]["eta"] == first[1]["eta_mult"] * cfg.get("lr", 1e-3)


def test_filter_normalised_directions():
    from vggbn.config import TrialConfig
    from vggbn.landscape import filter_normalized_direction, grid_points
    from vggbn.models import build_model

    model = build_model(TrialConfig.from_flat({"preset": "vgg_a_bn", "width": 0.125}), 3, 10)
    dirs = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    for (name, p), d in zip(model.named_parameters(), dirs):
        assert d.shape == p.shape
        if p.dim() <= 1:  # biases and BN parameters are not perturbed
            assert (d == 0).all(), name
        else:  # each filter of the direction has the norm of the weight's filter
            torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d, p)
    assert len(grid_points(21)) == 21 + 21 * 21 and len(grid_points(5, two_d=False)) == 5
