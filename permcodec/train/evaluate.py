"""The test-set pass: loss and accuracy of a model, optionally with other weights in place for the pass.

    test_loss, test_acc = evaluate(model, dataset.test_x, dataset.test_y, "cpu", weights=laperm.synced_weights())
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import data as datasets


@torch.no_grad()
def evaluate(model: nn.Module, x, y, device, weights: dict | None = None, batch_size: int = 1000):
    """(loss, accuracy) on (x, y); ``weights`` temporarily replace the named parameters."""
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in (weights or {})}
    for name, value in (weights or {}).items():
        params[name].copy_(value)
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for images, labels in datasets.iterate_batches(x, y, batch_size, shuffle=False, generator=None, device=device):
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    for name, value in saved.items():
        params[name].copy_(value)
    return total_loss / len(y), correct / len(y)
