"""Progress: bars on a terminal that end at 100% without a time estimate; plain lines in logs."""

import io

import torch
from torch import nn

import permcodec
from permcodec.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_tenth_and_one_at_the_end():
    log = io.StringIO()
    bar = progress(1000, "decode", "weights", stream=log)
    for _ in range(40):
        bar.update(25)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split(",")[0] for line in lines] == [f"decode: {p}% (" + f"{p * 10:,} of 1" for p in
                                                      range(10, 100, 10)] + ["decode: 100% (1"]
    assert lines[-1].startswith("decode: 100% (1,000 of 1,000 weights), ")


def test_a_terminal_gets_a_bar_that_ends_at_100_percent_without_an_estimate():
    screen = Terminal()
    bar = progress(326_000, "encode", "weights", stream=screen)
    for _ in range(326):
        bar.update(1000)
    bar.close()
    last = screen.getvalue().split("\r")[-1]
    assert "100%" in last and "326k/326k" in last and "<" not in screen.getvalue()


def test_disabled_prints_nothing():
    log = io.StringIO()
    bar = progress(10, "x", "weights", enabled=False, stream=log)
    bar.update(10)
    bar.close()
    assert log.getvalue() == ""


def test_encode_and_decode_count_the_same_unit(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 5))
    permcodec.init_(model, seed=1)
    permcodec.save(model, tmp_path / "m.pc", progress=True)
    permcodec.load(tmp_path / "m.pc", progress=True)
    lines = capsys.readouterr().err.splitlines()
    total = sum(t.numel() for t in model.state_dict().values())
    assert [line.split(",")[0] for line in lines if "100%" in line] == [
        f"encode: 100% ({total:,} of {total:,} weights)", f"decode: 100% ({total:,} of {total:,} weights)"]
    assert torch.equal(permcodec.load(tmp_path / "m.pc")["0.weight"], model[0].weight.detach())
