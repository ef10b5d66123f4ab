"""The numpy and torch array paths give the same bits: regeneration, block views, every scheme's decoder, every
fixture; and ``permcodec decode`` to .safetensors runs on numpy alone, with the bytes the torch path writes."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import permcodec
from permcodec import SpecError, arrays, decoder, scheduler
from permcodec.bits import tensor_bytes
from permcodec.decoded_files import write_decoded
from permcodec.format import container
from permcodec.init import distributions as D
from permcodec.init.initspec import TensorInit
from permcodec.perm import BlockView
from permcodec.rows import BlockLayout

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DIGESTS = json.loads((FIXTURES / "fixtures.json").read_text())
TORCH_CPU = arrays.TorchArrays("cpu")

# Edge parameters as well as ordinary ones: subnormal and huge bounds and stds, densities near 0 and 1.
CASES = [
    ("uniform", dict(low=-2.0, high=3.0)), ("uniform", dict(low=1e-40, high=3e-40)),
    ("uniform", dict(low=-3e38, high=3e38)),
    ("normal", dict(mean=0.5, std=2.0)), ("normal", dict(mean=0.0, std=1e-42)), ("normal", dict(mean=1e3, std=1e30)),
    ("he_uniform", {}), ("glorot_uniform", {}), ("he_normal", {}), ("glorot_normal", {}),
    ("sparse", dict(density=0.3, base="he_normal")), ("sparse", dict(density=1e-6)),
    ("sparse", dict(density=0.999999, base="uniform", low=-1.0, high=1.0)),
    ("shared", dict(value=-0.75, density=0.08)), ("shared", dict(value=1e-45, density=1.0)),
    ("levels", dict(num_levels=7)), ("levels", dict(num_levels=300, base="he_normal")),
]
SHAPE = (97, 3, 7, 11)  # 97 rows of 231 (levels fill them unevenly): 22,407 elements, an odd count
ROW = 231


def bits(array) -> bytes:
    return tensor_bytes(array)


@pytest.mark.parametrize("dist,user", CASES, ids=[f"{d}-{i}" for i, (d, _) in enumerate(CASES)])
def test_numpy_and_torch_draw_the_same_bits(dist, user):
    params = D.make_params(dist, SHAPE, **user)
    count = int(np.prod(SHAPE))
    on_numpy = D.sample(dist, params, 2024, 5, 0, count, arrays.NUMPY, row_length=ROW)
    on_torch = D.sample(dist, params, 2024, 5, 0, count, TORCH_CPU, row_length=ROW)
    assert isinstance(on_numpy, np.ndarray) and on_numpy.dtype == np.float32 and isinstance(on_torch, torch.Tensor)
    assert bits(on_numpy) == bits(on_torch)
    # a slice that starts mid-pair and mid-row gives the same bits as the whole
    assert bits(D.sample(dist, params, 2024, 5, 1001, 5000, arrays.NUMPY, row_length=ROW)) == \
        bits(on_torch[1001:6001])


@pytest.mark.parametrize("dist,user", [("normal", dict(std=3.0)), ("sparse", dict(density=0.4)),
                                       ("levels", dict(num_levels=5))])
def test_the_array_philox_on_numpy_gives_the_compiled_bits(monkeypatch, dist, user):
    params = D.make_params(dist, SHAPE, **user)
    compiled = D.sample(dist, params, 3, 9, 17, 20_001, arrays.NUMPY, row_length=ROW)
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    assert bits(D.sample(dist, params, 3, 9, 17, 20_001, arrays.NUMPY, row_length=ROW)) == bits(compiled)


@pytest.mark.parametrize("dist,user", [("he_normal", {}), ("sparse", {"density": 0.3})])
def test_a_large_draw_in_one_compiled_pass_matches_the_chunked_array_path(monkeypatch, dist, user):
    """The compiled kernels draw a tensor past CHUNK_ELEMENTS at once; the array path draws it chunk by chunk."""
    params = D.make_params(dist, (4096, 300), **user)
    count = D.CHUNK_ELEMENTS + 12_345
    # Numba loaded, as a decoder has it by then: else a draw this small stays on the chunked array path.
    assert D.compiled_kernel() is not None and D.compiled_kernel(count // 2 + 1) is not None
    compiled = bits(D.sample(dist, params, 1, 2, 3, count, arrays.NUMPY))
    assert compiled == bits(D.sample(dist, params, 1, 2, 3, count, TORCH_CPU))
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    assert bits(D.sample(dist, params, 1, 2, 3, count, arrays.NUMPY)) == compiled


@pytest.mark.parametrize("layout", ["contiguous", "strided", "shuffled"])
def test_block_views_split_and_join_alike(layout):
    record = TensorInit("w", (6, 50), 4, 1, "he_uniform", D.make_params("he_uniform", (6, 50)),
                        BlockLayout(layout, 8))
    initial = record.regenerate(arrays.NUMPY).reshape(6, 50)
    on_numpy, on_torch = BlockView.of(record, arrays.NUMPY), BlockView.of(record, TORCH_CPU)
    parts = on_numpy.split(initial)
    assert [bits(p) for p in parts] == [bits(p) for p in on_torch.split(torch.from_numpy(initial))]
    assert bits(on_numpy.join(parts)) == bits(initial)


def records_and_sections(name: str):
    """The header records of fixture ``name`` (group records as they are) with their sections."""
    with permcodec.safe_open(FIXTURES / f"{name}.pc") as f:
        return [(record, f._read_at(f._data_start + record["offset"], record["length"]))
                for record in f.header["tensors"]]


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_every_fixture_decodes_alike_on_numpy_and_torch(name):
    """Both paths, each record, against the digests pinned when the fixture was made (a group record's bytes
    are the same on both: each member's against its digest)."""
    for record, section in records_and_sections(name):
        if record["kind"] == "group":
            data, start = decoder.decode_group(record, section, verify=True), 0
            for member, shape in zip(record["names"], record["shapes"]):
                end = start + math.prod(shape) * container.DTYPE_SIZES[record["dtype"]]
                assert hashlib.sha256(data[start:end]).hexdigest() == DIGESTS[name][member]
                start = end
            continue
        on_numpy = decoder.decode_checked(record, section, arrays.NUMPY, verify=True)
        on_torch = decoder.decode_checked(record, section, TORCH_CPU, verify=True)
        if record["kind"] == "raw":
            assert on_numpy == on_torch  # raw records decode to their element bytes, whatever the path
            continue
        assert isinstance(on_numpy, np.ndarray) and isinstance(on_torch, torch.Tensor)
        assert hashlib.sha256(bits(on_numpy)).hexdigest() == DIGESTS[name][record["name"]]
        assert bits(on_numpy) == bits(on_torch)


def test_get_array_gives_each_dtype_as_numpy_and_refuses_bfloat16():
    with permcodec.safe_open(FIXTURES / "raw_dtypes.pc") as f:
        assert not f.numpy_holds_all()
        for name in f.keys():
            if f.record(name)["dtype"] == "bfloat16":
                with pytest.raises(SpecError, match=r"^tensor 'extra.bf16' is bfloat16, which numpy has no dtype "
                                                    r"for; read it as a torch tensor \(get_tensor\)$"):
                    f.get_array(name)
                continue
            array, tensor = f.get_array(name), f.get_tensor(name)
            assert str(array.dtype) == f.record(name)["dtype"] and array.shape == tuple(tensor.shape)
            assert bits(array) == bits(tensor)


def test_get_array_of_a_damaged_tensor_is_an_integrity_error():
    data = bytearray((FIXTURES / "tiny_linear.pc").read_bytes())
    f = permcodec.PCFile(bytes(data))
    record = f.record(f.keys()[0])
    record["sha256"] = bytes(32)  # as if the stored hash disagreed with the rebuilt bits
    with pytest.raises(permcodec.IntegrityError, match="decoded bits do not match the stored SHA-256"):
        f.get_array(f.keys()[0])


def test_numpy_arrays_write_the_safetensors_bytes_of_torch_tensors(tmp_path):
    """Every numpy dtype, 0-D and empty tensors and a non-contiguous view: the same file as from torch."""
    arrays_in = {"a": np.arange(12, dtype=np.float32).reshape(3, 4).T, "scalar": np.array(7, dtype=np.int64),
                 "empty": np.zeros((0, 5), np.float16), "flags": np.array([True, False, True]),
                 "f64": np.linspace(-1, 1, 9), "i8": np.arange(-4, 4, dtype=np.int8)}
    spec = permcodec.InitSpec()
    write_decoded(tmp_path / "np.safetensors", arrays_in, spec, {"k": "v"})
    write_decoded(tmp_path / "pt.safetensors", {k: torch.from_numpy(v.copy()) for k, v in arrays_in.items()}, spec,
                  {"k": "v"})
    assert (tmp_path / "np.safetensors").read_bytes() == (tmp_path / "pt.safetensors").read_bytes()


PROBE = """
import sys
from permcodec.cli import main
code = main(["decode", sys.argv[1], "-o", sys.argv[2], "-q"])
print("exit", code, "torch", "torch" in sys.modules)
"""


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_cli_decode_to_safetensors_without_torch_writes_the_torch_paths_bytes(tmp_path, name):
    out = tmp_path / "cli.safetensors"
    done = subprocess.run([sys.executable, "-c", PROBE, str(FIXTURES / f"{name}.pc"), str(out)],
                          capture_output=True, text=True, timeout=120)
    with permcodec.safe_open(FIXTURES / f"{name}.pc") as f:
        expected = tmp_path / "torch.safetensors"
        write_decoded(expected, scheduler.decode_all(f), f.init_spec(), f.metadata())
        uses_torch = not f.numpy_holds_all()  # bfloat16 tensors go through torch
    assert done.stdout.strip().splitlines()[-1] == f"exit 0 torch {uses_torch}", done.stderr
    assert out.read_bytes() == expected.read_bytes()
