"""permcodec train from the command line: every distribution, k schedules, resume, save-every."""

import json

import pytest
import torch

import permcodec
from permcodec import cli
from permcodec.bits import state_digest
from permcodec.cli import main
from permcodec.train import loop
from permcodec.perm import synced_state_dict

QUICK = ["--model", "mlp", "-q"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("flags,scheme,dist", [
    (["--dist", "sparse", "--density", "0.3"], "sparse", {"dist": "sparse", "density": 0.3}),
    (["--dist", "shared", "--value", "0.05", "--density", "0.08"], "multiset", {"dist": "shared", "value": 0.05}),
    (["--dist", "uniform", "--low", "-0.1", "--high", "0.1"], "exact", {"dist": "uniform", "low": -0.1}),
    (["--dist", "normal", "--mean", "0.0", "--std", "0.05"], "exact", {"dist": "normal", "std": 0.05}),
    (["--dist", "sparse", "--density", "0.5", "--base", "normal", "--std", "0.1"], "sparse", {"dist": "sparse"}),
])
def test_every_distribution_trains_from_the_cli_and_encodes(capsys, tmp_path, flags, scheme, dist):
    assert main(["train", *QUICK, "--steps", "3", *flags, "-o", str(tmp_path / "m.pt")]) == 0
    assert main(["encode", str(tmp_path / "m.pt"), "--level", "fast", "-q"]) == 0
    info = permcodec.describe(tmp_path / "m.pc")
    weight = next(t for t in info["tensors"] if t["kind"] == "permuted")
    assert weight["scheme"] == scheme and weight["init"]["dist"] == dist["dist"]
    stored = weight["init"]["params"] if dist["dist"] != "sparse" or "base" not in flags else weight["init"]["params"]
    for key, value in dist.items():
        if key != "dist":
            assert stored[key] == pytest.approx(value, rel=1e-7)
    if "--base" in flags:
        assert stored["base"]["dist"] == "normal" and stored["base"]["params"]["std"] == pytest.approx(0.1)


@pytest.mark.parametrize("flags,message", [
    (["--dist", "sparse"], "dist='sparse': --density is required"),
    (["--dist", "he_uniform", "--density", "0.3"], "dist='he_uniform': it takes no --density"),
    (["--dist", "shared", "--density", "0.1"], "dist='shared': --value is required"),
    (["--dist", "uniform", "--low", "1", "--high", "0"], "uniform needs low < high"),
    (["--k-schedule", "5-100"], "k schedule must be EPOCH:K pairs separated by commas"),
])
def test_bad_distribution_flags_fail_before_training(capsys, tmp_path, flags, message):
    assert main(["train", *QUICK, *flags, "-o", str(tmp_path / "m.pt")]) == cli.EXIT_ERROR
    assert message in one_line_error(capsys)
    assert not (tmp_path / "m.pt").exists()


def test_dist_lists_its_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dist", "gaussian"])
    assert "choose from 'uniform', 'normal', 'he_uniform'" in capsys.readouterr().err


def test_k_schedule_and_rule_reach_the_run(capsys, tmp_path):
    assert main(["train", *QUICK, "--epochs", "2", "--k-schedule", "2:7", "--k-rule", "global_step",
                 "-o", str(tmp_path / "m.pt")]) == 0
    config = torch.load(tmp_path / "m.pt", weights_only=True)["config"]
    assert config["k_schedule"] == [[2, 7]] and config["k_rule"] == "global_step"


def interrupt_after_saving(monkeypatch, epoch_to_stop: int):
    real = loop.save_resume_point

    def save_then_stop(run, state, epoch, step, path):
        real(run, state, epoch, step, path)
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_resume_point", save_then_stop)


def optimizer_bits(checkpoint: dict) -> dict:
    """Every value of the LaPerm and inner optimizer state, tensors as their bytes."""
    record = checkpoint["resume"]["optimizer"]
    inner = {(index, key): permcodec.codec.tensor_bytes(value) if isinstance(value, torch.Tensor) else value
             for index, state in record["optimizer"]["state"].items() for key, value in state.items()}
    return {**inner, **{key: value for key, value in record.items() if key != "optimizer"}}


def test_an_interrupted_run_resumed_from_its_checkpoint_ends_bit_identical(capsys, monkeypatch, tmp_path):
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    assert main(["train", *QUICK, "--epochs", "3", "--save-every", "1", "-o", str(whole)]) == 0
    with monkeypatch.context() as patch:
        interrupt_after_saving(patch, epoch_to_stop=2)
        assert main(["train", *QUICK, "--epochs", "3", "--save-every", "1", "-o", str(cut)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"permcodec train: interrupted; {cut} holds the checkpoint of the last saved epoch (continue with "
        f"--resume {cut})")
    assert main(["train", *QUICK, "--epochs", "3", "--resume", str(cut), "-o", str(cut)]) == 0
    assert "weights, optimizer, LaPerm and random states" in capsys.readouterr().err
    a, b = (torch.load(p, weights_only=True) for p in (whole, cut))
    assert state_digest(a["state_dict"]) == state_digest(b["state_dict"])
    assert optimizer_bits(a) == optimizer_bits(b)
    assert [m["test_acc"] for m in a["metrics"]] == [m["test_acc"] for m in b["metrics"]]


def test_resume_from_a_pc_file_says_the_optimizer_starts_fresh(capsys, tmp_path):
    assert main(["train", *QUICK, "--epochs", "1", "-o", str(tmp_path / "m.pt")]) == 0
    assert main(["encode", str(tmp_path / "m.pt"), "-q"]) == 0
    capsys.readouterr()
    assert main(["train", *QUICK, "--epochs", "2", "--resume", str(tmp_path / "m.pc"),
                 "-o", str(tmp_path / "more.pt")]) == 0
    out, err = capsys.readouterr()
    assert f"resuming from {tmp_path / 'm.pc'}: its weights and init spec; a .pc file holds no optimizer state, " \
           f"so the optimizer and the random streams start fresh" in err
    epochs = [json.loads(line)["epoch"] for line in out.splitlines() if '"epoch"' in line]
    assert epochs == [2]
    assert permcodec.load_spec(tmp_path / "m.pc") == permcodec.InitSpec.from_dict(
        torch.load(tmp_path / "more.pt", weights_only=True)["init"])


def test_resume_refuses_flags_that_change_the_run(capsys, tmp_path):
    assert main(["train", *QUICK, "--epochs", "1", "-o", str(tmp_path / "m.pt")]) == 0
    capsys.readouterr()
    assert main(["train", *QUICK, "--epochs", "2", "--lr", "0.1", "--resume", str(tmp_path / "m.pt"),
                 "-o", str(tmp_path / "n.pt")]) == cli.EXIT_ERROR
    assert "these flags ask for others: lr=0.1 (the file's run: the default)" in one_line_error(capsys)


def test_encoding_a_mid_run_checkpoint_encodes_its_synced_view_and_says_so(capsys, monkeypatch, tmp_path):
    cut = tmp_path / "cut.pt"
    with monkeypatch.context() as patch:
        interrupt_after_saving(patch, epoch_to_stop=1)
        assert main(["train", *QUICK, "--epochs", "2", "--save-every", "1", "-o", str(cut)]) == 130
    checkpoint = torch.load(cut, weights_only=True)
    assert checkpoint["synced"] is False
    capsys.readouterr()
    assert main(["encode", str(cut), "-o", str(tmp_path / "cut.pc"), "-q"]) == 0
    assert f"{cut} was written mid-run, between two syncs: encoding its synced view" in capsys.readouterr().err
    synced = synced_state_dict(checkpoint["state_dict"], permcodec.InitSpec.from_dict(checkpoint["init"]))
    assert state_digest(permcodec.load(tmp_path / "cut.pc")) == state_digest(synced)
    # verify --against compares with what encode stored, the synced view, and says so
    assert main(["verify", str(tmp_path / "cut.pc"), "--against", str(cut)]) == 0
    assert capsys.readouterr().out == (f"{tmp_path / 'cut.pc'}: OK, {len(synced)} tensors, checksums and hashes "
                                       f"match, bit-identical to {cut}'s synced view (it was written mid-run, "
                                       f"between two syncs)\n")
    with pytest.warns(UserWarning, match="this checkpoint was written mid-run"):
        data = permcodec.encode(checkpoint)
    assert state_digest(permcodec.decode(data)) == state_digest(synced)


@pytest.mark.parametrize("flags, message", [
    (["--dist", "levels"], "dist='levels': --num-levels is required (it must be an integer in [1, 65536])"),
    (["--dist", "he_uniform", "--low", "0.1", "--mean", "0"], "dist='he_uniform': it takes no --low, --mean"),
    (["--dist", "levels", "--num-levels", "0"],
     "dist='levels': --num-levels must be an integer in [1, 65536], found 0"),
])
def test_distribution_flags_are_named_as_flags(capsys, tmp_path, flags, message):
    assert main(["train", *QUICK, "--steps", "1", *flags, "-o", str(tmp_path / "m.pt")]) == cli.EXIT_ERROR
    assert one_line_error(capsys) == f"permcodec train: error: {message}"
    assert not (tmp_path / "m.pt").exists()


def test_resume_takes_flags_that_repeat_part_of_the_files_run(capsys, tmp_path):
    # --density alone is no valid distribution, but with the file's --dist sparse it is the same run
    assert main(["train", *QUICK, "--steps", "2", "--dist", "sparse", "--density", "0.3",
                 "-o", str(tmp_path / "s.pt")]) == 0
    assert main(["train", *QUICK, "--steps", "3", "--density", "0.3", "--resume", str(tmp_path / "s.pt"),
                 "-o", str(tmp_path / "more.pt")]) == 0
    capsys.readouterr()
    assert main(["train", *QUICK, "--steps", "3", "--density", "0.5", "--resume", str(tmp_path / "s.pt"),
                 "-o", str(tmp_path / "other.pt")]) == cli.EXIT_ERROR
    assert "these flags ask for others" in one_line_error(capsys)
