"""permcodec encode / decode / info / verify from the command line: outputs and one-line errors."""

import errno
import json
import os
import pickle
import struct
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch
from test_codec import make_fixtures, tiny_bytes
from torch import nn

from permcodec import IntegrityError, cli, codec, init_
from permcodec.checkpoints import SAFETENSORS_INIT_KEY
from permcodec.cli import main


def model_and_spec():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))
    spec = init_(model, 3, bias=True)
    make_fixtures.permute_rows(model, spec, 6)
    return model, spec


@pytest.fixture
def model_pt(tmp_path):
    model, spec = model_and_spec()
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "init": spec.to_dict(), "config": {"model": "test"},
                "metrics": []}, path)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, command, *args):
    code, _, err = run(capsys, command, *args)
    assert code == 1
    assert err.startswith(f"permcodec {command}: error: ") and err.count("\n") == 1, err
    return err


def test_encode_decode_verify_info(capsys, model_pt, tmp_path):
    assert run(capsys, "encode", model_pt, "-q")[0] == 0
    pc = tmp_path / "model.pc"
    assert pc.exists()
    assert run(capsys, "decode", pc, "-q")[0] == 0
    decoded = safetensors.torch.load_file(tmp_path / "model.safetensors")
    state = torch.load(model_pt, weights_only=True)["state_dict"]
    assert all(codec.tensor_bytes(decoded[k]) == codec.tensor_bytes(v) for k, v in state.items())
    code, out, _ = run(capsys, "verify", pc, "--against", model_pt)
    assert code == 0 and out.strip().endswith(f"bit-identical to {model_pt}")
    code, out, _ = run(capsys, "info", pc)
    assert code == 0 and "exact" in out and "x bound" in out
    info = json.loads(run(capsys, "info", pc, "--json")[1])
    assert info["totals"]["permuted_tensors"] == 4 and json.loads(
        dict(codec.safe_open(pc).metadata())["permcodec.config"]) == {"model": "test"}


def test_decode_to_pt(capsys, tmp_path):
    (tmp_path / "t.pc").write_bytes(tiny_bytes())
    assert run(capsys, "decode", tmp_path / "t.pc", "-o", tmp_path / "t.pt", "-q")[0] == 0
    checkpoint = torch.load(tmp_path / "t.pt", weights_only=True)  # the permcodec checkpoint layout (issue 12)
    assert set(checkpoint) == {"state_dict", "init", "metadata"} and set(checkpoint["state_dict"]) == {"weight", "bias"}


def test_safetensors_input(capsys, tmp_path):
    model, spec = model_and_spec()
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(model.state_dict(), path, metadata={SAFETENSORS_INIT_KEY: json.dumps(spec.to_dict())})
    assert run(capsys, "encode", path, "-o", tmp_path / "m.pc", "-q")[0] == 0
    assert run(capsys, "verify", tmp_path / "m.pc", "--against", path)[0] == 0


def test_safetensors_without_init(capsys, tmp_path):
    safetensors.torch.save_file({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
    err = one_line_error(capsys, "encode", tmp_path / "m.safetensors")
    assert "has no 'permcodec.init' metadata" in err


def test_raw_fallback_says_so(capsys, tmp_path):
    model, spec = model_and_spec()
    state = model.state_dict()
    state["3.weight"][0, 0] = 9.0
    torch.save({"state_dict": state, "init": spec.to_dict()}, tmp_path / "m.pt")
    err = one_line_error(capsys, "encode", tmp_path / "m.pt", "-q")
    assert "tensor '3.weight': row 0 is not a permutation" in err and not (tmp_path / "m.pc").exists()
    code, _, err = run(capsys, "encode", tmp_path / "m.pt", "-q", "--raw-fallback")
    assert code == 0 and "stored '3.weight' losslessly (raw): row 0 is not a permutation" in err


def test_not_a_pc_file(capsys, tmp_path, model_pt):
    err = one_line_error(capsys, "decode", model_pt, "-o", tmp_path / "out.safetensors")
    assert "not a permcodec file: bad magic" in err
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_file(capsys, tmp_path):
    (tmp_path / "t.pc").write_bytes(tiny_bytes()[:-5])
    assert "truncated file" in one_line_error(capsys, "decode", tmp_path / "t.pc")
    assert not (tmp_path / "t.safetensors").exists()


def test_wrong_version(capsys, tmp_path):
    data = bytearray(tiny_bytes())
    data[8:10] = struct.pack("<H", 9)
    (tmp_path / "t.pc").write_bytes(bytes(data))
    assert "format version 9 is not supported" in one_line_error(capsys, "verify", tmp_path / "t.pc")


def test_model_pt_without_init(capsys, tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "m.pt")
    assert "holds weights without an init spec, so they are not a LaPerm model" in one_line_error(
        capsys, "encode", tmp_path / "m.pt")  # one plain message (issue 12), was "has no 'init' record"


def test_missing_input(capsys, tmp_path):
    assert "no such file" in one_line_error(capsys, "encode", tmp_path / "nope.pt").lower()
    assert "no such file" in one_line_error(capsys, "decode", tmp_path / "nope.pc").lower()


def test_directory_as_input(capsys, tmp_path):
    assert "directory" in one_line_error(capsys, "decode", tmp_path).lower()


def test_bad_output_suffix(capsys, tmp_path):
    (tmp_path / "t.pc").write_bytes(tiny_bytes())
    assert "must end in .safetensors or .pt" in one_line_error(capsys, "decode", tmp_path / "t.pc", "-o",
                                                               tmp_path / "t.npz")


def test_verify_against_a_different_model(capsys, tmp_path, model_pt):
    (tmp_path / "t.pc").write_bytes(tiny_bytes())
    assert "tensor names differ" in one_line_error(capsys, "verify", tmp_path / "t.pc", "--against", model_pt)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_code(capsys, tmp_path):
    marker = tmp_path / "pwned"
    exploit = Exploit()
    exploit.marker = marker
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": {}, "init": exploit}, f)
    err = one_line_error(capsys, "encode", tmp_path / "evil.pt")
    assert "is not a weights-only torch checkpoint" in err
    assert not marker.exists()


def test_existing_output_survives_a_failed_encode(capsys, tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "m.pt")
    (tmp_path / "m.pc").write_bytes(b"old content")
    one_line_error(capsys, "encode", tmp_path / "m.pt")
    assert (tmp_path / "m.pc").read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pc", "m.pt"]


def test_help_explains_each_command():
    for command in ("train", "encode", "decode", "info", "verify", "demo"):
        result = subprocess.run([sys.executable, "-m", "permcodec", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: permcodec " + command in result.stdout


def integer_bits(tensor):
    """The tensor's bytes as an integer tensor: equal iff the bits are equal (-0.0 != 0.0, NaN payloads count)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def assert_same_bits(got, expected):
    assert sorted(got) == sorted(expected)  # safetensors stores names sorted
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(integer_bits(got[name]), integer_bits(tensor)), name


def test_demo_round_trip_is_bit_exact(tmp_path):
    from permcodec.demo import run_demo

    summary = run_demo(tmp_path, epochs=1, steps=3, progress=False, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoded.safetensors", "model.fp32.safetensors",
                                                          "model.pc", "model.pt"]
    # the comparison, done here from the files: decoded weights vs the trained checkpoint and its fp32 copy
    trained = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    decoded = safetensors.torch.load_file(tmp_path / "decoded.safetensors")
    assert len(trained) == 16 and all(t.dtype == torch.float32 for t in trained.values())
    assert_same_bits(decoded, trained)
    assert_same_bits(safetensors.torch.load_file(tmp_path / "model.fp32.safetensors"), trained)
    assert summary["bit_exact"] is True and summary["test_acc_decoded"] == summary["test_acc_trained"]


def test_demo_refuses_a_decode_that_changed_a_bit(tmp_path, monkeypatch):
    from permcodec import demo

    real_load = codec.load

    def load_one_bit_off(*args, **kwargs):
        state = real_load(*args, **kwargs)
        state["layers.9.bias"].view(torch.int32)[5] ^= 1
        return state

    monkeypatch.setattr(codec, "load", load_one_bit_off)
    with pytest.raises(IntegrityError) as err:
        demo.run_demo(tmp_path, epochs=1, steps=1, progress=False, log=lambda line: None)
    assert str(err.value) == "tensor(s) 'layers.9.bias' did not survive the round trip"


def test_demo_comparison_names_every_mismatch():
    from permcodec.demo import mismatched_tensors

    trained = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([float("nan")]), "c": torch.tensor([2.0])}
    assert mismatched_tensors({k: v.clone() for k, v in trained.items()}, trained) == []
    other_nan = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    decoded = {"a": torch.tensor([-0.0, 1.0]), "b": other_nan, "d": torch.tensor([2.0])}
    assert mismatched_tensors(decoded, trained) == ["a", "b", "c", "d"]
    assert mismatched_tensors({**trained, "c": trained["c"].double()}, trained) == ["c"]
    assert mismatched_tensors({**trained, "c": trained["c"].reshape(1, 1)}, trained) == ["c"]


@pytest.mark.parametrize("command", [["train", "--model", "mlp", "--steps", "1", "-q"], ["encode", "MODEL"],
                                     ["decode", "TINY"]])
def test_missing_output_directory_fails_before_any_work(capsys, tmp_path, model_pt, command):
    (tmp_path / "t.pc").write_bytes(tiny_bytes())
    args = [str(model_pt) if a == "MODEL" else str(tmp_path / "t.pc") if a == "TINY" else a for a in command]
    suffix = {"train": "m.pt", "encode": "m.pc", "decode": "m.safetensors"}[command[0]]
    started = time.perf_counter()
    err = one_line_error(capsys, command[0], *args[1:], "-o", tmp_path / "nodir" / suffix)
    assert f"output directory {tmp_path / 'nodir'} does not exist" in err
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("command,output,message", [
    ("train", "m.safetensors", "train writes a torch checkpoint: the output must end in .pt"),
    ("encode", "m.txt", "encode writes a .pc file: the output must end in .pc"),
])
def test_output_suffix_is_checked(capsys, tmp_path, model_pt, command, output, message):
    args = ["--model", "mlp", "--steps", "1"] if command == "train" else [model_pt]
    assert message in one_line_error(capsys, command, *args, "-o", tmp_path / output)


def test_verify_against_plain_weight_files(capsys, tmp_path, model_pt):
    assert run(capsys, "encode", model_pt, "-q")[0] == 0
    pc = tmp_path / "model.pc"
    for out in ("w.safetensors", "w.pt"):
        assert run(capsys, "decode", pc, "-o", tmp_path / out, "-q")[0] == 0
        code, stdout, _ = run(capsys, "verify", pc, "--against", tmp_path / out)
        assert code == 0 and "bit-identical" in stdout


@pytest.mark.parametrize("command", ["decode", "info", "verify", "report"])
def test_a_missing_or_unreadable_input_is_one_plain_line(capsys, tmp_path, command):
    missing, folder = tmp_path / "missing.pc", tmp_path / "folder.pc"
    folder.mkdir()
    assert one_line_error(capsys, command, missing) == \
        f"permcodec {command}: error: no such file or directory: {missing}\n"
    assert one_line_error(capsys, command, folder) == f"permcodec {command}: error: is a directory: {folder}\n"


def test_an_os_error_of_two_paths_names_both():
    failed_rename = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a/.x.pc.tmp", None, "/b/x.pc")
    assert cli.error_line(failed_rename) == "invalid cross-device link: /a/.x.pc.tmp -> /b/x.pc"


def test_a_missing_model_file_reads_alike_in_encode_and_verify(capsys, tmp_path):
    missing = tmp_path / "missing.pt"
    assert one_line_error(capsys, "encode", missing) == \
        f"permcodec encode: error: no such file or directory: {missing}\n"
    pc = tmp_path / "t.pc"
    pc.write_bytes(tiny_bytes())
    assert one_line_error(capsys, "verify", pc, "--against", missing) == \
        f"permcodec verify: error: no such file or directory: {missing}\n"


def test_wrong_kind_of_input_is_named(capsys, tmp_path, model_pt):
    (tmp_path / "t.pc").write_bytes(tiny_bytes())
    assert "is already a .pc file" in one_line_error(capsys, "encode", tmp_path / "t.pc", "-o", tmp_path / "x.pc")
    # without -o the default output is the input itself: the input's problem is named, not "pass -f"
    assert "is already a .pc file" in one_line_error(capsys, "encode", tmp_path / "t.pc")
    assert one_line_error(capsys, "encode", tmp_path) == f"permcodec encode: error: is a directory: {tmp_path}\n"


def test_encode_refuses_an_existing_output_before_reading_the_model(capsys, monkeypatch, tmp_path, model_pt):
    (tmp_path / "model.pc").write_bytes(b"keep")

    def never(*args, **kwargs):
        raise AssertionError("the model was read before the output was checked")

    monkeypatch.setattr("permcodec.checkpoints.read_model", never)
    assert "model.pc already exists; pass -f/--force" in one_line_error(capsys, "encode", model_pt)
    assert (tmp_path / "model.pc").read_bytes() == b"keep"
    assert "it looks like a torch checkpoint" in one_line_error(capsys, "info", model_pt)


def test_decoded_files_respect_the_umask(capsys, tmp_path):
    (tmp_path / "t.pc").write_bytes(tiny_bytes())
    old = os.umask(0o022)
    try:
        assert run(capsys, "decode", tmp_path / "t.pc", "-q")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o644
