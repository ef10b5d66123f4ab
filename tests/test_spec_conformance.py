"""tools/spec_decoder.py was written from specs/ alone (numpy, no torch, no permcodec code).

It must agree bit for bit with permcodec on the golden files and on fresh
encodings of every distribution and layer type: if the spec and the code ever
drift apart, this fails.
"""

import hashlib
import sys
from pathlib import Path

import pytest
from torch import nn

import permcodec
from permcodec import codec, init_

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import make_fixtures  # noqa: E402
import spec_decoder  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def numpy_bytes(array):
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.pc")), ids=lambda p: p.stem)
def test_independent_decoder_reads_the_golden_files(path):
    ours = permcodec.load(path)
    theirs = spec_decoder.decode_file(path)
    assert list(theirs) == list(ours)
    for name, tensor in ours.items():
        assert numpy_bytes(theirs[name]) == codec.tensor_bytes(tensor), name


@pytest.mark.parametrize("dist,kwargs", [
    ("uniform", dict(low=-0.5, high=0.25)), ("normal", dict(mean=1.0, std=0.125)), ("he_uniform", {}),
    ("glorot_uniform", {}), ("he_normal", {}), ("glorot_normal", {}), ("sparse", dict(density=0.2, base="normal")),
    ("shared", dict(value=0.75, density=0.3)), ("levels", dict(num_levels=5, base="glorot_normal")),
    ("he_uniform", dict(block=4)), ("sparse", dict(density=0.5, block=3, block_layout="strided")),
    ("levels", dict(num_levels=3, block=8, block_layout="contiguous")),
])
def test_independent_decoder_agrees_on_fresh_files(tmp_path, dist, kwargs):
    model = nn.Sequential(nn.Conv1d(3, 5, 3), nn.Conv2d(2, 3, 3), nn.Conv3d(1, 2, 2), nn.Linear(33, 7))
    spec = init_(model, 2026, dist=dist, bias=True, **kwargs)
    make_fixtures.permute_blocks(model, spec, seed=11)
    permcodec.save(model, tmp_path / "m.pc", level="max")
    theirs = spec_decoder.decode_file(tmp_path / "m.pc")
    for name, tensor in model.state_dict().items():
        assert hashlib.sha256(numpy_bytes(theirs[name])).digest() == codec.sha256_of(tensor), name


def test_independent_decoder_refuses_a_damaged_file(tmp_path):
    data = bytearray((FIXTURES / "tiny_linear.pc").read_bytes())
    data[-2] ^= 1
    (tmp_path / "bad.pc").write_bytes(bytes(data))
    with pytest.raises(ValueError):
        spec_decoder.decode_file(tmp_path / "bad.pc")
