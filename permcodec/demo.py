"""The end-to-end job: train on the embedded digits, encode, decode, verify bit for bit.

    permcodec demo                  # Conv7 on the 5,000 MNIST digits shipped with permcodec, 5 epochs
    permcodec demo --epochs 1 --dir /tmp/pc
"""

from __future__ import annotations

import time
from pathlib import Path

from . import codec
from .atomicfile import check_output_path
from .checkpoints import read_model
from .decoded_files import write_tensors
from .errors import IntegrityError
from .inspection import describe, same_bits
from .train.data import get_dataset
from .train.loop import TrainConfig, evaluate, save_checkpoint, train
from .train.models import build_model


def mismatched_tensors(decoded: dict, trained: dict) -> list[str]:
    """Names whose decoded bits differ from the trained ones, or that only one side has."""
    names = list(trained) + [name for name in decoded if name not in trained]
    return [name for name in names
            if name not in decoded or name not in trained or not same_bits(decoded[name], trained[name])]


DEMO_FILES = ("model.pt", "model.pc", "model.fp32.safetensors", "decoded.safetensors")


def run_demo(out_dir, epochs: int = 5, seed: int = 0, progress: bool = True, log=print,
             steps: int | None = None, overwrite: bool = False) -> dict:
    # One function on purpose: the demo's four steps read top to bottom, as the README lists them.
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:  # before training: a demo never overwrites an earlier one unless asked
        check_output_path(out / name, overwrite=overwrite)
    config = TrainConfig(model="conv7", data="mnist5k", epochs=epochs, seed=seed, steps=steps)
    log(f"1/4 train: {config.model} on {config.data}, {epochs} epochs, LaPerm k={config.k}")
    state = train(config, progress=progress, log=lambda record: None)
    trained_acc = state.metrics[-1]["test_acc"]
    save_checkpoint(state, out / "model.pt")

    log("2/4 encode: model.pt -> model.pc")
    started = time.perf_counter()
    _, _, metadata = read_model(out / "model.pt")  # the run's config and metrics, as encode carries them
    codec.save(state.saved_state, out / "model.pc", init=state.spec, progress=progress, metadata=metadata)
    encode_s = time.perf_counter() - started
    write_tensors(out / "model.fp32.safetensors", state.saved_state)

    log("3/4 decode: model.pc -> decoded.safetensors")
    started = time.perf_counter()
    decoded = codec.load(out / "model.pc", progress=progress)
    decode_s = time.perf_counter() - started
    write_tensors(out / "decoded.safetensors", decoded)

    log("4/4 verify: decoded weights vs trained weights, bit for bit")
    mismatched = mismatched_tensors(decoded, state.saved_state)
    if mismatched:
        raise IntegrityError(f"tensor(s) {', '.join(map(repr, mismatched))} did not survive the round trip")
    dataset = get_dataset(config.data)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    codec.load_into(model, out / "model.pc")
    _, decoded_acc = evaluate(model, dataset.test_x, dataset.test_y, "cpu")
    totals = describe(out / "model.pc")["totals"]
    summary = {
        "test_acc_trained": trained_acc, "test_acc_decoded": decoded_acc,
        "pc_bytes": (out / "model.pc").stat().st_size,
        "fp32_safetensors_bytes": (out / "model.fp32.safetensors").stat().st_size,
        "bits_per_weight": totals["permuted_bits_per_weight"], "bound_bits_per_weight": totals["bound_bits_per_weight"],
        "encode_seconds": round(encode_s, 3), "decode_seconds": round(decode_s, 3), "bit_exact": not mismatched,
    }
    log(f"test accuracy {trained_acc:.4f} trained, {decoded_acc:.4f} decoded from model.pc")
    log(f"model.pc {summary['pc_bytes']:,} bytes vs fp32 safetensors {summary['fp32_safetensors_bytes']:,} "
        f"({summary['pc_bytes'] / summary['fp32_safetensors_bytes']:.3f}x); "
        f"{summary['bits_per_weight']:.2f} bits/weight, bound {summary['bound_bits_per_weight']:.2f}")
    log(f"all {len(decoded)} tensors bit-identical after the round trip; files in {out}/")
    log(f"pictures of the file: permcodec report {out / 'model.pc'}")
    return summary
