"""torch's learning-rate schedulers drive LaPerm's inner optimizer; k follows a per-epoch schedule in the trainer."""

import math
import warnings

import pytest
import torch
from torch import nn

from permcodec import LaPerm, SpecError, init_, perm
from permcodec.train.config import (
    TrainConfig,
    check_config,
    k_for_epoch,
    parse_k_schedule,
)
from permcodec.train.loop import train


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


BATCH = (torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3)


def laperm(inner_class=torch.optim.SGD, k=3, **inner_args):
    model = net()
    spec = init_(model, 21)
    inner = inner_class(model.parameters(), **inner_args)
    return model, spec, inner, LaPerm(model, inner, k=k)


def run(model, opt, scheduler, steps):
    """Train ``steps`` steps, the scheduler stepping after each; warnings (e.g. of a wrong call order) fail."""
    x, y = BATCH
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            scheduler.step()


def assert_synced_permutation(model, spec):
    params = dict(model.named_parameters())
    for record in spec:
        pool = perm.sorted_pool(perm.as_rows(record.regenerate()))
        assert bool(perm.is_row_permutation(params[record.name], pool).all()), record.name


def test_step_lr_changes_the_inner_lr():
    model, spec, inner, opt = laperm(lr=0.1)
    run(model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), steps=6)
    assert inner.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    assert inner.param_groups[0]["initial_lr"] == 0.1
    assert opt.syncs == 2 and opt.steps_since_sync == 0
    assert_synced_permutation(model, spec)


def test_cosine_annealing_changes_the_inner_lr():
    model, spec, inner, opt = laperm(torch.optim.Adam, lr=0.01)
    run(model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001), steps=4)
    expected = 0.001 + (0.01 - 0.001) * (1 + math.cos(math.pi * 4 / 10)) / 2  # the closed form, t=4 of T=10
    assert inner.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    assert opt.syncs == 1
    run(model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001), steps=2)
    assert opt.syncs == 2
    assert_synced_permutation(model, spec)


def test_one_cycle_changes_the_inner_lr_and_momentum():
    """OneCycleLR reads the inner defaults (betas) and cycles both lr and beta1 of the inner groups."""
    model, spec, inner, opt = laperm(torch.optim.Adam, lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=12)
    start = inner.param_groups[0]["lr"]
    assert start == pytest.approx(0.1 / 25)  # OneCycleLR starts at max_lr / div_factor
    run(model, opt, scheduler, steps=3)
    # Three steps into the warm-up (pct_start 0.3 of 12 steps: peak after step 2.6): near the peak, beta1 low.
    assert inner.param_groups[0]["lr"] > 0.09
    assert inner.param_groups[0]["betas"][0] < 0.9
    assert opt.syncs == 1
    assert_synced_permutation(model, spec)


def test_a_scheduler_follows_the_inner_groups_across_load_state_dict():
    model, _, inner, opt = laperm(lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    run(model, opt, scheduler, steps=1)
    opt.load_state_dict(opt.state_dict())  # torch replaces the inner optimizer's group list here
    run(model, opt, scheduler, steps=1)
    assert inner.param_groups[0]["lr"] == pytest.approx(0.025)


# ---------------------------------------------------------------- k per epoch in the trainer

def test_parse_k_schedule():
    assert parse_k_schedule("51:100, 81:200") == [[51, 100], [81, 200]]
    config = TrainConfig(k=20, k_schedule=[[51, 100], [81, 200]])
    assert [k_for_epoch(config, epoch) for epoch in (1, 50, 51, 80, 81, 500)] == [20, 20, 100, 100, 200, 200]


@pytest.mark.parametrize("text,message", [
    ("51", "k schedule must be EPOCH:K pairs separated by commas (e.g. 51:100,81:200), found '51'"),
    ("a:3", "k schedule must be EPOCH:K pairs separated by commas (e.g. 51:100,81:200), found 'a:3'"),
    ("5:-3", "k schedule must be EPOCH:K pairs separated by commas (e.g. 51:100,81:200), found '5:-3'"),
    ("5:0", "k_schedule must be a list of [epoch, k] pairs of positive integers, found [[5, 0]]"),
    ("9:2,3:4", "k_schedule epochs must be strictly ascending, found [9, 3]"),
    ("3:2,3:4", "k_schedule epochs must be strictly ascending, found [3, 3]"),
])
def test_bad_k_schedule(text, message):
    with pytest.raises(SpecError) as error:
        parse_k_schedule(text)
    assert str(error.value) == message


def test_bad_config_fields():
    with pytest.raises(SpecError) as error:
        check_config(TrainConfig(k_rule="sometimes"))
    assert str(error.value) == "k_rule must be 'since_sync' or 'global_step', found 'sometimes'"
    with pytest.raises(SpecError) as error:
        check_config(TrainConfig(k_schedule=[(2, 3)]))
    assert str(error.value) == "k_schedule must be a list of [epoch, k] pairs of positive integers, found [(2, 3)]"
    with pytest.raises(SpecError) as error:
        check_config(TrainConfig(save_every=0))
    assert str(error.value) == "save_every must be a positive number of epochs, found 0"


@pytest.mark.parametrize("k_rule,syncs", [
    # 10 steps an epoch (4000 images, batch 400); k=4 in epoch 1, k=3 from epoch 2. global_step: 4, 8 | 12, 15, 18 | 21, 24, 27, 30.
    ("global_step", 9),
    # since_sync: 4, 8 | 11, 14, 17, 20 | 23, 26, 29, then the closing sync after step 30.
    ("since_sync", 10),
])
def test_the_trainer_reads_k_per_epoch(k_rule, syncs):
    config = TrainConfig(model="mlp", epochs=3, batch_size=400, k=4, k_schedule=[[2, 3]], k_rule=k_rule,
                         augment=False, device="cpu")
    state = train(config, progress=False, log=lambda record: None)
    assert state.metrics[-1]["steps"] == 30 and state.metrics[-1]["syncs"] == syncs
