"""Tied and aliased tensors: init_ and LaPerm refuse them up front, naming both tensors."""

import pytest
import torch
from torch import nn

from permcodec import LaPerm, SpecError, init_
from permcodec.init.modules import aliased_pairs, attached_spec, refuse_aliased


def tied_message(a, b):
    return (f"parameters {a!r} and {b!r} are the same tensor (tied or aliased); permcodec stores each permuted "
            f"tensor once and cannot store tied weights: untie them or leave one out of init_")


def bits(t):
    return t.detach().contiguous().view(torch.int32)


def snapshot(module):
    return {name: bits(t).clone() for name, t in module.state_dict().items()}


def assert_unchanged(module, before):
    after = snapshot(module)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)


def tied_pair():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    return model


def test_init_refuses_two_linear_layers_sharing_a_weight():
    model = tied_pair()
    before = snapshot(model)
    with pytest.raises(SpecError) as error:
        init_(model, seed=0)
    assert str(error.value) == tied_message("0.weight", "2.weight")
    assert_unchanged(model, before)
    assert attached_spec(model) is None


def test_init_refuses_a_submodule_registered_twice():
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    before = snapshot(model)
    with pytest.raises(SpecError) as error:
        init_(model, seed=1)
    assert str(error.value) == tied_message("0.weight", "2.weight")
    assert_unchanged(model, before)


def test_init_refuses_a_weight_sharing_storage_through_a_view():
    model = nn.Sequential(nn.Linear(2, 6), nn.Linear(3, 4))
    model[1].weight = nn.Parameter(model[0].weight.data.view(4, 3))  # another Parameter, the same memory
    before = snapshot(model)
    with pytest.raises(SpecError) as error:
        init_(model, seed=2)
    assert str(error.value) == tied_message("0.weight", "1.weight")
    assert_unchanged(model, before)


def test_init_refuses_a_weight_tied_to_a_parameter_it_does_not_draw():
    model = nn.Module()
    model.embed = nn.Embedding(5, 4)
    model.head = nn.Linear(4, 5, bias=False)
    model.head.weight = model.embed.weight  # the usual input/output embedding tie
    before = snapshot(model)
    with pytest.raises(SpecError) as error:
        init_(model, seed=3)
    assert str(error.value) == tied_message("head.weight", "embed.weight")
    assert_unchanged(model, before)


def test_tied_biases_are_refused_only_when_drawn():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].bias = model[0].bias
    before = snapshot(model)
    with pytest.raises(SpecError) as error:
        init_(model, seed=4, bias=True)
    assert str(error.value) == tied_message("0.bias", "1.bias")
    assert_unchanged(model, before)
    spec = init_(model, seed=4)  # the biases are left alone, so their tie is no concern of permcodec
    assert spec.names() == ["0.weight", "1.weight"]


def test_laperm_refuses_a_model_tied_after_init():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    spec = init_(model, seed=5)
    model[1].weight = model[0].weight
    with pytest.raises(SpecError) as error:
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), init=spec)
    assert str(error.value) == tied_message("0.weight", "1.weight")
    with pytest.raises(SpecError) as error:  # the spec init_ attached
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert str(error.value) == tied_message("0.weight", "1.weight")


def test_laperm_refuses_a_spec_built_elsewhere_for_a_module_registered_twice():
    spec = init_(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), seed=6)
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, layer)
    with pytest.raises(SpecError) as error:
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), init=spec)
    assert str(error.value) == tied_message("0.weight", "1.weight")


def test_laperm_refuses_a_spec_tensor_tied_to_a_parameter_outside_the_spec():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    spec = init_(model, seed=7, bias=True)
    model[1].weight = nn.Parameter(model[0].bias.data.view(1, 4).expand(4, 4))
    with pytest.raises(SpecError) as error:
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), init=spec)
    assert str(error.value) == tied_message("0.bias", "1.weight")


def test_laperm_without_a_spec_refuses_tied_weights():
    model = tied_pair()
    with pytest.raises(SpecError) as error:
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert str(error.value) == tied_message("0.weight", "2.weight")


def test_aliased_pairs_judges_memory_not_names():
    base = torch.zeros(4, 6)
    named = [("left", base[:, :3]), ("right", base[:, 3:]), ("top", base[:2]), ("bottom", base[2:]),
             ("again", base), ("copy", base.clone()), ("empty", base[:0]), ("other_empty", base[:0])]
    # byte ranges: left and right interleave by rows, so they count as aliased; top and bottom do not touch
    assert list(aliased_pairs(named)) == [
        ("left", "right"), ("left", "top"), ("right", "top"), ("left", "bottom"), ("right", "bottom"),
        ("left", "again"), ("right", "again"), ("top", "again"), ("bottom", "again")]


def test_aliased_pairs_on_meta_and_same_object():
    a, b = torch.empty(3, device="meta"), torch.empty(3, device="meta")  # all meta tensors have address 0
    assert list(aliased_pairs([("a", a), ("b", b), ("a_again", a), ("not_a_tensor", 3)])) == [("a", "a_again")]


def test_refuse_aliased_only_pairs_touching_the_names():
    base = torch.zeros(8)
    named = [("x", base[:4]), ("x_view", base[:2]), ("y", base[4:]), ("y_view", base[6:])]
    refuse_aliased(named, names=["z"])
    with pytest.raises(SpecError) as error:
        refuse_aliased(named, names=["y_view"])
    assert str(error.value) == tied_message("y", "y_view")


def test_encode_refuses_a_state_dict_whose_spec_tensor_is_tied():
    """A model initialized untied and tied afterwards: the state_dict names one tensor twice."""
    import permcodec

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    spec = init_(model, seed=0)
    model[2].weight = model[0].weight
    with pytest.raises(SpecError) as error:
        permcodec.encode(model, init=spec)
    assert str(error.value) == tied_message("0.weight", "2.weight")


def test_encode_accepts_aliases_among_tensors_outside_the_spec():
    """Only tensors of the spec are stored permuted; a tied pair of raw tensors is stored twice, losslessly."""
    import permcodec

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    spec = init_(model, seed=0)
    model[2].bias = model[0].bias
    tensors = permcodec.decode(permcodec.encode(model, init=spec))
    assert torch.equal(bits(tensors["0.bias"]), bits(model[0].bias)) and torch.equal(
        bits(tensors["2.bias"]), bits(model[0].bias))
