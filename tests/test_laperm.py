"""The LaPerm wrapper: sync schedule and rules, permutation invariant, resume, bias and BN handling, the spec."""

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
    init_(model, 0)
    with pytest.raises(SpecError, match="k must be a positive integer or a callable of the step, found 0"):
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), k=0)
    opt = LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), k=lambda step: -1)
    with pytest.raises(SpecError, match=r"k\(1\) must return a positive integer, found -1"):
        train_steps(opt, model, 1)


def test_without_spec_the_current_weights_are_the_pool():
    model = net()
    pools = {n: perm.sorted_pool(perm.as_rows(p.detach())) for n, p in model.named_parameters() if n.endswith("weight")}
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=2, require_spec=False)
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


NO_SPEC = ("the model has no init spec: call permcodec.init_(model, seed) before LaPerm (or pass init=spec); to "
           "permute its current weights without one (not storable as .pc), pass require_spec=False")


def test_a_model_without_spec_is_refused_at_construction():
    model = net()
    before = bits(model[0].weight).clone()
    with pytest.raises(SpecError) as error:
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert str(error.value) == NO_SPEC
    assert torch.equal(bits(model[0].weight), before)
    init_(model, 0)
    assert LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1)).spec is not None  # the attached spec


def test_a_spec_passed_as_init_is_enough():
    model = net()
    spec = init_(net(), 0)  # drawn for another model of the same shapes: nothing attached to this one
    assert LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), init=spec).spec is spec


def test_bad_k_rule():
    model = net()
    init_(model, 0)
    with pytest.raises(SpecError) as error:
        LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), k_rule="every_k")
    assert str(error.value) == "k_rule must be 'since_sync' or 'global_step', found 'every_k'"


def test_k_can_be_reassigned_and_is_checked():
    model = net()
    init_(model, 0)
    opt = LaPerm(model, torch.optim.SGD(model.parameters(), lr=0.1), k=5)
    opt.k = 2
    train_steps(opt, model, 2)
    assert opt.syncs == 1
    with pytest.raises(SpecError, match=r"^k must be a positive integer or a callable of the step, found 0$"):
        opt.k = 0


def sync_steps(k_rule, k, steps, manual_sync_after=None):
    """The steps after which a LaPerm with ``k_rule`` synced (k may be a callable of the step)."""
    model = net()
    init_(model, 11)
    opt = LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=k, k_rule=k_rule)
    synced_at = []
    for step in range(1, steps + 1):
        syncs = opt.syncs
        train_steps(opt, model, 1)
        if opt.syncs > syncs:
            synced_at.append(step)
        if step == manual_sync_after:
            opt.sync()
    return synced_at, model


def test_the_two_rules_agree_for_a_constant_k():
    since, model_since = sync_steps("since_sync", 3, 10)
    global_, model_global = sync_steps("global_step", 3, 10)
    assert since == global_ == [3, 6, 9]
    for a, b in zip(model_since.parameters(), model_global.parameters()):
        assert torch.equal(bits(a), bits(b))


def test_global_step_syncs_on_multiples_of_the_k_in_force():
    """The reference rule: k from a per-epoch schedule (here epochs of 4 steps: k=3, then k=2), sync when
    step % k == 0; since_sync counts the new k from its last sync, at step 3."""
    def k(step):  # asked after each step with the steps taken: the step just taken is in epoch (step - 1) // 4
        return 3 if (step - 1) // 4 == 0 else 2

    assert sync_steps("global_step", k, 10)[0] == [3, 6, 8, 10]
    assert sync_steps("since_sync", k, 10)[0] == [3, 5, 7, 9]


def test_after_a_manual_sync_since_sync_counts_afresh():
    assert sync_steps("since_sync", 4, 12, manual_sync_after=2)[0] == [6, 10]
    assert sync_steps("global_step", 4, 12, manual_sync_after=2)[0] == [4, 8, 12]


def test_inner_optimizer_state_persists_across_a_sync():
    """As in the reference code, a sync changes the weights, never the inner optimizer's state."""
    model = net()
    init_(model, 12)
    inner = torch.optim.Adam(model.parameters(), lr=0.05)
    opt = LaPerm(model, inner, k=100)
    train_steps(opt, model, 3)
    weight = model[0].weight
    before = {key: value.clone() for key, value in inner.state[weight].items()}
    trained = bits(weight).clone()
    opt.sync()
    assert not torch.equal(bits(weight), trained)  # the sync moved the weights...
    for key in ("step", "exp_avg", "exp_avg_sq"):  # ...and left Adam's moments and step count as they were
        assert torch.equal(inner.state[weight][key], before[key]), key
    assert bool(before["exp_avg"].abs().sum() > 0)


def test_laperm_is_an_optimizer_lending_the_inner_groups_and_state():
    model = net()
    init_(model, 13)
    inner = torch.optim.Adam(model.parameters(), lr=0.05)
    opt = LaPerm(model, inner, k=2)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups and opt.defaults is inner.defaults
    train_steps(opt, model, 3)
    assert opt.state is inner.state and len(opt.state) > 0
    opt.load_state_dict(opt.state_dict())  # the inner load_state_dict replaces its groups and state...
    assert opt.param_groups is inner.param_groups and opt.state is inner.state  # ...and LaPerm follows
    opt.param_groups[0]["lr"] = 0.5
    assert inner.param_groups[0]["lr"] == 0.5
