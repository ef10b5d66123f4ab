"""``permcodec train``: its flags and what runs them (the rest of the command line is in ``cli``).

Like ``cli``, it parses arguments and calls the library; torch is imported only
when a run starts, so ``permcodec train --help`` stays quick.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def add_train(sub) -> None:
    from .init.distparams import DENSE, DISTRIBUTIONS
    from .rows import BLOCK_LAYOUTS
    from .train.config import DEFAULT_LR, K_RULES, KNOWN_DATASETS, MODEL_NAMES, TrainConfig

    defaults = TrainConfig()  # the one list of train flags, kept whole: each line is one flag
    p = sub.add_parser(
        "train", help="train a model by LaPerm (weight permutation) and save model.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one of the paper's models by LaPerm: the inner optimizer trains freely and every k "
                    "steps each weight row becomes its sorted initial values in the trained row's rank order. "
                    "The run ends on a sync, so model.pt is an exact permutation of its init.",
        epilog="examples:\n"
               "  permcodec train --model conv7 --epochs 10 --k 20 --seed 0 -o model.pt\n"
               "  permcodec train --model conv13 --data cifar10 --data-dir ~/data/cifar-10-batches-bin -o c13.pt\n"
               "  torchrun --standalone --nproc_per_node=2 -m permcodec train --model mlp --steps 100 -o m.pt\n"
               "  permcodec train --dist sparse --density 0.3 -o sparse.pt         # 70 % zeros: scheme sparse\n"
               "  permcodec train --dist shared --value 0.05 --density 0.08 -o shared.pt\n"
               "  permcodec train --save-every 2 --epochs 10 -o run.pt; permcodec train --resume run.pt --epochs 20 "
               "-o run.pt\n"
               f"default learning rates (measured, see README): LaPerm+Adam {DEFAULT_LR[('adam', False)]}, "
               f"Adam alone {DEFAULT_LR[('adam', True)]}, LaPerm+SGD {DEFAULT_LR[('sgd', False)]}, "
               f"SGD alone {DEFAULT_LR[('sgd', True)]}")
    p.add_argument("--model", default=defaults.model,
                   help=f"one of {', '.join(MODEL_NAMES)} (default {defaults.model})")
    p.add_argument("--data", default=defaults.data,
                   help=f"one of {', '.join(KNOWN_DATASETS)}; mnist5k is embedded (5,000 real MNIST digits "
                        f"shipped with permcodec), the others read --data-dir (default {defaults.data})")
    p.add_argument("--data-dir", help="directory with MNIST IDX files or CIFAR-10 batches (binary or python)")
    p.add_argument("--epochs", type=int, default=defaults.epochs,
                   help=f"passes over the training set (default {defaults.epochs})")
    p.add_argument("--steps", type=int, help="stop after at most N optimizer steps (smoke runs)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help=f"global batch size (default {defaults.batch_size})")
    p.add_argument("--optimizer", default=defaults.optimizer, help="inner optimizer: adam or sgd (default adam)")
    p.add_argument("--lr", type=float, help="inner learning rate (default depends on optimizer and --baseline)")
    p.add_argument("--k", type=int, default=defaults.k, help=f"sync every k inner steps (default {defaults.k})")
    p.add_argument("--k-schedule", metavar="EPOCH:K,...",
                   help="k per epoch, the paper notebooks' way: '51:100,81:200' means k=100 from epoch 51 on and "
                        "k=200 from epoch 81 on (--k before the first)")
    p.add_argument("--k-rule", default=defaults.k_rule, choices=K_RULES,
                   help="since_sync (default): sync k steps after the last sync; global_step: sync when the "
                        "global step is a multiple of k, as the reference implementation does (the two agree for "
                        "a constant k)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="Philox seed of the init, also dropout/shuffle seed")
    p.add_argument("--dist", default=defaults.dist, choices=DISTRIBUTIONS,
                   help=f"init distribution (default {defaults.dist}); its parameters are the flags below, "
                        f"the fan-based ones (he_*, glorot_*) take none")
    p.add_argument("--low", type=float, help="uniform: lower bound (default 0.0)")
    p.add_argument("--high", type=float, help="uniform: upper bound (default 1.0)")
    p.add_argument("--mean", type=float, help="normal: mean (default 0.0)")
    p.add_argument("--std", type=float, help="normal: standard deviation (default 1.0)")
    p.add_argument("--density", type=float, help="sparse, shared (required): share of non-zero values, in (0, 1]")
    p.add_argument("--value", type=float, help="shared (required): the one non-zero value")
    p.add_argument("--base", choices=DENSE, help="sparse: the distribution of the kept values; levels: the "
                                                 "distribution whose quantiles the levels are (default he_uniform; "
                                                 "--low/--high/--mean/--std apply to it)")
    p.add_argument("--num-levels", type=int, metavar="K",
                   help="levels (required): K values per row at the quantile midpoints of --base, n/K copies each; "
                        "stored at about log2 K bits per weight")
    p.add_argument("--block", type=int, metavar="B",
                   help="block-local permutations: permute within blocks of about B positions of each row, so a "
                        "weight costs about log2(B!)/B bits (16: 2.8, 8: 1.9); default: whole rows")
    p.add_argument("--block-layout", default=defaults.block_layout, choices=BLOCK_LAYOUTS,
                   help="which positions share a block: shuffled (a per-row Philox order, default), strided "
                        "(j mod ceil(n/B)) or contiguous (runs of B)")
    p.add_argument("--baseline", action="store_true", help="train with the inner optimizer alone, no permutation")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="turn off data augmentation")
    p.add_argument("--reset-bn", action="store_true", help="reset BatchNorm gamma=1, beta=0 at every sync")
    p.add_argument("--keep", default=defaults.keep,
                   help="save the 'last' weights or the 'best' synced ones (default last)")
    p.add_argument("--device", default=defaults.device, help="auto (CUDA when present), cpu or cuda (default auto)")
    p.add_argument("--resume", metavar="FILE",
                   help="continue a run: a model.pt of train (weights, optimizer, LaPerm and random states; "
                        "the run's settings come from it, --epochs/--steps/--device/--data-dir/--save-every may "
                        "change) or a .pc file (weights and init spec only: a fresh optimizer)")
    p.add_argument("--save-every", type=int, metavar="N",
                   help="write a resume checkpoint to -o every N epochs (weights, optimizer, LaPerm and RNG states)")
    p.add_argument("-o", "--output", default="model.pt", help="where to write the model (default model.pt)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def run_train(args) -> None:
    from .atomicfile import check_output_path
    from .train.loop import save_checkpoint, train

    in_place = args.resume is not None and os.path.abspath(args.resume) == os.path.abspath(args.output)
    # before training, so that a finished run is never lost
    check_output_path(args.output, (".pt", ".pth"), "train writes a torch checkpoint: the output",
                      args.force or in_place)
    with flags_named():  # the flags are checked on the config they make, merged with a resumed file's
        config, resume = train_config(args), None
        if args.resume is not None:
            from .resuming import resume_point

            config, resume, told = resume_point(args.resume, config)
            print(told, file=sys.stderr)
        state = train(config, progress=not args.quiet, resume=resume,
                      checkpoint_path=args.output if config.save_every else None)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes
        save_checkpoint(state, args.output)
        print(f"saved {args.output}", file=sys.stderr)


class flags_named:  # noqa: N801 - used as a context manager
    """A SpecError raised inside, reworded so that init_'s argument names read as the flags a user typed:
    "argument 'num_levels'" as --num-levels, "unexpected argument(s) low" as a flag that --dist does not take."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, traceback) -> bool:
        from .errors import SpecError

        if isinstance(err, SpecError):
            reworded = as_flags(str(err))
            if reworded != str(err):
                raise SpecError(reworded) from None
        return False


def as_flags(message: str) -> str:
    """init_'s argument names in ``message`` written as train's flags."""
    def flag(name: str) -> str:
        return "--" + name.strip().replace("_", "-")

    message = re.sub(r"argument '(\w+)' is required", lambda m: f"{flag(m.group(1))} is required", message)
    message = re.sub(r"argument '(\w+)' must be (.*), found None$", lambda m: f"{flag(m.group(1))} is required "
                     f"(it must be {m.group(2)})", message)
    message = re.sub(r"argument '(\w+)'", lambda m: flag(m.group(1)), message)
    return re.sub(r"unexpected argument\(s\) ([\w, ]+)$",
                  lambda m: f"it takes no {', '.join(flag(n) for n in m.group(1).split(','))}", message)


def train_config(args):
    """The TrainConfig the flags ask for."""
    from .train.config import TrainConfig, parse_k_schedule

    dist_params = {name: getattr(args, name) for name in ("low", "high", "mean", "std", "density", "value", "base",
                                                          "num_levels")
                   if getattr(args, name) is not None}
    return TrainConfig(model=args.model, data=args.data, data_dir=args.data_dir, epochs=args.epochs,
                       steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                       k=args.k, k_schedule=parse_k_schedule(args.k_schedule) if args.k_schedule else None,
                       k_rule=args.k_rule, seed=args.seed, dist=args.dist, dist_params=dist_params or None,
                       block=args.block, block_layout=args.block_layout, baseline=args.baseline,
                       augment=args.augment, reset_bn=args.reset_bn, keep=args.keep, device=args.device,
                       save_every=args.save_every)
