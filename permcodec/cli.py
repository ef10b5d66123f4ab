"""The permcodec command line. It parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .cli_train import add_train
from .errors import PermcodecError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


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
               "about log2(n!) bits per row), multiset (for pools with repeated values: log2(n!/prod m!)), sparse "
               "(for sparse pools: log2(n!/z!) with z zeros, several times faster to decode than multiset); "
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
    p.add_argument("--no-raw-groups", dest="raw_groups", action="store_false",
                   help="give every raw tensor a record of its own, as files before format revision 1.7 did, so "
                        "that decoders of earlier revisions read the file (default: small raw tensors of one dtype "
                        "share a group record)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_encode)


def run_encode(args) -> None:
    from pathlib import Path

    from . import codec
    from .atomicfile import check_output_path
    from .checkpoints import check_model_file, read_model
    from .encoder import refuse_baseline
    from .inspection import describe, json_value

    check_model_file(args.input)  # what is wrong with the input comes before -f, and before the input is read
    output = check_output_path(Path(args.output) if args.output else Path(args.input).with_suffix(".pc"),
                               (".pc",), "encode writes a .pc file: the output", args.force)
    notes = []
    state, spec, metadata = read_model(args.input, notes)
    for note in notes:
        print(note, file=sys.stderr)
    refuse_baseline(json_value(metadata, "permcodec.config"), args.input, args.raw_fallback)
    fallbacks = []
    codec.save(state, output, init=spec, raw_fallback=args.raw_fallback, level=args.level, scheme=args.scheme,
               metadata=metadata, progress=not args.quiet, fallbacks=fallbacks, raw_groups=args.raw_groups)
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

    from . import decoder, scheduler
    from .decoded_files import check_decode_output, write_decoded

    output = check_decode_output(args.output or Path(args.input).with_suffix(".safetensors"), args.force)
    with decoder.safe_open(args.input, device=args.device, verify=args.verify) as f:
        # numpy rebuilds every tensor a .safetensors output on the CPU needs, so this common case never imports
        # torch (about a second of start-up); .pt files, other devices and bfloat16 tensors go through torch.
        if output.suffix.lower() == ".safetensors" and args.device == "cpu" and f.numpy_holds_all():
            tensors = scheduler.decode_all_arrays(f, progress=not args.quiet)
        else:
            tensors = scheduler.decode_all(f, progress=not args.quiet)
        spec, metadata = f.init_spec(), f.metadata()
    write_decoded(output, tensors, spec, metadata)
    print(f"wrote {output} ({len(tensors)} tensors)", file=sys.stderr)


def add_info(sub) -> None:
    p = sub.add_parser("info", help="show what a .pc file holds: sizes, schemes, bits/weight, bounds",
                       description="Per tensor: shape, scheme, block layout (- for whole rows), bytes, bits per "
                                   "weight, the information bound log2(n!/prod m_v!) summed over rows (or blocks), "
                                   "and the ratio to fp32; then totals.")
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
    print(f"{'tensor':<28} {'shape':<18} {'scheme':<13} {'block':<14} {'bytes':>10} {'bits/w':>7} {'bound':>7} "
          f"{'x fp32':>7}")
    for t in info["tensors"]:
        print(f"{t['name']:<28} {str(tuple(t['shape'])):<18} {t['scheme']:<13} {_block(t['block']):<14} "
              f"{_stored(t):>10} "
              f"{_number(t['bits_per_weight'], '.2f'):>7} {_number(t['bound_bits_per_weight'], '.2f'):>7} "
              f"{_number(t['ratio_to_fp32'], '.3f'):>7}")
    for index, group in enumerate(info["groups"]):
        print(f"group {index}: {len(group['names'])} {group['dtype']} tensors, {group['elements']:,} elements in "
              f"{group['bytes']:,} bytes ({_number(group['bits_per_element'], '.2f')} bits/element)")
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


def _block(block: dict | None) -> str:
    """An info cell: '-' for whole rows, else the layout and size ('shuffled 16')."""
    return "-" if block is None else f"{block['layout']} {block['size']}"


def _stored(tensor: dict) -> str:
    """An info cell: a tensor's bytes, or the group whose bytes hold it."""
    return f"group {tensor['group']}" if tensor["group"] is not None else _number(tensor["bytes"], ",")


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
               "specs/rng.md\nof permcodec's source tree (not part of the installed package).")
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


def error_line(err: Exception) -> str:
    """The error as the one line a user reads: an OSError about a file as 'no such file or directory: PATH', not
    Python's "[Errno 2] No such file or directory: 'PATH'"."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        target = f" -> {err.filename2}" if err.filename2 is not None else ""  # a rename, e.g. across devices
        return f"{err.strerror[:1].lower()}{err.strerror[1:]}: {err.filename}{target}"
    return str(err)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    started = time.time()
    try:
        args.run(args)
    except (PermcodecError, OSError) as err:
        print(f"permcodec {args.command}: error: {error_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"permcodec {args.command}: interrupted; {what_an_interrupt_kept(args, started)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
