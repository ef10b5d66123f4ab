"""Rows, ranks with the canonical tie rule, placing pools, and the LaPerm sync."""

import pytest
import torch
from torch import nn

from permcodec import SpecError, init_, perm


@pytest.mark.parametrize("layer,rows", [
    (nn.Linear(7, 5), (5, 7)),
    (nn.Conv1d(3, 4, 5), (4, 15)),
    (nn.Conv2d(3, 6, (2, 3)), (6, 18)),
    (nn.Conv3d(2, 3, 2), (3, 16)),
])
def test_row_definition(layer, rows):
    assert perm.row_shape(layer.weight.shape) == rows
    assert perm.as_rows(layer.weight).shape == rows
    # row r holds exactly the weights of output unit r, in row-major order
    assert torch.equal(perm.as_rows(layer.weight)[2], layer.weight[2].reshape(-1))


def test_one_dimensional_is_one_row():
    assert perm.row_shape((9,)) == (1, 9)


def test_zero_dim_has_no_rows():
    with pytest.raises(SpecError, match="a 0-D tensor has no row definition"):
        perm.row_shape(())


def test_ranks_break_ties_by_position():
    rows = torch.tensor([[0.5, 0.0, 0.5, -1.0, 0.0]])
    assert perm.row_ranks(rows).tolist() == [[3, 1, 4, 0, 2]]


def test_place_inverts_ranks():
    rows = torch.randn(6, 50)
    rows[:, ::3] = 0.0  # many ties
    assert torch.equal(perm.place(perm.sorted_pool(rows), perm.row_ranks(rows)), rows)


def test_sync_gives_a_permutation_in_the_trained_order():
    layer = nn.Conv2d(4, 8, 3)
    init_(layer, 3, dist="sparse", density=0.5)
    pool = perm.sorted_pool(perm.as_rows(layer.weight.detach()))
    trained = layer.weight.detach() + torch.randn_like(layer.weight) * 0.05
    synced = perm.sync(trained, pool)
    assert synced.shape == trained.shape
    assert bool(perm.is_row_permutation(synced, pool).all())
    # read in the trained row's order, the synced row is the sorted pool
    order = torch.argsort(perm.as_rows(trained), dim=1, stable=True)
    assert torch.equal(torch.gather(perm.as_rows(synced), 1, order), pool)


def test_sync_keeps_the_order_of_a_dense_row():
    layer = nn.Linear(40, 6)
    init_(layer, 3)
    pool = perm.sorted_pool(perm.as_rows(layer.weight.detach()))
    trained = torch.randn(6, 40)
    assert torch.equal(perm.row_ranks(perm.sync(trained, pool)), perm.row_ranks(trained))


def test_sync_is_idempotent():
    layer = nn.Linear(30, 10)
    pool = perm.sorted_pool(perm.as_rows(layer.weight.detach()))
    once = perm.sync(layer.weight.detach() * 2 - 0.1, pool)
    assert torch.equal(perm.sync(once, pool).view(torch.int32), once.view(torch.int32))


def test_is_row_permutation_compares_bits():
    pool = perm.sorted_pool(torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]))
    candidate = torch.tensor([[2.0, -0.0, 1.0], [5.0, 3.0, 4.0]])
    assert perm.is_row_permutation(candidate, pool).tolist() == [False, True]


def test_sync_shape_mismatch():
    with pytest.raises(SpecError, match=r"sorted pool has shape \(2, 3\), rows are \(3, 2\)"):
        perm.sync(torch.zeros(3, 2), torch.zeros(2, 3))


def test_inverse_of_no_rows_with_huge_rows_allocates_nothing():
    assert perm.inverse_permutation(torch.empty(0, 2**40, dtype=torch.int64)).shape == (0, 2**40)
