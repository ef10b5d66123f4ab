"""The permcodec command line. It parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .errors import PermcodecError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def add_train(sub) -> None:
    from .init.distparams import DENSE, DISTRIBUTIONS
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
               "  permcodec train --dist sparse --density 0.3 -o sparse.pt         # 70 % zeros: scheme multiset\n"
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
    p.add_argument("--base", choices=DENSE, help="sparse: the distribution of the kept values (default he_uniform; "
                                                 "--low/--high/--mean/--std apply to it)")
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


def train_config(args):
    """The TrainConfig the flags ask for."""
    from .train.config import TrainConfig, parse_k_schedule

    dist_params = {name: getattr(args, name) for name in ("low", "high", "mean", "std", "density", "value", "base")
                   if getattr(args, name) is not None}
    return TrainConfig(model=args.model, data=args.data, data_dir=args.data_dir, epochs=args.epochs,
                       steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                       k=args.k, k_schedule=parse_k_schedule(args.k_schedule) if args.k_schedule else None,
                       k_rule=args.k_rule, seed=args.seed, dist=args.dist, dist_params=dist_params or None,
                       baseline=args.baseline, augment=args.augment, reset_bn=args.reset_bn, keep=args.keep,
                       device=args.device, save_every=args.save_every)


def add_encode(sub) -> None:
    from .format.schemes import DEFAULT_LEVEL, LEVELS, SCHEMES

    levels = "\n".join(f"  {name:<8} {level.summary}" for name, level in LEVELS.items())
    p = sub.add_parser(
        "encode", help="store a trained model as a .pc file", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Encode a model whose permuted tensors are per-row permutations of their init: each is "
                    "stored as its RNG record plus compressed permutation indices; every other tensor "
                    "(biases, BatchNorm, buffers) is stored losslessly.",
        epilog="input: a model.pt from 'permcodec train' (read with torch.load(weights_only=True)), or a "
               ".safetensors file whose metadata key 'permcodec.init' holds the init spec as JSON.\n"
               f"levels (each permuted tensor keeps the smallest scheme its level tries):\n{levels}\n"
               "schemes: delta (rank differences, zstd: small after light training), exact (a permutation code, "
               "about log2(n!) bits per row), multiset (for pools with repeated values: log2(n!/prod m!)); "
               "every file decodes whatever level wrote it.\n"
               "examples:\n  permcodec encode model.pt\n  permcodec encode model.pt -o small.pc --level max\n"
               "  permcodec encode model.pt --raw-fallback")
    p.add_argument("input", help="model.pt or model.safetensors")
    p.add_argument("-o", "--output", help="output .pc path (default: the input's name with .pc)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--raw-fallback", action="store_true",
                   help="store a tensor that is not a permutation of its init losslessly instead of failing")
    p.add_argument("--level", choices=list(LEVELS), default=DEFAULT_LEVEL,
                   help=f"how hard to try, see 'levels' below (default: {DEFAULT_LEVEL})")
    p.add_argument("--scheme", choices=list(SCHEMES),
                   help="store every permuted tensor with this scheme instead of the smallest the level tries")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_encode)


def run_encode(args) -> None:
    from pathlib import Path

    from . import codec
    from .atomicfile import check_output_path
    from .checkpoints import read_model
    from .encoder import refuse_baseline
    from .inspection import describe, json_value

    output = check_output_path(Path(args.output) if args.output else Path(args.input).with_suffix(".pc"),
                               (".pc",), "encode writes a .pc file: the output", args.force)
    notes = []
    state, spec, metadata = read_model(args.input, notes)
    for note in notes:
        print(note, file=sys.stderr)
    refuse_baseline(json_value(metadata, "permcodec.config"), args.input, args.raw_fallback)
    fallbacks = []
    codec.save(state, output, init=spec, raw_fallback=args.raw_fallback, level=args.level, scheme=args.scheme,
               metadata=metadata, progress=not args.quiet, fallbacks=fallbacks)
    for f in fallbacks:
        print(f"stored {f.name!r} losslessly (raw): row {f.row} is not a permutation ({f.reason})", file=sys.stderr)
    totals = describe(output)["totals"]
    print(f"wrote {output}: {output.stat().st_size:,} bytes; permuted weights at "
          f"{_number(totals['permuted_bits_per_weight'], '.3f')} bits/weight, "
          f"{_number(totals['ratio_to_bound'], '.4f')} x bound; file {_number(totals['ratio_to_fp16'], '.3f')} x "
          f"its fp16 size", file=sys.stderr)


def add_decode(sub) -> None:
    p = sub.add_parser(
        "decode", help="rebuild every tensor of a .pc file bit-exactly",
        description="Decode a .pc file: regenerate each permuted tensor's initial values from its RNG record, "
                    "apply the stored permutations, check every checksum and (unless --no-verify) the SHA-256 "
                    "of each rebuilt tensor, and write a .safetensors or .pt file.")
    p.add_argument("input", help="a .pc file")
    p.add_argument("-o", "--output", help="output path ending in .safetensors or .pt "
                                          "(default: the input's name with .safetensors)")
    p.add_argument("--device", default="cpu", help="device to rebuild on: cpu or cuda (default cpu)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the SHA-256 check of each rebuilt tensor (checksums are still checked)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_decode)


def run_decode(args) -> None:
    from pathlib import Path

    from . import codec
    from .checkpoints import check_decode_output, write_decoded
    from .devices import checked_device

    output = check_decode_output(args.output or Path(args.input).with_suffix(".safetensors"), args.force)
    device = checked_device(args.device)
    with codec.safe_open(args.input, device=device, verify=args.verify) as f:
        tensors = codec.decode_all(f, progress=not args.quiet)
        spec, metadata = f.init_spec(), f.metadata()
    write_decoded(output, tensors, spec, metadata)
    print(f"wrote {output} ({len(tensors)} tensors)", file=sys.stderr)


def add_info(sub) -> None:
    p = sub.add_parser("info", help="show what a .pc file holds: sizes, schemes, bits/weight, bounds",
                       description="Per tensor: shape, scheme, bytes, bits per weight, the information bound "
                                   "log2(n!/prod m_v!) summed over rows, and the ratio to fp32; then totals.")
    p.add_argument("input", help="a .pc file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_info)


def run_info(args) -> None:
    import json

    from .inspection import describe

    info = describe(args.input)
    if args.json:
        print(json.dumps(info, indent=1))
        return
    print(f"{'tensor':<28} {'shape':<18} {'scheme':<13} {'bytes':>10} {'bits/w':>7} {'bound':>7} {'x fp32':>7}")
    for t in info["tensors"]:
        print(f"{t['name']:<28} {str(tuple(t['shape'])):<18} {t['scheme']:<13} {t['bytes']:>10,} "
              f"{_number(t['bits_per_weight'], '.2f'):>7} {_number(t['bound_bits_per_weight'], '.2f'):>7} "
              f"{_number(t['ratio_to_fp32'], '.3f'):>7}")
    tot = info["totals"]
    print(f"{tot['tensors']} tensors, {tot['elements']:,} elements, file {info['file_bytes']:,} bytes "
          f"({_number(tot['ratio_to_fp32'], '.3f')} x fp32, {_number(tot['ratio_to_fp16'], '.3f')} x fp16)")
    if tot["permuted_tensors"]:
        print(f"permuted: {tot['permuted_tensors']} tensors, {tot['permuted_weights']:,} weights, "
              f"{_number(tot['permuted_bits_per_weight'], '.3f')} bits/weight, "
              f"bound {_number(tot['bound_bits_per_weight'], '.3f')} ({_number(tot['ratio_to_bound'], '.4f')} x bound)")
    if info["config"] is not None:
        config = info["config"]
        print("trained: " + (" ".join(f"{key}={value}" for key, value in config.items())
                             if isinstance(config, dict) else json.dumps(config)))
    if info["test_acc"] is not None:
        print(f"test accuracy of the stored weights: {info['test_acc']:.4f}")


def _number(value: float | None, spec: str) -> str:
    """A figure of ``info``, or '-' where it does not exist (an empty tensor has no bits per weight)."""
    return "-" if value is None else format(value, spec)


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check that a .pc file decodes exactly (optionally against a model file)",
                       description="Decode every tensor, checking the header and section checksums and the "
                                   "SHA-256 of each rebuilt tensor; with --against, also compare every tensor's "
                                   "bits to a model.pt or .safetensors file.")
    p.add_argument("input", help="a .pc file")
    p.add_argument("--against", help="model.pt or .safetensors to compare with, bit for bit")
    p.add_argument("--device", default="cpu", help="device to decode on (default cpu)")
    p.set_defaults(run=run_verify)


def run_verify(args) -> None:
    from .devices import checked_device
    from .inspection import verify

    report = verify(args.input, against=args.against, device=checked_device(args.device))
    against = f", bit-identical to {report['against']}" if "against" in report else ""
    print(f"{args.input}: OK, {report['tensors']} tensors, checksums and hashes match{against}")


def add_report(sub) -> None:
    p = sub.add_parser("report", help="pictures of a .pc file: bits by layer, sorted weight profiles, rank "
                                      "displacement, training curves",
                       description="One self-contained HTML page (images embedded, opens offline) with the bits "
                                   "each layer costs beside its bound and fp16, the sorted weight profiles of "
                                   "Qiu & Suda's Fig. 1-2, how far training moved each weight's rank, and the "
                                   "training curves. Needs matplotlib: pip install 'permcodec[plot]'.")
    p.add_argument("input", help="a .pc file")
    p.add_argument("--log", help="the JSON lines 'permcodec train' printed (default: the metrics the file stores)")
    p.add_argument("-o", "--output", help="the HTML file (default MODEL.report.html beside the input; with --png "
                                          "it is written only if given)")
    p.add_argument("--png", metavar="DIR", help="write each figure as DIR/<figure>.png")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=run_report)


def run_report(args) -> None:
    from .plots import write_report

    for path in write_report(args.input, log=args.log, html=args.output, png_dir=args.png, overwrite=args.force):
        print(f"wrote {path}", file=sys.stderr)


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train on the embedded digits, then encode, decode and verify bit for bit",
                       description="The whole path on data that ships with the install (5,000 real MNIST digits "
                                   "that ship with permcodec): train Conv7 by LaPerm, encode model.pt to a .pc "
                                   "file, decode it, and check every tensor's bits and the test accuracy.")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--seed", type=int, default=0, help="init seed (default 0)")
    p.add_argument("--dir", default="permcodec-demo", help="where to write the files (default ./permcodec-demo)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the files of an earlier demo in --dir")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_demo)


def run_demo(args) -> None:
    import json

    from .demo import run_demo as demo

    summary = demo(args.dir, epochs=args.epochs, seed=args.seed, progress=not args.quiet,
                   log=lambda line: print(line, file=sys.stderr), overwrite=args.force)
    print(json.dumps(summary))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="permcodec", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train LaPerm models and store them as an RNG spec plus one permutation per weight row.",
        epilog="start with 'permcodec demo' (train -> encode -> decode -> verify on data that ships with the "
               "install),\nthen 'permcodec COMMAND --help'. The format is defined in specs/format.md and "
               "specs/rng.md.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(sub)
    add_encode(sub)
    add_decode(sub)
    add_info(sub)
    add_verify(sub)
    add_report(sub)
    add_demo(sub)
    return p


def what_an_interrupt_kept(args, started: float) -> str:
    """Outputs are written atomically, so an interrupt leaves none half-written; a run with --save-every may
    have written a resume checkpoint before it."""
    output = getattr(args, "output", None)
    if getattr(args, "save_every", None) and output and os.path.exists(output) \
            and os.path.getmtime(output) >= started:
        return f"{output} holds the checkpoint of the last saved epoch (continue with --resume {output})"
    return "nothing written"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    started = time.time()
    try:
        args.run(args)
    except (PermcodecError, OSError) as err:
        print(f"permcodec {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"permcodec {args.command}: interrupted; {what_an_interrupt_kept(args, started)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
