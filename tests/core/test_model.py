import math

import numpy as np
import pytest
import torch

from cellniche_core.model import LearnableTemperature, NicheEncoder, multi_positive_info_nce


def test_info_nce_matches_hand_computation():
    # three unit vectors in the plane: a and b at 0 and 90 degrees, c at 180 degrees
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pos = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    tau = 0.5
    # anchor 0: sims to 1, 2 are 0 and -1; anchor 1: sims to 0, 2 are 0 and 0; anchor 2 has none
    l0 = -(0 / tau - math.log(math.exp(0 / tau) + math.exp(-1 / tau)))
    l1 = -(0 / tau - math.log(math.exp(0) + math.exp(0)))
    expected = (l0 + l1) / 2
    got = multi_positive_info_nce(z, pos, tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_multi_positive_averages_over_positives():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = pos[0, 2] = True
    tau = 1.0
    denom = math.log(math.exp(1) + math.exp(0) + math.exp(-1))
    expected = -((1 - denom) + (0 - denom)) / 2
    assert multi_positive_info_nce(z, pos, tau).item() == pytest.approx(expected, rel=1e-6)


def test_hard_weighting_upweights_similar_negatives():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.4], [-1.0, 0.0]])
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True
    plain = multi_positive_info_nce(z, pos, 0.5)
    hard = multi_positive_info_nce(z, pos, 0.5, hard_weight=2.0)
    # the negative 2 is close to the anchors: with hard weighting it weighs more, the loss rises
    assert hard.item() > plain.item()
    assert multi_positive_info_nce(z, pos, 0.5, hard_weight=0.0).item() == pytest.approx(plain.item())


def test_loss_decreases_when_positives_align():
    pos = torch.tensor([[0, 1], [1, 0]], dtype=torch.bool)
    apart = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    close = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]])
    p3 = torch.zeros(3, 3, dtype=torch.bool)
    p3[:2, :2] = pos
    assert multi_positive_info_nce(close, p3, 0.2) < multi_positive_info_nce(apart, p3, 0.2)


def test_no_positives_gives_zero_with_gradient():
    z = torch.randn(4, 3, requires_grad=True)
    loss = multi_positive_info_nce(z, torch.zeros(4, 4, dtype=torch.bool), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and z.grad is not None
    # a learnable temperature gets a gradient too (DDP needs one for every parameter)
    t = LearnableTemperature(0.1, min_tau=0.05, max_tau=1.0)
    loss = multi_positive_info_nce(z, torch.zeros(4, 4, dtype=torch.bool), t())
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is not None and (p.grad == 0).all() for p in t.parameters())


def test_temperature_is_learnable_and_bounded():
    t = LearnableTemperature(0.1, min_tau=0.05, max_tau=1.0)
    assert t().item() == pytest.approx(0.1)
    with torch.no_grad():
        t.log_tau.fill_(-10.0)
    assert t().item() == pytest.approx(0.05)
    assert t.log_tau.requires_grad


def test_encoder_shapes_and_bipartite_layer_agree(device):
    torch.manual_seed(0)
    enc = NicheEncoder(5, 16, 8).to(device).eval()
    x = torch.randn(6, 5, device=device)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]], device=device)
    out = enc(x, ei)
    assert out.shape == (6, 8)
    # layer 0 on targets {2, 3} alone, reading all sources, gives the same rows
    with torch.no_grad():
        full = enc.layer(0, x, ei)
        part = enc.layer(0, (x, x[[2, 3]]), torch.tensor([[1, 2], [0, 1]], device=device), size=(6, 2))
    np.testing.assert_allclose(part.cpu().numpy(), full[[2, 3]].cpu().numpy(), atol=1e-6)


def test_weighted_layer_weighs_each_neighbour_by_its_cell_weight():
    torch.manual_seed(0)
    enc = NicheEncoder(3, 4, 2).eval()
    x = torch.randn(3, 3)
    ei = torch.tensor([[1, 2], [0, 0]])  # cells 1 and 2 send to cell 0
    w = torch.tensor([5.0, 1.0, 3.0])
    with torch.no_grad():
        weighted = enc.layer(1, x[:, :2].repeat(1, 2), ei, weight=w)[0]  # layer 1 takes 4 channels
        h = x[:, :2].repeat(1, 2)
        mean = (1.0 * h[1] + 3.0 * h[2]) / 4.0
        expected = enc.convs[1].lin_l(mean) + enc.convs[1].lin_r(h[0])
        plain = enc.layer(1, h, ei)[0]
    np.testing.assert_allclose(weighted.numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(weighted.numpy(), plain.numpy())  # the unweighted mean is (h1 + h2) / 2


def test_equal_weights_give_the_plain_mean_and_the_weight_gets_no_gradient_trouble():
    torch.manual_seed(1)
    enc = NicheEncoder(5, 16, 8).eval()
    x = torch.randn(6, 5, requires_grad=True)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 1], [1, 2, 3, 4, 5, 0, 0]])
    plain = enc(x, ei)
    same = enc(x, ei, weight=torch.full((6,), 2.5))
    np.testing.assert_allclose(same.detach().numpy(), plain.detach().numpy(), atol=1e-5)
    same.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
