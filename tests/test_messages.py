"""What encode, info and verify tell a person: figures they know, one plain line per problem."""

import json
import os
import pickle
import random

import pytest
import torch
from torch import nn

import permcodec
from permcodec import FormatError, NotAPermutationError
from permcodec.cli import main
from permcodec.inspection import bit_difference
from permcodec.weightsonly import load_weights_only

CONFIG = {"model": "net", "epochs": 2, "keep": "last", "baseline": False}
METRICS = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.75}, {"final": True, "test_acc": 0.75}]


@pytest.fixture
def checkpoint(tmp_path):
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 3))
    spec = permcodec.init_(model, seed=5)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "init": spec.to_dict(), "config": CONFIG, "metrics": METRICS},
               path)
    return path


def test_encode_prints_bits_per_weight_the_bound_and_the_fp16_ratio(capsys, checkpoint, tmp_path):
    assert main(["encode", str(checkpoint), "-q"]) == 0
    err = capsys.readouterr().err
    totals = permcodec.describe(tmp_path / "model.pc")["totals"]
    assert err == (f"wrote {tmp_path / 'model.pc'}: {os.path.getsize(tmp_path / 'model.pc'):,} bytes; permuted "
                   f"weights at {totals['permuted_bits_per_weight']:.3f} bits/weight, {totals['ratio_to_bound']:.4f} "
                   f"x bound; file {totals['ratio_to_fp16']:.3f} x its fp16 size\n")
    assert totals["ratio_to_fp16"] == os.path.getsize(tmp_path / "model.pc") / (2 * (20 * 10 + 10 + 10 * 3 + 3))


def test_info_shows_the_config_the_test_accuracy_and_fp16(capsys, checkpoint, tmp_path):
    assert main(["encode", str(checkpoint), "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "model.pc")]) == 0
    out = capsys.readouterr().out
    assert "trained: model=net epochs=2 keep=last baseline=False\n" in out
    assert "test accuracy of the stored weights: 0.7500\n" in out
    assert " x fp16)" in out


def test_info_json_is_describe_with_every_metadata_value(capsys, checkpoint, tmp_path):
    assert main(["encode", str(checkpoint), "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "model.pc"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads(json.dumps(permcodec.describe(tmp_path / "model.pc")))
    assert info["metadata"] == {"permcodec.config": json.dumps(CONFIG), "permcodec.metrics": json.dumps(METRICS)}
    assert info["config"] == CONFIG and info["test_acc"] == 0.75


def test_the_best_kept_weights_report_the_best_epoch(tmp_path):
    model = nn.Linear(4, 2)
    permcodec.init_(model, seed=1)
    metrics = [{"epoch": 1, "test_acc": 0.9}, {"epoch": 2, "test_acc": 0.6}, {"final": True, "test_acc": 0.6}]
    permcodec.save(model, tmp_path / "m.pc", metadata={"permcodec.config": json.dumps({"keep": "best"}),
                                                        "permcodec.metrics": json.dumps(metrics)})
    assert permcodec.describe(tmp_path / "m.pc")["test_acc"] == 0.9


def test_verify_says_how_many_elements_differ_and_where(capsys, checkpoint, tmp_path):
    assert main(["encode", str(checkpoint), "-q"]) == 0
    changed = torch.load(checkpoint, weights_only=True)
    weight = changed["state_dict"]["1.weight"]
    weight[2, 7] = torch.nextafter(weight[2, 7], torch.tensor(10.0))  # one ulp
    torch.save(changed, tmp_path / "changed.pt")
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "model.pc"), "--against", str(tmp_path / "changed.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"permcodec verify: error: tensor '1.weight' differs from {tmp_path / 'changed.pt'}: 1 of "
                          f"30 elements differ in their bits, the first at index [2, 7] (")


@pytest.mark.parametrize("a,b,expected", [
    (torch.zeros(2), torch.tensor([0.0, -0.0]), "1 of 2 elements differ in their bits, the first at index [1] (0.0 "
                                                 "in the .pc file, -0.0 in the model)"),
    (torch.zeros(2), torch.zeros(3), "shape (2,) in the .pc file, (3,) in the model"),
    (torch.zeros(2), torch.zeros(2, dtype=torch.float16), "dtype torch.float32 in the .pc file, torch.float16 in "
                                                          "the model"),
    (torch.tensor(1.0), torch.tensor(2.0), "1 of 1 elements differ in their bits, the first at index [] (1.0 in "
                                           "the .pc file, 2.0 in the model)"),
    (torch.ones(3), torch.ones(3), None),
])
def test_bit_difference(a, b, expected):
    assert bit_difference(a, b) == expected


class Custom:
    pass


@pytest.mark.parametrize("content, tripped", [
    (b"abc", "IndexError: pop from empty list"), (b"hello\n", "KeyError: 101"),
    (b"J\x01", "error: unpack requires a buffer of 4 bytes")])
def test_a_file_that_trips_the_unpickler_gets_one_plain_line(capsys, tmp_path, content, tripped):
    # torch's weights-only unpickler raises IndexError, KeyError or struct.error on such bytes, not UnpicklingError
    (tmp_path / "junk.pt").write_bytes(content)
    assert main(["encode", str(tmp_path / "junk.pt"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err == (f"permcodec encode: error: {tmp_path / 'junk.pt'} is not a weights-only torch checkpoint: "
                   f"its pickle is malformed ({tripped})\n")
    assert not (tmp_path / "junk.pc").exists()


def test_damaged_pickles_are_format_errors(tmp_path):
    rng = random.Random(0)
    whole = pickle.dumps({"state_dict": {"w": [1.0, 2.0]}, "init": {"seed": 1}}, protocol=4)
    for _ in range(300):
        damaged = bytearray(whole)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        (tmp_path / "damaged.pt").write_bytes(bytes(damaged[:rng.randint(1, len(damaged))]))
        with pytest.raises(FormatError, match="is not a weights-only torch checkpoint"):
            load_weights_only(tmp_path / "damaged.pt")


def test_a_custom_class_in_the_pickle_gets_one_plain_line(capsys, tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Custom()}, tmp_path / "custom.pt")
    assert main(["encode", str(tmp_path / "custom.pt")]) == 1
    err = capsys.readouterr().err
    assert err == (f"permcodec encode: error: {tmp_path / 'custom.pt'} is not a weights-only torch checkpoint: its "
                   f"pickle refers to {__name__}.Custom, which permcodec does not load (only tensors and plain "
                   f"containers, so that no code in a file can run); save the weights instead: torch.save("
                   f"{{'state_dict': model.state_dict(), 'init': spec.to_dict()}}, path)\n")
    assert "\x1b" not in err and "weights_only=False" not in err


@pytest.mark.parametrize("saved", ["state_dict", "checkpoint"])
def test_an_ordinary_model_gets_one_plain_message(capsys, tmp_path, saved):
    model = nn.Linear(3, 2)
    torch.save(model.state_dict() if saved == "state_dict" else {"state_dict": model.state_dict()},
               tmp_path / "plain.pt")
    assert main(["encode", str(tmp_path / "plain.pt")]) == 1
    assert capsys.readouterr().err == (
        f"permcodec encode: error: {tmp_path / 'plain.pt'} holds weights without an init spec, so they are not a "
        f"LaPerm model: permcodec stores networks trained by LaPerm from a permcodec.init_ draw (train one with "
        f"'permcodec train', or in Python call permcodec.init_(model, seed) before training with permcodec.LaPerm)\n")


BASELINE_TAIL = ("was trained with --baseline (the inner optimizer alone, without LaPerm), so its weights are no "
                 "longer permutations of their initial values and permcodec cannot store them as such; train "
                 "without --baseline, or store every tensor losslessly with --raw-fallback (Python: "
                 "raw_fallback=True)")


def baseline_checkpoint(tmp_path):
    model = nn.Linear(6, 4)
    spec = permcodec.init_(model, seed=3)
    with torch.no_grad():
        model.weight.add_(0.01)  # what the inner optimizer alone does
    checkpoint = {"state_dict": model.state_dict(), "init": spec.to_dict(), "config": {"baseline": True}}
    torch.save(checkpoint, tmp_path / "base.pt")
    return checkpoint


def test_a_baseline_checkpoint_gets_one_plain_message(capsys, tmp_path):
    checkpoint = baseline_checkpoint(tmp_path)
    assert main(["encode", str(tmp_path / "base.pt")]) == 1
    assert capsys.readouterr().err == f"permcodec encode: error: {tmp_path / 'base.pt'} {BASELINE_TAIL}\n"
    with pytest.raises(NotAPermutationError) as err:
        permcodec.encode(checkpoint)
    assert str(err.value) == f"this checkpoint {BASELINE_TAIL}"
    assert main(["encode", str(tmp_path / "base.pt"), "--raw-fallback", "-q"]) == 0
    assert len(permcodec.encode(checkpoint, raw_fallback=True)) > 0


def test_other_files_get_plain_format_errors(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(FormatError, match=r"list.pt is not a permcodec checkpoint: it holds a list, not a dict "
                                          r"with 'state_dict' and 'init'$"):
        permcodec.checkpoints.read_model(tmp_path / "list.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(FormatError) as err:
        permcodec.checkpoints.read_model(tmp_path / "raw.pt")
    assert str(err.value).endswith("raw.pt is not a weights-only torch checkpoint: torch cannot read it "
                                   "weights-only (as tensors and plain containers), and permcodec never unpickles "
                                   "anything else")


@pytest.mark.parametrize("damage, message", [
    (lambda ckpt: ckpt["state_dict"].update({"1.bias": [0.0, 1.0, 2.0]}), "its state_dict holds values that are not "
                                                                          "tensors"),
    (lambda ckpt: ckpt.update({"config": ["not", "a", "map"]}), "its config must be a map of settings, found list"),
    (lambda ckpt: ckpt["state_dict"].update({"0.weight": torch.zeros(5, 40)}),
     "tensor '0.weight' is torch.float32 of shape (5, 40), its init record says float32 of shape (10, 20)"),
    (lambda ckpt: ckpt["state_dict"].update({"0.weight": torch.zeros(10, 20, dtype=torch.complex64)}),
     "tensor '0.weight' is torch.complex64 of shape (10, 20), its init record says float32 of shape (10, 20)"),
    # a record that claims a huge tensor: refused by its shape before a sync would draw 4e10 values
    (lambda ckpt: ckpt["init"]["tensors"][0].update({"shape": [400000, 100000]}),
     "tensor '0.weight' is torch.float32 of shape (10, 20), its init record says float32 of shape (400000, 100000)"),
])
def test_a_damaged_mid_run_checkpoint_is_one_plain_line(capsys, checkpoint, tmp_path, damage, message):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["synced"] = False
    damage(ckpt)
    torch.save(ckpt, tmp_path / "cut.pt")
    assert main(["encode", str(checkpoint), "-q"]) == 0
    capsys.readouterr()
    for argv in (["encode", str(tmp_path / "cut.pt"), "-q"], ["verify", str(tmp_path / "model.pc"), "--against",
                                                              str(tmp_path / "cut.pt")]):
        assert main(argv) == 1
        assert capsys.readouterr().err == f"permcodec {argv[0]}: error: {tmp_path / 'cut.pt'}: {message}\n"
    assert not (tmp_path / "cut.pc").exists()


def test_running_out_of_memory_while_loading_a_checkpoint_says_so(monkeypatch, tmp_path):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory")

    (tmp_path / "big.pt").write_bytes(b"whatever")
    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(permcodec.MemoryLimitError) as err:
        load_weights_only(tmp_path / "big.pt")
    assert str(err.value) == f"{tmp_path / 'big.pt'}: not enough memory to load it (RuntimeError)"
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: open(tmp_path / "missing.pt", "rb"))
    with pytest.raises(FileNotFoundError):  # a file that cannot be read is not a statement about its bytes
        load_weights_only(tmp_path / "big.pt")
