"""Damaged and hostile files: every bit flip and every truncation is refused, bombs are refused
before allocation, nothing is unpickled, and a killed writer never leaves a partial target."""

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import zstandard
from test_codec import make_fixtures, repack, tiny_bytes
from torch import nn

import permcodec
from permcodec import FormatError, LimitError, PermcodecError, encoder, init_, perm
from permcodec.atomicfile import TEMP_MARK
from permcodec.cli import main
from permcodec.format import container
from permcodec.format.schemes.base import RowsToEncode
from permcodec.format.schemes.delta import encode_delta

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
    records = [encoder.permuted_record("weight", model.weight, spec["weight"], [("delta", {}, b"")]), encoder.raw_record("bias", model.bias)]
    trained = perm.SortedRows.of(perm.as_rows(model.weight.detach()))
    weight = encode_delta(RowsToEncode(trained, encoder.initial_rows(spec["weight"])).delta_codes, 3, 3)
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
    for path in FIXTURES.glob("*.pc"):  # first: numba loads its cached kernels with pickle, which is not file data
        permcodec.load(path)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while decoding")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    for path in FIXTURES.glob("*.pc"):
        permcodec.load(path)


# ---------------------------------------------------------------- interrupted writes

# Run in the child: the CLI, with the byte writers of permcodec's temp files (Path.write_bytes for .pc,
# safetensors.torch.save_file for .safetensors) replaced by one that writes the first half of the real
# bytes, fsyncs, tells the parent "<half> <full>" on stdout and waits to be killed.
KILLED_MID_WRITE_CHILD = """
import os, pathlib, sys, time
import safetensors.torch
from permcodec import cli
from permcodec.cli import main
from permcodec.atomicfile import TEMP_MARK

def write_half_then_wait(path, data):
    assert TEMP_MARK in os.path.basename(path), path
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    print(len(data) // 2, len(data), flush=True)
    time.sleep(600)

real_write_bytes = pathlib.Path.write_bytes
def write_bytes(self, data):
    if TEMP_MARK in self.name:
        write_half_then_wait(str(self), bytes(data))
    return real_write_bytes(self, data)

pathlib.Path.write_bytes = write_bytes
safetensors.torch.save_file = lambda tensors, filename, metadata=None: write_half_then_wait(
    str(filename), safetensors.torch.save(tensors, metadata=metadata))
sys.exit(cli.main(sys.argv[1:]))
"""


def kill_mid_write(args) -> tuple[int, int, int]:
    """Run ``permcodec ARGS`` until it is inside the write of its temp file, then SIGKILL it.

    Returns the child's pid and the (half, full) byte counts of the interrupted write.
    """
    process = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE_CHILD, *args, "-q"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        line = process.stdout.readline()  # blocks until the child is inside the write (or exits)
        assert line, f"the child never reached the write: {process.stderr.read()}"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()
    half, full = map(int, line.split())
    return process.pid, half, full


def temp_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if TEMP_MARK in p.name)


@pytest.mark.slow
@pytest.mark.parametrize("command,old", [("encode", b"old content"), ("decode", None)])
def test_writer_killed_mid_write_leaves_the_old_target_and_a_temp_the_next_write_removes(tmp_path, command, old):
    model = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 8))
    spec = init_(model, 1)
    make_fixtures.permute_rows(model, spec, 1)
    source = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "init": spec.to_dict()}, source)
    if command == "encode":
        # onto an existing file, so -f (without it the CLI refuses to overwrite)
        args, target = ["encode", str(source), "-o", str(tmp_path / "model.pc"), "-f"], tmp_path / "model.pc"
    else:
        permcodec.save(model, tmp_path / "model.pc")
        args, target = ["decode", str(tmp_path / "model.pc"), "-o", str(tmp_path / "out.safetensors")], \
            tmp_path / "out.safetensors"
    if old is not None:
        target.write_bytes(old)

    pid, half, full = kill_mid_write(args)

    # the kill landed mid-write: the writer's temp file holds half of its bytes, the target is untouched
    temp = target.with_name(f".{target.name}{TEMP_MARK}{pid}")
    assert temp_files(tmp_path) == [temp]
    partial = temp.read_bytes()
    assert 0 < len(partial) == half < full
    assert target.read_bytes() == old if old is not None else not target.exists()

    # the next write to the same target removes the dead writer's temp file and completes
    assert main([*args, "-q"]) == 0
    assert temp_files(tmp_path) == []
    written = target.read_bytes()
    assert len(written) == full and written[:half] == partial
    decoded = permcodec.load(target) if command == "encode" else safetensors.torch.load_file(target)
    for name, tensor in model.state_dict().items():
        assert torch.equal(decoded[name].view(torch.int32), tensor.view(torch.int32)), name


def test_writer_dying_half_way_leaves_the_old_target(tmp_path):
    from permcodec.atomicfile import atomic_write

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
    from permcodec.atomicfile import atomic_write_bytes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.pc{TEMP_MARK}{dead.pid}"
    stale.write_bytes(b"partial")
    unrelated = tmp_path / f".other.pc{TEMP_MARK}{dead.pid}"
    unrelated.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "m.pc", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name, "m.pc"]



@pytest.mark.skipif(b"Umask:" not in (Path("/proc/self/status").read_bytes() if Path("/proc/self/status").exists()
                                      else b""), reason="the umask can be read only by setting it here")
def test_writing_a_file_never_clears_the_umask_other_threads_create_files_under(tmp_path, monkeypatch):
    """Reading the umask with os.umask sets it to 0 for a moment: a file another thread creates then is 0666."""
    from permcodec.atomicfile import atomic_write_bytes

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask changed the process's umask"))
        atomic_write_bytes(tmp_path / "m.pc", b"new")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "m.pc").stat().st_mode & 0o777 == 0o640

# ---------------------------------------------------------------- found by tools/fuzz.py

def test_header_map_keys_must_be_strings():
    def bytes_key(header):
        header["tensors"][1][b"shape"] = [2]
    with pytest.raises(FormatError, match="header map key b'shape' is not a string"):
        permcodec.decode(repack(bytes_key))


@pytest.mark.parametrize("field,message", [
    ("dtype", "tensor 'bias': unknown dtype ['float32']"),
    ("kind", "tensor 'bias': kind must be one of permuted, raw, found ['float32']"),
])
def test_unhashable_field_values_are_refused(field, message):
    def as_list(header):
        header["tensors"][1][field] = ["float32"]
    with pytest.raises(FormatError) as err:
        permcodec.decode(repack(as_list))
    assert str(err.value) == message


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
    records = [encoder.permuted_record("weight", model.weight, spec["weight"], [("delta", {}, b"")]), encoder.raw_record("bias", model.bias)]
    bias = encoder.encode_raw(model.bias.detach(), 3)
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

    from permcodec.init import distributions as D

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(permcodec.SpecError, match="parameter 'bound' must be a float32 value, found 1e\\+39"):
            D.validate("he_uniform", {"bound": 1e39}, "t")
