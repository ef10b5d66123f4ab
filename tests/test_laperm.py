"""The LaPerm wrapper: sync schedule, permutation invariant, resume, bias and BN handling."""

import pytest
import torch
from torch import nn

from permcodec import LaPerm, SpecError, init_, perm


def bits(t):
    return t.detach().contiguous().view(torch.int32)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


BATCH = (torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(9)), torch.arange(8) % 3)


def train_steps(opt, model, n):
    x, y = BATCH
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def assert_permutation_of_init(model, spec):
    params = dict(model.named_parameters())
    for record in spec:
        pool = perm.sorted_pool(perm.as_rows(record.regenerate()))
        assert bool(perm.is_row_permutation(params[record.name], pool).all()), record.name


def test_syncs_every_k_steps():
    model = net()
    spec = init_(model, 1)
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=3)
    train_steps(opt, model, 2)
    assert opt.syncs == 0
    train_steps(opt, model, 1)
    assert opt.syncs == 1 and opt.steps_since_sync == 0
    assert_permutation_of_init(model, spec)
    train_steps(opt, model, 5)
    assert opt.syncs == 2 and opt.steps_since_sync == 2


def test_training_changes_the_order_but_not_the_values():
    model = net()
    spec = init_(model, 2)
    before = bits(model[0].weight).clone()
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=2)
    train_steps(opt, model, 10)
    assert not torch.equal(bits(model[0].weight), before)
    assert_permutation_of_init(model, spec)


def test_callable_k():
    model = net()
    init_(model, 3)
    # k is asked after each step with the number of steps taken so far
    opt = LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), k=lambda step: 1 if step < 4 else 100)
    train_steps(opt, model, 6)
    assert opt.syncs == 3


def test_bad_k():
    model = net()
    with pytest.raises(SpecError, match="k must be a positive integer or a callable of the step, found 0"):
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), k=0)
    opt = LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), k=lambda step: -1)
    with pytest.raises(SpecError, match=r"k\(1\) must return a positive integer, found -1"):
        train_steps(opt, model, 1)


def test_without_spec_the_current_weights_are_the_pool():
    model = net()
    pools = {n: perm.sorted_pool(perm.as_rows(p.detach())) for n, p in model.named_parameters() if n.endswith("weight")}
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=2)
    assert [name for name, _ in opt.targets] == ["0.weight", "4.weight"]  # BN is never permuted
    train_steps(opt, model, 4)
    assert bool(perm.is_row_permutation(model[0].weight, pools["0.weight"]).all())


def test_bias_is_permuted_when_the_spec_covers_it():
    model = net()
    spec = init_(model, 4, bias=True)
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=1)
    assert "0.bias" in [name for name, _ in opt.targets]
    train_steps(opt, model, 3)
    assert_permutation_of_init(model, spec)


def test_reset_bn():
    model = net()
    init_(model, 5)
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=2, reset_bn=True)
    train_steps(opt, model, 2)
    assert torch.equal(model[1].weight, torch.ones(4)) and torch.equal(model[1].bias, torch.zeros(4))


def test_synced_weights_do_not_change_the_model():
    model = net()
    init_(model, 6)
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=100)
    train_steps(opt, model, 3)
    before = bits(model[0].weight).clone()
    synced = opt.synced_weights()
    assert torch.equal(bits(model[0].weight), before)
    opt.sync()
    assert torch.equal(bits(model[0].weight), bits(synced["0.weight"]))


def test_resume_from_state_dict_gives_identical_bits():
    def fresh():
        model = net()
        spec = init_(model, 7)
        return model, LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=3, init=spec)

    model, opt = fresh()
    train_steps(opt, model, 7)
    straight = bits(model[0].weight).clone()

    model, opt = fresh()
    train_steps(opt, model, 4)
    saved_model, saved_opt = model.state_dict(), opt.state_dict()
    model, opt = fresh()
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    train_steps(opt, model, 3)
    assert torch.equal(bits(model[0].weight), straight)
    assert opt.syncs == 2 and opt.steps == 7


def test_spec_that_does_not_fit_the_model():
    spec = init_(nn.Sequential(nn.Linear(3, 3)), 0)
    with pytest.raises(SpecError, match=r"tensor '0.weight': model shape \(4, 1, 3, 3\), init spec shape \(3, 3\)"):
        LaPerm(net(), torch.optim.SGD(net().parameters(), lr=0.1), init=spec)
