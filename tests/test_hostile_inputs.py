"""Files and arguments the user features read, crafted to mislead: each gets a permcodec error, not a crash."""

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

import permcodec
from permcodec import FormatError, SpecError, cli
from permcodec.atomicfile import TEMP_MARK, remove_stale_temps
from permcodec.checkpoints import SAFETENSORS_INIT_KEY, SAFETENSORS_ORDER_KEY, read_model
from permcodec.cli import main
from permcodec.plots.training import epoch_records, sync_steps


def small_model():
    model = nn.Linear(6, 3)
    return model, permcodec.init_(model, seed=4)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_sync_ticks_are_not_sized_by_a_claimed_step_count():
    records = [{"epoch": 1, "step": 10**12, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}]
    assert sync_steps(records, {"k": 1}) is None
    floats = [{**records[0], "step": 10.5}]
    assert epoch_records(floats) == [] and sync_steps(floats, {"k": 1}) is None


@pytest.mark.parametrize("metadata,message", [
    ({"permcodec.config": json.dumps([1, 2])}, "the stored config must be a map of settings, found list"),
    ({"permcodec.config": json.dumps({"k": "x"})}, "the stored config holds a setting this version does not accept"),
    # a run written before blocks of one were refused: it could never move a weight
    ({"permcodec.config": json.dumps({"model": "mlp", "block": 1})}, "does not accept (block 1 leaves nothing to "
                                                                     "permute"),
    ({"permcodec.metrics": json.dumps([{"epoch": 1}])}, "an epoch record needs whole-number epoch and step"),
    ({"permcodec.metrics": json.dumps(5)}, "metrics must be a list of records, found int"),
])
def test_resume_from_a_pc_with_crafted_metadata_is_a_format_error(capsys, tmp_path, metadata, message):
    model, spec = small_model()
    permcodec.save(model, tmp_path / "m.pc", metadata=metadata)
    assert main(["train", "--model", "mlp", "--resume", str(tmp_path / "m.pc"), "-o", str(tmp_path / "x.pt"),
                 "-q"]) == cli.EXIT_ERROR
    assert message in one_line_error(capsys)


def test_resume_from_a_pickle_with_a_class_gets_the_plain_line(capsys, tmp_path):
    torch.save({"state_dict": {}, "init": None, "x": torch.nn.Linear(2, 2)}, tmp_path / "custom.pt")
    assert main(["train", "--resume", str(tmp_path / "custom.pt"), "-o", str(tmp_path / "x.pt"), "-q"]) == 1
    err = one_line_error(capsys)
    assert "its pickle refers to torch.nn.modules.linear.Linear" in err and "\x1b" not in err


def test_encode_with_config_metadata_that_is_not_json_still_encodes(capsys, tmp_path):
    model, spec = small_model()
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                                metadata={SAFETENSORS_INIT_KEY: json.dumps(spec.to_dict()),
                                          "permcodec.config": "{not json"})
    assert main(["encode", str(path), "-q"]) == 0


def test_an_order_key_with_other_types_is_refused(tmp_path):
    model, spec = small_model()
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                                metadata={SAFETENSORS_INIT_KEY: json.dumps(spec.to_dict()),
                                          SAFETENSORS_ORDER_KEY: json.dumps([1, "weight"])})
    with pytest.raises(FormatError, match="metadata 'permcodec.order' must list each tensor of the file once"):
        read_model(path)


def test_a_checkpoint_without_init_is_a_plain_error(tmp_path):
    torch.save({"state_dict": {"a": 1}}, tmp_path / "noinit.pt")
    with pytest.raises(FormatError, match="holds weights without an init spec"):
        read_model(tmp_path / "noinit.pt")
    with pytest.raises(SpecError, match="^no init spec: pass init=..., or a checkpoint with an 'init' record$"):
        permcodec.encode({"state_dict": {"w": torch.zeros(2)}, "synced": False})


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:x", 0, None])
def test_a_bad_device_is_a_spec_error(device):
    path = Path(__file__).parent / "fixtures" / "tiny_linear.pc"
    with pytest.raises(SpecError, match="device must be"):
        permcodec.load(path, device=device)


def test_stale_temp_cleanup_treats_glob_characters_literally(tmp_path):
    live = tmp_path / f".a.pc{TEMP_MARK}{os.getppid()}"  # a live writer of a.pc (our parent process)
    live.write_bytes(b"in progress")
    assert remove_stale_temps(tmp_path / "a*.pc") == [] and live.exists()
