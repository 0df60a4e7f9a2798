import numpy as np
import pytest
import torch

from phaselib.data import OPERATIONS, is_prime, make_modular, make_regression, modular_table


@pytest.mark.parametrize("op", OPERATIONS)
def test_labels_follow_the_operation(op):
    p = 7
    a, b, y = modular_table(p, op)
    for ai, bi, yi in zip(a, b, y):
        if op == "add":
            assert yi == (ai + bi) % p
        elif op == "sub":
            assert yi == (ai - bi) % p
        elif op == "mul":
            assert yi == (ai * bi) % p
        else:
            assert bi != 0 and (yi * bi) % p == ai % p


def test_enumeration_is_a_major():
    a, b, _ = modular_table(5, "add")
    assert list(a[:6]) == [0, 0, 0, 0, 0, 1] and list(b[:6]) == [0, 1, 2, 3, 4, 0]


def test_div_excludes_zero_and_needs_prime():
    a, b, _ = modular_table(11, "div")
    assert len(a) == 11 * 10 and (b != 0).all()
    with pytest.raises(ValueError, match="modulus"):
        modular_table(12, "div")


def test_sizes_split_and_one_hot():
    d = make_modular(13, "add", 0.7, seed=5)
    assert d.n_total == 169 and len(d.train_idx) == int(169 * 0.7)
    assert d.x_train.shape == (len(d.train_idx), 26) and d.out_dim == 13
    assert set(d.train_idx).isdisjoint(d.test_idx)
    assert sorted(np.concatenate([d.train_idx, d.test_idx])) == list(range(169))
    # each row is one-hot(a) ++ one-hot(b) of the operands it indexes, label beside it
    i = d.train_idx[0]
    row = d.x_train[0]
    assert row.sum() == 2 and row[d.a[i]] == 1 and row[13 + d.b[i]] == 1
    assert d.y_train[0] == d.label[i]


def test_split_is_the_papers_permutation():
    d = make_modular(11, "add", 0.5, seed=42)
    perm = np.random.RandomState(42).permutation(121)
    assert (d.train_idx == perm[:60]).all() and (d.test_idx == perm[60:]).all()


def test_same_seed_same_split_other_seed_other_split():
    d1, d2, d3 = (make_modular(11, "mul", 0.5, s) for s in (1, 1, 2))
    assert (d1.train_idx == d2.train_idx).all() and not (d1.train_idx == d3.train_idx).all()


def test_regression_draws_x_before_the_split():
    d = make_regression(0.7, seed=42)
    rng = np.random.RandomState(42)
    x = rng.uniform(-3, 3, size=(2000, 1)).astype(np.float32)
    perm = rng.permutation(2000)
    assert torch.equal(d.x_train, torch.as_tensor(x[perm[:1400]]))
    assert torch.allclose(d.y_train, torch.sin(d.x_train) + 0.3 * torch.sin(3 * d.x_train), atol=1e-6)
    assert d.x_test.shape == (600, 1) and d.in_dim == d.out_dim == 1


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
