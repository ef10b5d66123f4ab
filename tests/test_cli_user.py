"""What a user meets at the command line: no silent overwrites, clean interrupts."""

import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

import permcodec
from permcodec import cli
from permcodec.cli import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def model_file(tmp_path):
    model = nn.Linear(6, 3)
    spec = permcodec.init_(model, seed=2)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "init": spec.to_dict()}, path)
    permcodec.save(model, tmp_path / "model.pc")
    return path


@pytest.mark.parametrize("command,output", [
    ("train", "model.pt"), ("encode", "model.pc"), ("decode", "model.safetensors"), ("decode", "model.pt"),
])
def test_an_existing_output_is_refused_without_force(capsys, tmp_path, model_file, command, output):
    target = tmp_path / output
    target.write_bytes(b"keep me") if not target.exists() else None
    before = target.read_bytes()
    source = {"train": [], "encode": [str(model_file)], "decode": [str(tmp_path / "model.pc")]}[command]
    extra = ["--model", "mlp", "--steps", "1"] if command == "train" else []
    assert main([command, *source, "-o", str(target), "-q", *extra]) == cli.EXIT_ERROR
    assert one_line_error(capsys) == f"permcodec {command}: error: {target} already exists; pass -f/--force " \
                                     f"to overwrite it"
    assert target.read_bytes() == before


def test_force_overwrites(capsys, tmp_path, model_file):
    (tmp_path / "out.safetensors").write_bytes(b"old")
    assert main(["decode", str(tmp_path / "model.pc"), "-o", str(tmp_path / "out.safetensors"), "-f", "-q"]) == 0
    assert permcodec.checkpoints.read_tensors(tmp_path / "out.safetensors").keys() == {"weight", "bias"}


def test_demo_refuses_the_files_of_an_earlier_demo_before_training(capsys, tmp_path):
    (tmp_path / "model.pc").write_bytes(b"earlier demo")
    assert main(["demo", "--dir", str(tmp_path), "-q"]) == cli.EXIT_ERROR
    assert one_line_error(capsys).endswith(f"{tmp_path / 'model.pc'} already exists; pass -f/--force to "
                                           f"overwrite it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pc"]


def test_python_save_overwrites_like_torch_save(tmp_path):
    model = nn.Linear(4, 2)
    permcodec.init_(model, seed=1)
    (tmp_path / "m.pc").write_bytes(b"old")
    permcodec.save(model, tmp_path / "m.pc")
    assert permcodec.load(tmp_path / "m.pc").keys() == {"weight", "bias"}


def test_an_interrupt_prints_one_line_and_exits_130(capsys, monkeypatch, tmp_path, model_file):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(permcodec.codec, "save", interrupted)
    assert main(["encode", str(model_file), "-o", str(tmp_path / "new.pc"), "-q"]) == 130
    assert capsys.readouterr().err == "permcodec encode: interrupted; nothing written\n"
    assert not (tmp_path / "new.pc").exists()


def test_ctrl_c_during_training_exits_130_without_a_traceback(tmp_path):
    output = tmp_path / "run.pt"
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so would the child:
    # it gets the default back, as from a terminal, so that Python installs its Ctrl-C handler.
    process = subprocess.Popen([sys.executable, "-m", "permcodec", "train", "--model", "mlp", "--epochs", "1000",
                                "-o", str(output), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first_epoch = process.stdout.readline()  # a JSON line per epoch: training is under way
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert first_epoch.startswith("{")
    assert process.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "permcodec train: interrupted; nothing written"
    assert not output.exists()


def test_the_demo_ends_by_suggesting_the_report(tmp_path):
    from permcodec.demo import run_demo

    lines = []
    run_demo(tmp_path, epochs=1, steps=3, progress=False, log=lines.append)
    assert lines[-1] == f"pictures of the file: permcodec report {tmp_path / 'model.pc'}"
