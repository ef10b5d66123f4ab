"""tools/bench_frontier.py: its smoke run, its quantizer, and how it turns raw lines into the frontier table."""

import json
import sys
from pathlib import Path

import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bench_frontier  # noqa: E402


def test_rtn_rounds_each_channel_to_its_own_grid_and_counts_the_scales():
    weight = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, -1.0, -1.0, -1.0]])
    restored, stored = bench_frontier.rtn(weight, bits=1)  # two levels per channel: its min and its max
    assert restored.tolist() == [[0.0, 0.0, 3.0, 3.0], [-1.0, -1.0, -1.0, -1.0]]
    codes = bytes([0, 0, 1, 1, 0, 0, 0, 0])
    assert stored == len(zstandard.ZstdCompressor(level=19).compress(codes)) + 2 * 8  # min and step per channel
    bias = torch.tensor([0.5, 1.1, 2.0])
    kept, bias_bytes = bench_frontier.rtn(bias, bits=1)  # a 1-D bias stays float32
    assert torch.equal(kept, bias) and bias_bytes == 12
    exact, _ = bench_frontier.rtn(weight, bits=2)  # four levels: 0, 1, 2, 3 exactly
    assert torch.equal(exact[0], weight[0])


def test_frontier_takes_the_best_seed_0_lr_and_the_seeds_run_at_it():
    rows = [{"setting": "a", "seed": 0, "lr": 1e-3, "test_acc": 0.5, "bits_per_weight": 2.0},
            {"setting": "a", "seed": 0, "lr": 1e-2, "test_acc": 0.9, "bits_per_weight": 2.0},
            {"setting": "a", "seed": 1, "lr": 1e-2, "test_acc": 0.8, "bits_per_weight": 2.0},
            {"setting": "a", "seed": 2, "lr": 1e-2, "test_acc": 0.7, "bits_per_weight": 2.0},
            {"setting": "b", "seed": 0, "lr": 1e-3, "test_acc": 0.6, "bits_per_weight": 1.0}]
    table = bench_frontier.frontier(rows)
    assert [row["setting"] for row in table] == ["b", "a"]  # by bits
    a = table[1]
    assert (a["lr"], a["seeds"]) == (1e-2, 3)
    assert abs(a["mean"] - 0.8) < 1e-12 and abs(a["std"] - 0.1) < 1e-12


def test_smoke_run_records_every_setting_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PERMCODEC_NNCODEC_PYTHON", raising=False)  # no NNCodec: its rows are skipped cleanly
    assert bench_frontier.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for path in tmp_path.glob("frontier-mlp-*.jsonl") for line in path.read_text().splitlines()]
    settings = {row["setting"] for row in rows}
    assert {"laperm full row", "laperm block 16", "levels K=8", "sparse density 0.5", "adam fp32", "adam fp16",
            "adam rtn 4-bit + zstd"} <= settings
    assert not any("nncodec" in name for name in settings)
    by_name = {row["setting"]: row for row in rows}
    assert by_name["laperm block 16"]["bound_bits_per_weight"] < 2.8  # log2(16!)/16 = 2.76
    assert by_name["adam fp32"]["bits_per_weight"] == 32.0
    out = capsys.readouterr().out
    assert "| laperm block 16 |" in out and "| adam rtn 2-bit + zstd |" in out
    # a second run finds every run recorded and trains nothing
    assert bench_frontier.main(["--smoke", "--out", str(tmp_path)]) == 0
    again = [line for path in tmp_path.glob("frontier-mlp-*.jsonl") for line in path.read_text().splitlines()]
    assert len(again) == len(rows)
