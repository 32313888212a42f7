import warnings

import pytest
import torch
import torch.nn as nn

from synthcp3d.losses import PerceptualTerm, discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss


def test_hinge_losses_match_formula():
    real = [torch.tensor([[2.0, -0.5]]), torch.tensor([[0.3]])]
    fake = [torch.tensor([[-1.0, 0.4]]), torch.tensor([[0.0]])]

    def hinge_real(d):  # MONAI applies tanh to the logits before the hinge
        return torch.relu(1 - torch.tanh(d)).mean()

    def hinge_fake(d):
        return torch.relu(1 + torch.tanh(d)).mean()

    d_expected = (hinge_real(real[0]) + hinge_real(real[1])) / 2 + (hinge_fake(fake[0]) + hinge_fake(fake[1])) / 2
    assert torch.isclose(discriminator_hinge_loss(real, fake), d_expected)
    g_expected = (hinge_real(fake[0]) + hinge_real(fake[1])) / 2
    assert torch.isclose(generator_hinge_loss(fake), g_expected)


def test_feature_matching():
    real = [[torch.rand(1, 2, 4, 4), torch.rand(1, 4, 2, 2)], [torch.rand(1, 2, 4, 4)]]
    fake = [[t.clone().requires_grad_() for t in s] for s in real]
    assert feature_matching_loss(fake, real) == 0
    fake2 = [[(t + 1).requires_grad_() for t in s] for s in real]
    real_req = [[t.clone().requires_grad_() for t in s] for s in real]
    loss = feature_matching_loss(fake2, real_req)
    assert torch.isclose(loss, torch.tensor((2.0 + 1.0) / 2))  # mean over scales of summed per-layer L1
    loss.backward()
    assert all(t.grad is not None for s in fake2 for t in s)
    assert all(t.grad is None for s in real_req for t in s)  # real features are detached
    with pytest.raises(ValueError):
        feature_matching_loss(fake, real[:1])


def test_perceptual_off_without_weights(tmp_path):
    with pytest.warns(UserWarning, match="OFF"):
        term = PerceptualTerm()
    assert not term.enabled
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    assert term(x, torch.rand(1, 1, 8, 8)) == 0
    with pytest.warns(UserWarning, match="not found"):
        assert not PerceptualTerm(tmp_path / "missing.pt").enabled


class _Feats(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = torch.relu(self.a(x))
        return [f, self.b(f)]


def test_perceptual_from_local_torchscript(tmp_path):
    path = tmp_path / "feats.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_Feats()), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "OFF" warning
        term = PerceptualTerm(path, slices_2d=True)
    assert term.enabled and not any(p.requires_grad for p in term.parameters())
    real = torch.rand(2, 1, 8, 8, 4)
    assert term(real, real) == 0
    fake = torch.rand(2, 1, 8, 8, 4, requires_grad=True)
    loss = term(fake, real)
    assert loss > 0
    loss.backward()
    assert fake.grad.abs().sum() > 0


def test_perceptual_from_module_and_export(tmp_path):
    torch.manual_seed(0)
    net = _Feats()
    real, fake = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    ref = PerceptualTerm(network=net)(fake, real)
    path = tmp_path / "feats.pt2"
    torch.export.save(torch.export.export(net, (real,)), str(path))
    term = PerceptualTerm(path).train()  # train() must not reach the frozen network
    assert torch.allclose(term(fake, real), ref)
