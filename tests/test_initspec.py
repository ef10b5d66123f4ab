"""init_ and InitSpec: drawing a module, the record round trip, regeneration, bad specs."""

import json

import msgpack
import pytest
import torch
from torch import nn

from permcodec import InitSpec, SpecError, TensorInit, init_
from permcodec.init import distributions as D
from permcodec.init.modules import attached_spec


def small_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv1d(8, 4, 3), nn.Conv3d(2, 2, 2),
                         nn.Linear(16, 10))


def bits(t):
    return t.detach().contiguous().view(torch.int32)


def test_init_draws_every_weight_and_attaches_the_spec():
    model = small_model()
    spec = init_(model, seed=1234)
    assert spec.names() == ["0.weight", "2.weight", "3.weight", "4.weight"]
    assert [r.stream for r in spec] == [0, 1, 2, 3]
    assert attached_spec(model) is spec
    for name, param in model.named_parameters():
        if name in spec:
            assert torch.equal(bits(param), bits(spec.regenerate(name)))


def test_init_with_bias():
    model = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2))
    spec = init_(model, seed=0, bias=True)
    assert spec.names() == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert spec["0.bias"].params == {"bound": D.to_float32((6 / 3) ** 0.5)}  # 1-D: fan_in = length
    assert torch.equal(bits(model[0].bias), bits(spec.regenerate("0.bias")))


def test_init_leaves_torch_rng_untouched():
    model = small_model()
    state = torch.random.get_rng_state()
    init_(model, seed=7, dist="normal", std=0.1)
    assert torch.equal(state, torch.random.get_rng_state())


def test_same_seed_same_bits_different_seed_different_bits():
    a, b, c = small_model(), small_model(), small_model()
    init_(a, 5, dist="sparse", density=0.4)
    init_(b, 5, dist="sparse", density=0.4)
    init_(c, 6, dist="sparse", density=0.4)
    assert torch.equal(bits(a[0].weight), bits(b[0].weight))
    assert not torch.equal(bits(a[0].weight), bits(c[0].weight))


def test_spec_round_trips_through_json_and_msgpack():
    spec = init_(small_model(), seed=2**64 - 1, dist="sparse", density=0.25, base="glorot_normal")
    d = spec.to_dict()
    assert InitSpec.from_dict(json.loads(json.dumps(d))) == spec
    assert InitSpec.from_dict(msgpack.unpackb(msgpack.packb(d))) == spec
    assert d["rng"] == "philox4x32-10" and d["version"] == 1


def test_regenerate_is_deterministic_and_sliceable():
    record = TensorInit("w", (30, 40), seed=3, stream=9, dist="he_normal", params={"std": 0.25})
    full = record.regenerate()
    assert torch.equal(bits(full), bits(record.regenerate()))
    assert torch.equal(bits(record.sample(start=101, count=57)), bits(full.reshape(-1)[101:158]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(seed=-5), "seed must be an integer in [0, 2**64), found -5"),
    (dict(seed="0"), "seed must be an integer in [0, 2**64), found str '0'"),
    (dict(seed=0, dist="cauchy"), "unknown distribution 'cauchy' (argument dist)"),
    (dict(seed=0, dist="sparse", density=2.0), "dist='sparse': density must be in (0, 1], found 2.0"),
    (dict(seed=0, dist="normal", std=-0.5), "dist='normal': std must be > 0, found -0.5"),
])
def test_init_bad_arguments(kwargs, message):
    with pytest.raises(SpecError) as err:
        init_(small_model(), **kwargs)
    assert str(err.value).startswith(message)


def test_init_without_layers():
    with pytest.raises(SpecError, match="module BatchNorm1d has no Conv/Linear layer to initialize"):
        init_(nn.BatchNorm1d(3), 0)


def test_init_rejects_non_float32():
    with pytest.raises(SpecError, match=r"tensor '0.weight' has dtype torch.float64"):
        init_(nn.Sequential(nn.Linear(2, 2).double()), 0)


def test_duplicate_stream_rejected():
    a = TensorInit("a", (2,), 1, 0, "uniform", {"low": 0.0, "high": 1.0})
    b = TensorInit("b", (2,), 1, 0, "uniform", {"low": 0.0, "high": 1.0})
    with pytest.raises(SpecError, match="tensors 'a' and 'b' share seed 1 and stream 0"):
        InitSpec([a, b])


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(format="x"), "not a permcodec init spec"),
    (lambda d: d.update(version=2), "init spec version 2 is not supported (expected 1)"),
    (lambda d: d.update(rng="mt19937"), "init spec rng 'mt19937' is not supported"),
    (lambda d: d["tensors"][0].update(shape=[2, -1]), "shape must be a list of non-negative integers"),
    (lambda d: d["tensors"][0].pop("stream"), "init record must have keys"),
    (lambda d: d["tensors"][0].update(dist="beta"), "unknown distribution 'beta'"),
])
def test_from_dict_rejects_bad_specs(mutate, message):
    d = init_(small_model(), 1).to_dict()
    mutate(d)
    with pytest.raises(SpecError) as err:
        InitSpec.from_dict(d)
    assert message in str(err.value)


def test_unknown_tensor_name():
    with pytest.raises(SpecError, match="init spec has no tensor 'nope'"):
        init_(small_model(), 1).regenerate("nope")
