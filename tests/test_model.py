import torch

from phaselib.models import MLP, layer_params, make_model


def test_shapes_and_layers():
    m = make_model(194, 64, 97, seed=0)
    assert m(torch.zeros(5, 194)).shape == (5, 97)
    assert m.hidden(torch.zeros(5, 194)).shape == (5, 64)
    assert list(layer_params(m)) == ["fc1", "fc2"]


def test_init_is_pytorch_default_after_manual_seed():
    m1 = make_model(20, 8, 10, seed=7)
    torch.manual_seed(7)
    fc1, fc2 = torch.nn.Linear(20, 8), torch.nn.Linear(8, 10)
    assert torch.equal(m1.fc1.weight, fc1.weight) and torch.equal(m1.fc2.bias, fc2.bias)


def test_init_is_reproducible_and_seed_dependent():
    a, b, c = make_model(6, 4, 3, 1), make_model(6, 4, 3, 1), make_model(6, 4, 3, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)
    assert isinstance(a, MLP)
