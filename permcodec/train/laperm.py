"""LaPerm: train by permuting weights (Qiu & Suda, "Train-by-Reconnect", NeurIPS 2020).

    spec = permcodec.init_(model, seed=0)
    opt = permcodec.LaPerm(model, torch.optim.Adam(model.parameters(), lr=1e-2), k=20)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)  # changes the inner lr
    for x, y in batches:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(); sched.step()
    opt.sync()   # end on a sync: the model is now an exact permutation of its init

The inner optimizer trains freely; every k steps each permuted row is replaced
by its sorted initial values placed in the rank order of the trained row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import perm
from ..errors import SpecError
from ..init.initspec import InitSpec
from ..init.modules import attached_spec, init_targets, refuse_tied_targets
from .config import K_RULES


def _check_k(k) -> int | Callable[[int], int]:
    if callable(k):
        return k
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise SpecError(f"k must be a positive integer or a callable of the step, found {k!r}")
    return k


def _check_k_rule(k_rule) -> str:
    if k_rule not in K_RULES:
        raise SpecError(f"k_rule must be 'since_sync' or 'global_step', found {k_rule!r}")
    return k_rule


class LaPerm(torch.optim.Optimizer):
    """Wraps a torch optimizer; ``step()`` steps it and synchronizes the permuted tensors every k steps.

    The permuted tensors are those of ``init`` (or the spec ``init_`` attached to the
    model). A model without a spec is refused (``SpecError``) unless ``require_spec=False``:
    then the Conv/Linear weights as they are now are the pools, and since nothing
    records them the result cannot be stored as a .pc file.
    Tied or aliased permuted tensors are refused (``SpecError`` naming both).
    ``reset_bn`` sets BatchNorm gamma to 1 and beta to 0 at every sync.

    When to sync, after each step (``k``: an int, or a callable given the steps taken so
    far; it may be reassigned between steps, e.g. per epoch):

    - ``k_rule="since_sync"`` (default): when k steps have passed since the last sync.
      Every interval is exactly the k in force, also after a manual ``sync()`` or a resume
      from synced weights; it is the rule runs before this option used, so their bits are kept.
    - ``k_rule="global_step"``: when the step count is a multiple of k, the rule of the
      paper's reference code (its LaPermTrainLoop, with k read per epoch from ``k_schedule``).
      After k changes, or after an extra sync, an interval may be shorter than k.

    For a constant k and no extra syncs the two rules sync at the same steps.

    The inner optimizer's state carries across a sync untouched, as in the reference
    code: Adam's moments (``exp_avg``, ``exp_avg_sq``) and SGD's momentum keep
    accumulating from the trained, unsynced steps.

    ``param_groups``, ``state`` and ``defaults`` are the inner optimizer's own objects,
    so ``torch.optim.lr_scheduler`` classes accept a LaPerm and change the inner lr.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, k=20, init: InitSpec | None = None,
                 reset_bn: bool = False, *, k_rule: str = "since_sync", require_spec: bool = True):
        self.optimizer = optimizer
        # Not Optimizer.__init__, which would build param groups and state of LaPerm's own;
        # __setstate__ sets up only the step hooks, and the properties below lend the inner ones.
        super().__setstate__({})
        self.model = model
        self.k = k
        self.k_rule = _check_k_rule(k_rule)
        self.reset_bn = reset_bn
        self.spec = init if init is not None else attached_spec(model)
        self.targets = self._targets()
        if self.spec is None and require_spec:
            raise SpecError("the model has no init spec: call permcodec.init_(model, seed) before LaPerm (or pass "
                            "init=spec); to permute its current weights without one (not storable as .pc), "
                            "pass require_spec=False")
        self.pools = {name: self._pool(name, tensor) for name, tensor in self.targets}
        self.steps = 0
        self.steps_since_sync = 0
        self.syncs = 0

    # The inner optimizer's objects, not copies: a scheduler's change to an lr is the inner lr,
    # and they stay right after the inner load_state_dict replaces them.
    @property
    def param_groups(self) -> list[dict]:
        """The inner optimizer's own groups: an lr scheduler on LaPerm changes the inner learning rate."""
        return self.optimizer.param_groups

    @property
    def state(self):
        """The inner optimizer's state (Adam's moments...), which a sync leaves as it is."""
        return self.optimizer.state

    @property
    def defaults(self) -> dict:
        """The inner optimizer's defaults."""
        return self.optimizer.defaults

    @property
    def k(self):
        """The sync period: an int, or a callable of the step count; may be reassigned (checked when set)."""
        return self._k

    @k.setter
    def k(self, k) -> None:
        self._k = _check_k(k)

    def _targets(self) -> list[tuple[str, nn.Parameter]]:
        # Ties are checked before a missing spec: init_ refuses a tied model, so advice to call it would not help.
        targets = self._spec_targets() if self.spec is not None else init_targets(self.model, bias=False)
        refuse_tied_targets(self.model, targets)
        return targets

    def _spec_targets(self) -> list[tuple[str, nn.Parameter]]:
        params = dict(self.model.named_parameters(remove_duplicate=False))
        targets = []
        for record in self.spec:
            if record.name not in params:
                raise SpecError(f"init spec names tensor {record.name!r}, which the model does not have")
            if tuple(params[record.name].shape) != record.shape:
                raise SpecError(f"tensor {record.name!r}: model shape {tuple(params[record.name].shape)}, "
                                f"init spec shape {record.shape}")
            targets.append((record.name, params[record.name]))
        return targets

    def _pool(self, name: str, tensor: torch.Tensor) -> perm.RowPools:
        if self.spec is None:
            return perm.RowPools.of(tensor.detach(), perm.BlockView.whole_rows(*perm.row_shape(tensor.shape)))
        return perm.pools_of(self.spec[name], tensor.device)

    def current_k(self) -> int:
        """The k in force at the current step."""
        k = self.k(self.steps) if callable(self.k) else self.k
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise SpecError(f"k({self.steps}) must return a positive integer, found {k!r}")
        return k

    def sync_due(self) -> bool:
        """Whether the step just taken ends a sync period under ``k_rule``."""
        if self.k_rule == "global_step":
            return self.steps % self.current_k() == 0
        return self.steps_since_sync >= self.current_k()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The inner optimizer's zero_grad."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        """One inner step, then a sync if the step ends a sync period (``k_rule``); returns the closure's loss."""
        loss = self.optimizer.step(closure)
        self.steps += 1
        self.steps_since_sync += 1
        if self.sync_due():
            self.sync()
        return loss

    def synced_weights(self) -> dict[str, torch.Tensor]:
        """What a sync would write now, without changing the model."""
        with torch.no_grad():
            return {name: self.pools[name].sync(tensor.detach()) for name, tensor in self.targets}

    @torch.no_grad()
    def sync(self) -> None:
        """Each permuted row (or block) becomes its pool in the trained rank order; the inner state is kept."""
        for name, tensor in self.targets:
            tensor.copy_(self.pools[name].sync(tensor))
        if self.reset_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
        self.steps_since_sync = 0
        self.syncs += 1

    def state_dict(self) -> dict:
        """The inner optimizer's state_dict and LaPerm's step and sync counters (what a resume needs)."""
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps,
                "steps_since_sync": self.steps_since_sync, "syncs": self.syncs}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]
        self.steps_since_sync = state["steps_since_sync"]
        self.syncs = state["syncs"]

    def __getstate__(self) -> dict:
        return dict(self.__dict__)  # Optimizer's would keep only the lent groups, state and defaults
