"""Damaged and hostile files: every bit flip and every truncation is refused, bombs are refused
before allocation, nothing is unpickled, and a killed writer never leaves a partial target."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zstandard
from torch import nn

import permcodec
from permcodec import FormatError, LimitError, PermcodecError, codec, container, init_, perm, schemes
from permcodec.fileio import TEMP_MARK

from test_codec import make_fixtures, repack, tiny_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_every_single_bit_flip_is_refused():
    original = tiny_bytes()
    decoded_silently = []
    for bit in range(len(original) * 8):
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        try:
            permcodec.decode(bytes(data))
        except PermcodecError:
            continue
        decoded_silently.append(bit)
    assert decoded_silently == [], f"{len(decoded_silently)} flips decoded without error"


def test_truncation_at_every_offset_is_refused():
    original = tiny_bytes()
    for cut in range(len(original)):
        with pytest.raises(FormatError):
            permcodec.decode(original[:cut])


def bomb_section(declared_size: int) -> bytes:
    """A legal zstd frame of `declared_size` zero bytes: kilobytes that expand to anything."""
    return zstandard.ZstdCompressor(level=3).compress(bytes(declared_size))


def test_frame_declaring_more_than_the_header_is_refused_before_decompressing():
    bomb = bomb_section(50_000_000)
    assert len(bomb) < 5000

    def swap_section(header):
        header["tensors"][1].update(length=len(bomb), crc32=container.crc32(bomb))

    data = repack(swap_section)
    data = data[:len(data) - 17] + bomb  # the bias section replaced by the bomb
    with pytest.raises(FormatError, match="zstd frame declares 50000000 bytes, header says 8 bytes"):
        permcodec.decode(data)


def test_frame_without_declared_size_is_refused():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(8))
    model, spec = make_fixtures.tiny_linear()
    records = [codec.permuted_record("weight", model.weight, spec["weight"], "delta", {}), codec.raw_record("bias", model.bias)]
    trained = perm.SortedRows.of(perm.as_rows(model.weight.detach()))
    weight = schemes.encode_delta(trained, codec.initial_rows(spec["weight"]), 3)
    with pytest.raises(FormatError, match="zstd frame declares no size, header says 8 bytes"):
        permcodec.decode(container.pack(records, [weight, frame]))


def test_header_claiming_a_huge_tensor_is_refused_before_allocation():
    def huge(header):
        header["tensors"][1]["shape"] = [2**31 - 1, 2**31 - 1]
    with pytest.raises(LimitError, match="elements exceed the limit"):
        permcodec.decode(repack(huge))


def test_header_length_past_the_end_is_refused():
    data = bytearray(tiny_bytes())
    data[12:16] = (10**6).to_bytes(4, "little")
    with pytest.raises(FormatError, match="header_length 1000000 runs past the end"):
        permcodec.decode(bytes(data))


def test_decoding_never_unpickles(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while decoding")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    for path in FIXTURES.glob("*.pc"):
        permcodec.load(path)


# ---------------------------------------------------------------- interrupted writes

def big_checkpoint(path: Path) -> None:
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 512))
    spec = init_(model, 1)
    make_fixtures.permute_rows(model, spec, 1)
    torch.save({"state_dict": model.state_dict(), "init": spec.to_dict()}, path)


def kill_after(args, delay: float) -> int:
    process = subprocess.Popen([sys.executable, "-m", "permcodec", *args, "-q"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait()


@pytest.mark.slow
def test_killed_encode_and_decode_never_leave_a_partial_target(tmp_path):
    source = tmp_path / "model.pt"
    big_checkpoint(source)
    target, decoded = tmp_path / "model.pc", tmp_path / "out.safetensors"
    target.write_bytes(b"old content")
    decoded.write_bytes(b"old content")
    rng = random.Random(0)
    for _ in range(4):
        kill_after(["encode", str(source), "-o", str(target), "--level", "fast"], rng.uniform(0.5, 4.0))
        content = target.read_bytes()
        assert content == b"old content" or permcodec.decode(content)
        if content != b"old content":
            kill_after(["decode", str(target), "-o", str(decoded)], rng.uniform(0.5, 3.0))
            assert decoded.read_bytes() == b"old content" or len(permcodec.load(target)) == 4
    leftovers = [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]
    # a later run removes the temp files of writers that are gone
    assert subprocess.run([sys.executable, "-m", "permcodec", "encode", str(source), "-o", str(target),
                           "--level", "fast", "-q"]).returncode == 0
    assert [p for p in tmp_path.iterdir() if TEMP_MARK in p.name and p.name.startswith(".model.pc")] == []
    assert all(p.name.startswith((".model.pc", ".out.safetensors")) for p in leftovers)
    assert len(permcodec.load(target)) == 4


def test_writer_dying_half_way_leaves_the_old_target(tmp_path):
    from permcodec.fileio import atomic_write

    target = tmp_path / "m.pc"
    target.write_bytes(b"old content")

    def crash_half_way(temp):
        Path(temp).write_bytes(b"half of a new fi")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash_half_way)
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pc"]


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    from permcodec.fileio import atomic_write_bytes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.pc{TEMP_MARK}{dead.pid}"
    stale.write_bytes(b"partial")
    unrelated = tmp_path / f".other.pc{TEMP_MARK}{dead.pid}"
    unrelated.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "m.pc", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name, "m.pc"]


# ---------------------------------------------------------------- found by tools/fuzz.py

def test_header_map_keys_must_be_strings():
    def bytes_key(header):
        header["tensors"][1][b"shape"] = [2]
    with pytest.raises(FormatError, match="header map key b'shape' is not a string"):
        permcodec.decode(repack(bytes_key))


@pytest.mark.parametrize("field", ["dtype", "kind"])
def test_unhashable_field_values_are_refused(field):
    def as_list(header):
        header["tensors"][1][field] = ["float32"]
    with pytest.raises(FormatError, match=f"{field}"):
        permcodec.decode(repack(as_list))


def test_empty_tensor_with_huge_rows_is_refused_before_allocation():
    def empty_but_wide(header):
        header["tensors"][0]["shape"] = [0, 2**20, 2**20]
    with pytest.raises(LimitError, match=r"1099511627776 elements exceed the limit of 2147483647 \(a zero dimension"):
        permcodec.decode(repack(empty_but_wide))


def test_empty_permuted_tensor_round_trips():
    model = nn.Linear(0, 3)
    spec = init_(model, 0, dist="uniform")
    decoded = permcodec.decode(permcodec.encode(model))
    assert decoded["weight"].shape == (3, 0)


def test_64_bit_integer_params_never_reach_torch():
    """2^63 is an exact float32 value; as a Python int it would overflow torch's int64 scalars."""
    def integer_params(header):
        header["tensors"][0]["init"]["params"] = {"low": -(2**63), "high": 2**63}
        header["tensors"][0]["init"]["dist"] = "uniform"
    with pytest.raises(PermcodecError, match="tensor 'weight': decoded"):
        permcodec.decode(repack(integer_params))


def test_huge_integer_in_a_json_spec():
    from permcodec import InitSpec, SpecError

    d = init_(nn.Linear(2, 2), 0, dist="uniform").to_dict()
    d["tensors"][0]["params"]["low"] = -(10**400)
    with pytest.raises(SpecError, match="parameter 'low' must be finite, found an integer of 1329 bits"):
        InitSpec.from_dict(d)


def test_skippable_zstd_frame_is_refused():
    """python-zstandard reports a skippable frame's payload length as its content size and decodes it to
    nothing, so for an empty tensor it would pass every size check."""
    model = nn.Linear(0, 3)
    spec = init_(model, 0, dist="uniform")
    skippable = b"\x50\x2a\x4d\x18" + (0).to_bytes(4, "little")
    records = [codec.permuted_record("weight", model.weight, spec["weight"], "delta", {}), codec.raw_record("bias", model.bias)]
    bias = codec.encode_raw(model.bias.detach(), 3)
    with pytest.raises(FormatError, match="section does not start with a zstd frame .*skippable frames are not"):
        permcodec.decode(container.pack(records, [skippable, bias]))


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_1(version):
    def odd_version(header):
        header["version"] = version
    with pytest.raises(FormatError, match="header version .* is not supported"):
        permcodec.decode(repack(odd_version))


def test_param_beyond_float32_range_is_refused_without_a_warning():
    import warnings

    from permcodec import distributions as D

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(permcodec.SpecError, match="parameter 'bound' must be a float32 value, found 1e\\+39"):
            D.validate("he_uniform", {"bound": 1e39}, "t")
