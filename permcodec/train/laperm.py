"""LaPerm: train by permuting weights (Qiu & Suda, "Train-by-Reconnect", NeurIPS 2020).

    spec = permcodec.init_(model, seed=0)
    opt = permcodec.LaPerm(model, torch.optim.Adam(model.parameters(), lr=1e-2), k=20)
    for x, y in batches:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
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
from ..init.initspec import InitSpec, attached_spec, init_targets, refuse_tied_targets


def _check_k(k) -> int | Callable[[int], int]:
    if callable(k):
        return k
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise SpecError(f"k must be a positive integer or a callable of the step, found {k!r}")
    return k


class LaPerm:
    """Wraps a torch optimizer; every k-th ``step()`` synchronizes the permuted tensors.

    The permuted tensors are those of ``init`` (or the spec ``init_`` attached to
    the model); without any spec, the Conv/Linear weights as they are now.
    Tied or aliased permuted tensors are refused (``SpecError`` naming both).
    ``reset_bn`` sets BatchNorm gamma to 1 and beta to 0 at every sync.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, k=20,
                 init: InitSpec | None = None, reset_bn: bool = False):
        self.model = model
        self.optimizer = optimizer
        self.k = _check_k(k)
        self.reset_bn = reset_bn
        self.spec = init if init is not None else attached_spec(model)
        self.targets = self._targets()
        self.pools = {name: self._pool(name, tensor) for name, tensor in self.targets}
        self.steps = 0
        self.steps_since_sync = 0
        self.syncs = 0

    def _targets(self) -> list[tuple[str, nn.Parameter]]:
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

    def _pool(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        initial = tensor.detach() if self.spec is None else self.spec.regenerate(name, device=tensor.device)
        return perm.sorted_pool(perm.as_rows(initial.to(tensor.device)))

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def current_k(self) -> int:
        k = self.k(self.steps) if callable(self.k) else self.k
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise SpecError(f"k({self.steps}) must return a positive integer, found {k!r}")
        return k

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.steps += 1
        self.steps_since_sync += 1
        if self.steps_since_sync >= self.current_k():
            self.sync()
        return loss

    def synced_weights(self) -> dict[str, torch.Tensor]:
        """What a sync would write now, without changing the model."""
        with torch.no_grad():
            return {name: perm.sync(tensor.detach(), self.pools[name]) for name, tensor in self.targets}

    @torch.no_grad()
    def sync(self) -> None:
        for name, tensor in self.targets:
            tensor.copy_(perm.sync(tensor, self.pools[name]))
        if self.reset_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
        self.steps_since_sync = 0
        self.syncs += 1

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps,
                "steps_since_sync": self.steps_since_sync, "syncs": self.syncs}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]
        self.steps_since_sync = state["steps_since_sync"]
        self.syncs = state["syncs"]
