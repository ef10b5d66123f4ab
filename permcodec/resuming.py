"""Continue a training run from a file: a trainer checkpoint (model.pt) or a .pc file.

This joins the codec and the trainer (a .pc file's weights and init spec
become a ``train.resume.Resume``), so it lives above both, beside the API.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from . import codec
from .errors import SpecError
from .inspection import json_value
from .train.config import TrainConfig, config_from_dict
from .train.resume import MUST_MATCH, Resume, resume_from_checkpoint, weights_only_resume

# What a resumed run may change; every other setting comes from the file.
MAY_CHANGE = ("epochs", "steps", "save_every", "device", "data_dir")


def resume_point(path, asked: TrainConfig) -> tuple[TrainConfig, Resume, str]:
    """(config, Resume, a line saying what was restored) to continue the run in ``path``.

    The config is the file's, with ``asked``'s MAY_CHANGE fields; a setting ``asked`` changes from its
    default to something other than the file's is a SpecError (silently training with other settings
    than asked would be worse).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no such file: {path}")
    if path.suffix.lower() == ".pc":
        resume = pc_resume(path)
        told = (f"resuming from {path}: its weights and init spec; a .pc file holds no optimizer state, so the "
                f"optimizer and the random streams start fresh")
    else:
        resume = resume_from_checkpoint(path)
        told = (f"resuming from {path} after epoch {resume.epoch} (step {resume.step}): "
                + ("weights, optimizer, LaPerm and random states" if resume.restores_optimizer else
                   "its weights only (it holds no optimizer state), with a fresh optimizer"))
    return merged_config(resume.config, asked), resume, told


def pc_resume(path: Path) -> Resume:
    """Weights and spec of a .pc file, counting on from the epochs its stored metrics record."""
    with codec.safe_open(path) as f:
        state, spec, metadata = codec.decode_all(f), f.init_spec(), f.metadata()
    return weights_only_resume(state, spec, metrics=json_value(metadata, "permcodec.metrics"),
                               config=json_value(metadata, "permcodec.config"))


def merged_config(saved: dict | None, asked: TrainConfig) -> TrainConfig:
    """The saved run's config with the fields a resumed run may change taken from ``asked``."""
    if saved is None:
        return asked
    base = config_from_dict(saved)
    defaults = TrainConfig()
    clashes = [f"{name}={getattr(asked, name)!r} (the file's run: {_setting(getattr(base, name))})"
               for name in MUST_MATCH
               if getattr(asked, name) != getattr(defaults, name) and getattr(asked, name) != getattr(base, name)]
    if clashes:
        raise SpecError(f"--resume continues the file's run with its settings; these flags ask for others: "
                        f"{', '.join(clashes)} (only {', '.join(MAY_CHANGE)} may change)")
    return dataclasses.replace(base, **{name: getattr(asked, name) for name in MAY_CHANGE})


def _setting(value) -> str:
    """A saved run's setting as a message shows it: None, a setting left unset, as 'the default'."""
    return "the default" if value is None else repr(value)
