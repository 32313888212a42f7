import torch
import torch.nn.functional as F

from synthcp3d.networks import SPADEGenerator


def _grads(g: SPADEGenerator, seg: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g.zero_grad(set_to_none=True)
    y = g(seg)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in g.named_parameters()}


def test_checkpointing_same_output_and_grads_fewer_saved_tensors():
    torch.manual_seed(0)
    kw = {"ngf": 4, "num_up": 2, "hidden_channels": 8, "spectral_norm": False, "norm": "INSTANCE"}
    plain = SPADEGenerator(3, label_nc=3, **kw)
    ckpt = SPADEGenerator(3, label_nc=3, checkpointing=True, **kw)
    ckpt.load_state_dict(plain.state_dict())
    seg = F.one_hot(torch.randint(0, 3, (1, 16, 16, 8)), 3).movedim(-1, 1).float()
    y0, g0 = _grads(plain, seg)
    y1, g1 = _grads(ckpt, seg)
    torch.testing.assert_close(y1, y0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)

    def saved_bytes(g: SPADEGenerator) -> int:
        """Bytes of activations autograd keeps for the backward pass (parameters excluded)."""
        params = {p.data_ptr() for p in g.parameters()}
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            if t.data_ptr() not in params:
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            g(seg)
        return total

    assert saved_bytes(ckpt) < 0.5 * saved_bytes(plain)
    # eval mode / no_grad: plain forward, identical output
    with torch.no_grad():
        torch.testing.assert_close(ckpt.eval()(seg), plain.eval()(seg))
