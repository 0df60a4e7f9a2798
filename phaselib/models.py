"""The paper's 2-layer ReLU MLP: Linear(in, width) -> ReLU -> Linear(width, out)."""
from __future__ import annotations

import torch
from torch import nn

#: Names of the parameterised layers, in forward order (what per-layer signals are keyed by).
LAYERS: tuple[str, ...] = ("fc1", "fc2")


class MLP(nn.Module):
    """Two-layer perceptron with PyTorch's default Linear initialisation.

    ``fc1`` is constructed before ``fc2`` so that, after ``torch.manual_seed(seed)``,
    the draws from the global generator match the paper's recipe.
    """

    def __init__(self, in_dim: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, width)
        self.fc2 = nn.Linear(width, out_dim)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Post-ReLU hidden activations (the representation the signals probe)."""
        return torch.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


def make_model(in_dim: int, width: int, out_dim: int, seed: int, device: str | torch.device = "cpu") -> MLP:
    """Seed the global generator, then build the MLP (the paper's order of operations)."""
    torch.manual_seed(seed)
    return MLP(in_dim, width, out_dim).to(device)


def layer_params(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Parameters grouped by layer (weight and bias together), keyed by layer name."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        groups.setdefault(name.split(".")[0], []).append(p)
    return groups


def is_paper_mlp(model: nn.Module) -> bool:
    """Whether ``model`` is exactly this module's MLP (not a subclass), parameters in forward order.

    The closed-form signals (:mod:`phaselib.noise`, :mod:`phaselib.hessian`) rely on that shape.
    """
    return type(model) is MLP and \
        [n for n, _ in model.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def mlp_forward(model: MLP, x: torch.Tensor, dtype: torch.dtype | None = None):
    """Detached parameters and the forward pass of the MLP: ``(W1, b1, W2, b2), a, h, out``.

    a = W1 x + b1 (pre-activation), h = relu(a), out = W2 h + b2; in ``dtype`` if given.
    """
    params = tuple(p.detach() if dtype is None else p.detach().to(dtype) for p in model.parameters())
    W1, b1, W2, b2 = params
    xd = x if dtype is None else x.to(dtype)
    a = torch.addmm(b1, xd, W1.T)
    h = a.clamp_min(0.0)
    return params, a, h, torch.addmm(b2, h, W2.T)
