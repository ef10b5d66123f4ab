"""Write the golden .pc files under tests/fixtures/ and the SHA-256 of every decoded tensor.

    python tools/make_fixtures.py            # write missing fixtures, add their expectations, check the rest
    python tools/make_fixtures.py --rewrite  # rewrite every fixture and expectation (a scratch checkout only)

The tests decode the committed files on every run and compare with the
SHA-256 values in fixtures.json, so the format can never drift silently. By
default nothing that exists is rewritten: a new fixture gets its file and an
entry holding the hashes of the tensors it was encoded from (the decoder must
agree with them); an existing entry is kept as it is, and if the current
decoder disagrees with it the script prints the difference and exits 1. (Three
of the first five fixtures, sparse_ties, shared_ties and raw_dtypes, were
written before each case seeded torch, so their raw biases differ from what a
rewrite gives; their bytes are still the golden ones.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

from permcodec import codec, init_, perm
from permcodec.format.records import record_parts
from permcodec.init.initspec import InitSpec, TensorInit
from permcodec.init.modules import attach_spec
from permcodec.rows import BlockLayout

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def permute_rows(model: nn.Module, spec, seed: int) -> None:
    """Stand-in for training: a fixed pseudo-random reordering of every row of every permuted tensor."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in spec.names():
            rows = perm.as_rows(params[name].detach())
            keys = torch.rand(rows.shape, generator=generator)
            order = torch.argsort(keys, dim=1)
            params[name].copy_(torch.gather(rows, 1, order).reshape(params[name].shape))


def tiny_linear():
    """The file printed byte by byte in specs/format.md: Linear(3, 2), weight permuted, bias raw."""
    model = nn.Linear(3, 2)
    spec = init_(model, seed=7)
    with torch.no_grad():
        model.weight.copy_(model.weight[:, [2, 0, 1]])
        model.bias.copy_(torch.tensor([0.5, -0.25]))
    return model, spec


def conv_layers():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Conv2d(2, 4, 2), nn.Conv3d(1, 2, 2), nn.Linear(5, 4),
                          nn.BatchNorm1d(4))
    spec = init_(model, seed=2020, dist="glorot_normal", bias=True)
    permute_rows(model, spec, seed=1)
    return model, spec


def sparse_ties():
    model = nn.Sequential(nn.Linear(16, 6), nn.Conv2d(3, 2, 3))
    spec = init_(model, seed=99, dist="sparse", density=0.3)
    permute_rows(model, spec, seed=2)
    return model, spec


def shared_ties():
    model = nn.Sequential(nn.Linear(20, 5))
    spec = init_(model, seed=5, dist="shared", value=-0.5, density=0.5)
    permute_rows(model, spec, seed=3)
    return model, spec


def raw_dtypes():
    """One permuted tensor beside raw tensors of every stored dtype, with -0.0 and a NaN payload."""
    model = nn.Sequential(nn.Linear(4, 3))
    spec = init_(model, seed=11, dist="uniform", low=-1.0, high=1.0)
    permute_rows(model, spec, seed=4)
    state = dict(model.state_dict())
    state["extra.f16"] = torch.tensor([1.5, -0.0, 65504.0], dtype=torch.float16)
    state["extra.bf16"] = torch.tensor([[3.0], [-2.5]], dtype=torch.bfloat16)
    state["extra.f64"] = torch.tensor([1e300, -0.0]).double()
    state["extra.nan"] = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    state["extra.i64"] = torch.tensor([-(2**62), 7])
    state["extra.i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    state["extra.u8"] = torch.arange(5, dtype=torch.uint8)
    state["extra.bool"] = torch.tensor([True, False, True])
    state["extra.empty"] = torch.zeros(0, 3)
    state["extra.scalar"] = torch.tensor(2.0)
    return state, spec


def wide_rows():
    """Rows long enough for several rANS lanes at level fast, and one row of a single element."""
    model = nn.Sequential(nn.Linear(300, 40), nn.Linear(1, 3))
    spec = init_(model, seed=31, dist="he_uniform")
    permute_rows(model, spec, seed=5)
    return model, spec


def permute_blocks(model: nn.Module, spec, seed: int) -> None:
    """Stand-in for block-local training: each block of each permuted tensor in a fixed pseudo-random order
    (a sync of random values: every block then holds exactly its initial values)."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for record in spec:
            noise = torch.rand(record.shape, generator=generator)
            params[record.name].copy_(perm.pools_of(record).sync(noise))


def tiny_blocks():
    """The worked example of specs/format.md Section 7.1: Linear(5, 2) in shuffled blocks of 2."""
    model = nn.Linear(5, 2)
    spec = init_(model, seed=11, block=2)
    permute_blocks(model, spec, seed=3)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.5, -0.25]))
    return model, spec


def init_each(model: nn.Module, seed: int, choices: dict) -> InitSpec:
    """An init spec with its own distribution and block layout per weight: name -> (dist, params, block)."""
    params = dict(model.named_parameters())
    records = [TensorInit(name, tuple(params[name].shape), seed, stream, dist, dist_params, block)
               for stream, (name, (dist, dist_params, block)) in enumerate(choices.items())]
    spec = InitSpec(records)
    with torch.no_grad():
        for record in spec:
            params[record.name].copy_(record.regenerate())
    attach_spec(model, spec)
    return spec


def block_layouts():
    """Every block layout, block sizes that do and do not divide the row, b = 1 and b >= n, dense and tied pools."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(10, 4), nn.Linear(7, 3), nn.Conv1d(2, 3, 2),
                          nn.Linear(6, 2), nn.Linear(9, 5))
    sparse = {"density": 0.5, "keep_below": 1 << 31, "base": {"dist": "he_uniform", "params": {"bound": 0.5}}}
    spec = init_each(model, seed=2026, choices={
        "0.weight": ("he_uniform", {"bound": 0.25}, BlockLayout("shuffled", 5)),     # n 27: 3 x 5, 3 x 4
        "1.weight": ("he_normal", {"std": 0.5}, BlockLayout("strided", 4)),          # n 10: 1 x 4, 2 x 3
        "2.weight": ("glorot_uniform", {"bound": 0.5}, BlockLayout("contiguous", 3)),  # n 7: 2 x 3, 1 x 1
        "3.weight": ("normal", {"mean": 0.0, "std": 1.0}, BlockLayout("shuffled", 16)),  # n 4 <= b: one block
        "4.weight": ("uniform", {"low": -1.0, "high": 1.0}, BlockLayout("contiguous", 1)),  # nothing to code
        "5.weight": ("sparse", sparse, BlockLayout("strided", 3)),                    # n 9: 3 x 3, ties
    })
    permute_blocks(model, spec, seed=4)
    return model, spec


def shuffled_ties():
    """A sparse pool (half zeros) in shuffled blocks of 6: for delta, ties are ranked by the column of the part's
    matrix, not by the position in the tensor row (specs/format.md Section 7.1)."""
    model = nn.Linear(20, 6)
    spec = init_(model, seed=17, dist="sparse", density=0.5, block=6)
    permute_blocks(model, spec, seed=8)
    return model, spec


def level_pools():
    """Level pools: K = 4 over he_uniform on whole rows, K = 3 over he_normal in shuffled blocks of 8."""
    model = nn.Sequential(nn.Linear(12, 3), nn.Conv2d(2, 3, 3))
    spec = init_(model[0], seed=5, dist="levels", num_levels=4)
    other = init_(model[1], seed=6, dist="levels", num_levels=3, base="he_normal", block=8)
    spec = InitSpec([TensorInit("0." + r.name, r.shape, r.seed, r.stream, r.dist, r.params, r.block) for r in spec]
                    + [TensorInit("1." + r.name, r.shape, r.seed, r.stream, r.dist, r.params, r.block)
                       for r in other])
    attach_spec(model, spec)
    permute_blocks(model, spec, seed=6)
    return model, spec


def sparse_scheme_cases():
    """Scheme sparse beyond sparse_sparse's one lane: a sparse pool in 6 lanes (level fast), rows of 8 at density
    0.05 (rows without items), a shared pool (every item the same value: repeated items) and a sparse pool in
    shuffled blocks of 6 (block parts)."""
    model = nn.Sequential(nn.Linear(300, 40), nn.Linear(8, 12), nn.Linear(10, 4), nn.Linear(20, 6))
    layers = [init_(model[0], seed=21, dist="sparse", density=0.3),
              init_(model[1], seed=22, dist="sparse", density=0.05),
              init_(model[2], seed=23, dist="shared", value=0.5, density=0.5),
              init_(model[3], seed=24, dist="sparse", density=0.5, block=6)]
    spec = InitSpec([TensorInit(f"{i}.{r.name}", r.shape, r.seed, r.stream, r.dist, r.params, r.block)
                     for i, layer in enumerate(layers) for r in layer])
    attach_spec(model, spec)
    permute_blocks(model, spec, seed=9)
    return model, spec


def raw_groups():
    """The worked example of specs/format.md Section 6.4: Appendix A's Linear(3, 2), then a BatchNorm1d(2)."""
    linear, _ = tiny_linear()
    model = nn.Sequential(linear, nn.BatchNorm1d(2))
    spec = InitSpec([TensorInit("0." + r.name, r.shape, r.seed, r.stream, r.dist, r.params, r.block)
                     for r in init_(nn.Linear(3, 2), seed=7)])
    attach_spec(model, spec)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 0.5]))
        model[1].bias.copy_(torch.tensor([0.25, -1.0]))
        model[1].running_mean.copy_(torch.tensor([0.0, 2.0]))
        model[1].running_var.copy_(torch.tensor([1.0, 4.0]))
        model[1].num_batches_tracked.fill_(3)
    return model, spec


def grouped_dtypes():
    """Groups of every dtype, interleaved with permuted and raw records: -0.0, NaN payloads, empty and 0-D
    members, a dtype with one small tensor (a raw record), a tensor too large for a group, and small float32
    tensors of 69,632 elements in all (two groups)."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    spec = init_(model, seed=12, dist="uniform", low=-1.0, high=1.0)
    permute_rows(model, spec, seed=7)
    weights = dict(model.state_dict())
    nan32 = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    nan64 = torch.tensor([0x7FF8000000000001], dtype=torch.int64).view(torch.float64)
    state = {
        "f32.nan": nan32, "0.weight": weights["0.weight"], "f16.a": torch.tensor([1.5, -0.0, 65504.0]).half(),
        "0.bias": weights["0.bias"], "f64.a": torch.tensor([1e300, -0.0]).double(),
        "f16.empty": torch.zeros(0, 3).half(),
        "bf16.a": torch.tensor([[3.0], [-2.5]], dtype=torch.bfloat16), "f64.nan": nan64,
        "i64.a": torch.tensor([-(2**62), 7]), "1.weight": weights["1.weight"], "i64.scalar": torch.tensor(3),
        "i32.a": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32), "bf16.scalar": torch.tensor(0.5).bfloat16(),
        "i32.b": torch.tensor([[1, 2, 3]], dtype=torch.int32), "i16.a": torch.tensor([-32768], dtype=torch.int16),
        "i16.b": torch.tensor([32767, 0], dtype=torch.int16), "i8.a": torch.tensor([-128, 127], dtype=torch.int8),
        "i8.b": torch.zeros(0, dtype=torch.int8), "u8.alone": torch.arange(5, dtype=torch.uint8),
        "bool.a": torch.tensor([True, False, True]), "1.bias": weights["1.bias"], "bool.b": torch.tensor(False),
        "f32.scalar": torch.tensor(-0.0), "f16.large": torch.arange(4097).half(),
    }
    for i in range(17):
        state[f"f32.block{i}"] = torch.full((64, 64), float(i))
    return state, spec


# name -> (model builder, encode options). Version 1 files first written with
# scheme "delta" keep it, and the cases before FIRST_WITH_GROUPS (revisions up to
# 1.6) are written without group records. Even so, --rewrite does not reproduce
# every committed file (measured with torch 2.13): sparse_ties, shared_ties and
# raw_dtypes hold raw biases drawn from torch's default generator, which now
# gives other values for them, and level "max" now codes one part of
# block_layouts with scheme "sparse" (revision 1.6). Committed fixtures never
# change: a new case's file is written without --rewrite, and --rewrite belongs in
# a scratch checkout (to see which cases an encoder change moves).
CASES = {
    "tiny_linear": (tiny_linear, {"scheme": "delta"}),
    "conv_layers": (conv_layers, {"scheme": "delta"}),
    "sparse_ties": (sparse_ties, {"scheme": "delta"}),
    "shared_ties": (shared_ties, {"scheme": "delta"}),
    "raw_dtypes": (raw_dtypes, {"scheme": "delta"}),
    "tiny_exact": (tiny_linear, {"scheme": "exact"}),
    "conv_layers_exact": (conv_layers, {"scheme": "exact", "level": "max"}),
    "wide_rows_fast": (wide_rows, {"level": "fast"}),
    "sparse_multiset": (sparse_ties, {"scheme": "multiset"}),
    "shared_multiset": (shared_ties, {"scheme": "multiset", "level": "fast"}),
    # revision 1.4: block-local permutations and level pools
    "tiny_blocks": (tiny_blocks, {"scheme": "exact"}),
    "block_layouts": (block_layouts, {"level": "max"}),
    "block_layouts_delta": (block_layouts, {"scheme": "delta"}),
    "level_pools": (level_pools, {"level": "max"}),
    "shuffled_ties_delta": (shuffled_ties, {"scheme": "delta"}),
    # revision 1.6: scheme sparse
    "sparse_sparse": (sparse_ties, {"scheme": "sparse"}),
    "sparse_scheme_cases": (sparse_scheme_cases, {"scheme": "sparse", "level": "fast"}),
    # revision 1.7: group records
    "raw_groups": (raw_groups, {"scheme": "delta"}),
    "grouped_dtypes": (grouped_dtypes, {"level": "max"}),
}
FIRST_WITH_GROUPS = "raw_groups"


def encode_options(name: str) -> dict:
    """Case ``name``'s encode options, with group records only from revision 1.7's first case on."""
    names = list(CASES)
    return {**CASES[name][1], "raw_groups": names.index(name) >= names.index(FIRST_WITH_GROUPS)}


def digests_of(state: dict) -> dict[str, str]:
    return {name: hashlib.sha256(codec.tensor_bytes(t)).hexdigest() for name, t in state.items()}


def state_of(obj) -> dict:
    return obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)


def differences(expected: dict, found: dict) -> list[str]:
    names = sorted(set(expected) | set(found))
    return [f"{t}: expected {expected.get(t, 'no tensor')}, found {found.get(t, 'no tensor')}"
            for t in names if expected.get(t) != found.get(t)]


def write_fixture(name: str, path: Path) -> dict[str, str]:
    """Encode case ``name`` to ``path``; the hashes of the tensors that went in."""
    torch.manual_seed(0)  # the raw biases come from torch's default generator
    obj, spec = CASES[name][0]()
    codec.save(obj, path, init=spec, **encode_options(name))
    return digests_of(state_of(obj))


def check_case(name: str, stored: dict, rewrite: bool) -> tuple[dict | None, list[str]]:
    """The expectation to store for ``name`` and the problems found (an empty list if none)."""
    path = FIXTURES / f"{name}.pc"
    source = write_fixture(name, path) if rewrite or not path.exists() else None
    decoded = codec.load(path)
    found = digests_of(decoded)
    schemes = sorted({part.scheme for r in codec.safe_open(path).header["tensors"] if r["kind"] == "permuted"
                      for part in record_parts(r)})
    print(f"{path.name}: {path.stat().st_size} bytes, {len(decoded)} tensors, schemes {', '.join(schemes)}")
    if source is not None and found != source:
        return None, [f"{name}: the decoder does not reproduce the encoded tensors"] + differences(source, found)
    if name in stored and not rewrite:
        problems = differences(stored[name], found)
        return stored[name], ([f"{name}: the decoder disagrees with fixtures.json"] + problems) if problems else []
    if source is None:
        print(f"{name}: new entry from the decoder (the file predates its entry; no source tensors to compare)")
    return found, []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rewrite", action="store_true", help="rewrite fixtures and expectations that already exist")
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    table = FIXTURES / "fixtures.json"
    stored = json.loads(table.read_text()) if table.exists() else {}
    digests, problems = dict(stored), []
    for name in CASES:
        expected, found_problems = check_case(name, stored, args.rewrite)
        problems += found_problems
        if expected is not None:
            digests[name] = expected
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print("fixtures.json left unchanged; committed fixtures never change (--rewrite: a scratch checkout only)",
              file=sys.stderr)
        return 1
    if digests != stored:
        table.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        print(f"fixtures.json: {len(set(digests) - set(stored))} entries added"
              + (", existing entries rewritten" if args.rewrite else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
