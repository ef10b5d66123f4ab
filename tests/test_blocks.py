"""Block-local permutations and level pools (specs/format.md §7.1, specs/rng.md §6.7-6.8): layouts, sync,
round trips of every layout x size x scheme x level, sizes against the bound, and what a decoder refuses."""

import hashlib
import math
import statistics

import msgpack
import numpy as np
import pytest
import torch
from torch import nn

import permcodec
from permcodec import FormatError, NotAPermutationError, SpecError, perm
from permcodec.format import container, schemes
from permcodec.init import distributions
from permcodec.init.initspec import InitSpec, TensorInit
from permcodec.init.philox import SUBSTREAM_BLOCKS
from permcodec.rows import BlockLayout


def bits(state: dict) -> dict:
    return {name: hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, t in state.items()}


def block_trained(model: nn.Module, spec, seed: int = 0) -> None:
    """Each block of each permuted tensor in a random order: what block-local LaPerm leaves."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for record in spec:
            params[record.name].copy_(perm.pools_of(record).sync(torch.rand(record.shape, generator=generator)))


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize("layout,size,n,groups", [
    ("contiguous", 4, 10, ((2, 4), (1, 2))), ("contiguous", 4, 16, ((4, 4),)), ("contiguous", 3, 7, ((2, 3), (1, 1))),
    ("strided", 4, 10, ((1, 4), (2, 3))), ("strided", 4, 17, ((2, 4), (3, 3))), ("strided", 3, 9, ((3, 3),)),
    ("shuffled", 5, 27, ((3, 5), (3, 4))), ("shuffled", 16, 4, ((1, 4),)), ("contiguous", 1, 6, ((6, 1),)),
    ("strided", 8, 0, ((1, 0),)), ("shuffled", 2, 5, ((2, 2), (1, 1))),
])
def test_runs_of_equal_blocks(layout, size, n, groups):
    assert BlockLayout(layout, size).groups(n) == groups
    assert sum(count * length for count, length in groups) == n


@pytest.mark.parametrize("layout,size,message", [
    ("diagonal", 4, "block layout must be one of contiguous, strided, shuffled, found 'diagonal'"),
    ("strided", 0, "block size must be an integer in [1, 2^31 - 1], found 0"),
    ("strided", True, "block size must be an integer in [1, 2^31 - 1], found True"),
    ("strided", 2**31, "block size must be an integer in [1, 2^31 - 1], found 2147483648"),
])
def test_bad_layouts_are_refused(layout, size, message):
    with pytest.raises(SpecError) as err:
        BlockLayout(layout, size)
    assert str(err.value) == message


def test_strided_blocks_take_every_qth_position():
    order = perm.grouped_order(BlockLayout("strided", 4), 3, 10, seed=0, stream=0, device="cpu")
    assert order.tolist() == [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]  # q = 3 blocks: j mod 3
    assert perm.grouped_order(BlockLayout("contiguous", 4), 3, 10, seed=0, stream=0, device="cpu") is None


def test_shuffled_blocks_are_strided_over_the_philox_order():
    rows, n = 4, 11
    sigma = distributions.row_orders(7, 3, SUBSTREAM_BLOCKS, 0, rows, n, "cpu")
    order = perm.grouped_order(BlockLayout("shuffled", 4), rows, n, seed=7, stream=3, device="cpu")
    q = 3
    expected = [[row[t] for block in range(q) for t in range(block, n, q)] for row in sigma.tolist()]
    assert order.tolist() == expected
    assert all(sorted(row) == list(range(n)) for row in order.tolist())


def test_the_worked_example_of_the_spec():
    """specs/format.md §7.1: Linear(5, 2), seed 11, shuffled blocks of 2."""
    sigma = distributions.row_orders(11, 0, SUBSTREAM_BLOCKS, 0, 2, 5, "cpu")
    assert sigma.tolist() == [[0, 3, 1, 2, 4], [2, 0, 3, 4, 1]]
    order = perm.grouped_order(BlockLayout("shuffled", 2), 2, 5, seed=11, stream=0, device="cpu")
    assert order.tolist() == [[0, 2, 3, 4, 1], [2, 4, 0, 1, 3]]
    with permcodec.safe_open("tests/fixtures/tiny_blocks.pc") as f:
        record = f.record("weight")
        section = f.read_section("weight")
        weight = f.get_tensor("weight")
    assert record["parts"] == [{"scheme": "exact", "scheme_params": {"lanes": 1}, "length": 12},
                               {"scheme": "exact", "scheme_params": {"lanes": 1}, "length": 12}]
    assert section.hex(" ") == "02 00 00 00 13 00 00 00 00 00 00 40 02 00 00 00 01 00 00 00 00 00 00 00"
    assert [f"{v & 0xFFFFFFFF:08x}" for v in weight.view(torch.int32).reshape(-1).tolist()] == [
        "be6a3468", "bea417f2", "3f5e216f", "bf559496", "3e68c7f1",
        "3f0c19c1", "3f57293b", "3e765b13", "bf41b7c4", "3f73cb70"]


def test_split_and_join_are_inverse_and_whole_rows_are_views():
    record = TensorInit("w", (6, 23), 1, 2, "he_uniform", {"bound": 0.5}, BlockLayout("shuffled", 5))
    view = perm.BlockView.of(record)
    rows = torch.arange(6 * 23, dtype=torch.float32).reshape(6, 23)
    parts = view.split(rows)
    assert [tuple(p.shape) for p in parts] == [(6 * 3, 5), (6 * 2, 4)]  # q = 5: 3 blocks of 5, 2 of 4
    assert torch.equal(view.join(parts), rows)
    whole = perm.BlockView.whole_rows(6, 23)
    assert whole.split(rows)[0].data_ptr() == rows.data_ptr()


# ---------------------------------------------------------------- LaPerm within blocks

def block_positions(layout: str, n: int, b: int, philox_order: list[int]) -> list[list[int]]:
    """The positions of each block of a row, written from specs/format.md §7.1 alone."""
    if layout == "contiguous":
        return [list(range(start, min(start + b, n))) for start in range(0, n, b)]
    q = max(1, -(-n // b))
    order = philox_order if layout == "shuffled" else list(range(n))
    return [[order[t] for t in range(block, n, q)] for block in range(q)]


@pytest.mark.parametrize("layout", ["contiguous", "strided", "shuffled"])
def test_laperm_keeps_every_block_a_permutation_of_its_initial_values(layout):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(23, 8), nn.ReLU(), nn.Linear(8, 3))
    spec = permcodec.init_(model, seed=3, block=4, block_layout=layout)
    initial = {record.name: record.regenerate() for record in spec}
    opt = permcodec.LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.05), k=3)
    for _ in range(30):
        opt.zero_grad()
        model(torch.randn(16, 23)).square().mean().backward()
        opt.step()
    params = dict(model.named_parameters())
    for record in spec:
        weight = perm.as_rows(params[record.name].detach())
        start = perm.as_rows(initial[record.name])
        assert not torch.equal(weight, start), record.name  # training moved something
        rows, n = weight.shape
        orders = distributions.row_orders(record.seed, record.stream, SUBSTREAM_BLOCKS, 0, rows, n, "cpu")
        for r in range(rows):  # by the spec's definition of the blocks, not through perm.BlockView
            for positions in block_positions(layout, n, 4, orders[r].tolist()):
                assert torch.equal(torch.sort(weight[r, positions]).values.view(torch.int32),
                                   torch.sort(start[r, positions]).values.view(torch.int32)), (record.name, r)


def test_blocks_of_one_freeze_the_weights():
    model = nn.Linear(6, 4)
    spec = permcodec.init_(model, seed=1, block=1)
    before = model.weight.detach().clone()
    opt = permcodec.LaPerm(model, torch.optim.Adam(model.parameters(), lr=0.5), k=1)
    opt.zero_grad()
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    assert torch.equal(model.weight.detach().view(torch.int32), before.view(torch.int32))
    assert spec["weight"].block == BlockLayout("shuffled", 1)


# ---------------------------------------------------------------- round trips

MODEL_SHAPES = (nn.Conv2d(3, 4, 3), nn.Linear(10, 4), nn.Linear(1, 2), nn.Conv1d(2, 3, 2))


def block_model(layout: str, size: int, dist: str, params: dict) -> tuple[nn.Module, InitSpec]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(10, 4), nn.Linear(1, 2), nn.Conv1d(2, 3, 2))
    spec = permcodec.init_(model, seed=5, dist=dist, block=size, block_layout=layout, **params)
    block_trained(model, spec)
    return model, spec


@pytest.mark.parametrize("layout", ["contiguous", "strided", "shuffled"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 64])  # 64 >= every row: one block, the whole row
@pytest.mark.parametrize("dist,params", [("he_uniform", {}), ("sparse", {"density": 0.4}),
                                         ("levels", {"num_levels": 3})])
def test_every_layout_size_scheme_and_level_round_trips_bit_exactly(layout, size, dist, params):
    model, spec = block_model(layout, size, dist, params)
    expected = bits(model.state_dict())
    for scheme in schemes.SCHEMES:
        assert bits(permcodec.decode(permcodec.encode(model, scheme=scheme))) == expected, scheme
    for level in schemes.LEVELS:
        data = permcodec.encode(model, level=level)
        assert bits(permcodec.decode(data)) == expected, level
        with permcodec.PCFile(data) as f:
            assert f.init_spec() == spec


def test_block_records_carry_the_layout_and_one_part_per_run():
    model, _ = block_model("strided", 4, "he_uniform", {})
    with permcodec.PCFile(permcodec.encode(model, scheme="exact")) as f:
        record = f.record("1.weight")  # n = 10: runs 1 x 4 and 2 x 3
        assert record["block"] == {"layout": "strided", "size": 4}
        assert [part["scheme"] for part in record["parts"]] == ["exact", "exact"]
        assert sum(part["length"] for part in record["parts"]) == record["length"]
        assert "scheme" not in record and "scheme_params" not in record


def test_files_without_blocks_keep_their_record_shape():
    model = nn.Linear(4, 3)
    permcodec.init_(model, seed=2)
    with permcodec.PCFile(permcodec.encode(model)) as f:
        assert {"scheme", "scheme_params"} <= set(f.record("weight"))
        assert "block" not in f.record("weight") and "parts" not in f.record("weight")
    assert "block" not in permcodec.init.modules.attached_spec(model).to_dict()["tensors"][0]


def test_a_value_moved_across_blocks_is_not_a_permutation():
    model = nn.Linear(8, 2, bias=False)
    permcodec.init_(model, seed=4, block=4, block_layout="contiguous")
    with torch.no_grad():
        model.weight[1] = model.weight[1][[4, 1, 2, 3, 0, 5, 6, 7]]  # positions 0 and 4 lie in different blocks
    with pytest.raises(NotAPermutationError, match=r"tensor 'weight': row 1 is not a permutation of its initial "
                                                   r"values \(its values differ from the initial values of that "
                                                   r"row's blocks \(one of them; contiguous blocks of 4\)\)"):
        permcodec.encode(model)


# ---------------------------------------------------------------- size against the bound

def test_block_sections_are_within_1_01_of_the_sum_of_log2_b_factorial():
    """Each part costs a fixed ~16 bytes (its lane header and final state) beside the bound, so the model's
    tensors are of a size where that is well under 1 %."""
    model = nn.Sequential(nn.Linear(512, 128, bias=False), nn.Linear(250, 100, bias=False))
    for size in (4, 16, 64):
        spec = permcodec.init_(model, seed=9, block=size)
        block_trained(model, spec, seed=size)
        bound = stored = 0.0
        with permcodec.PCFile(permcodec.encode(model, level="max")) as f:
            for record in spec:
                runs = record.block.groups(record.shape[1])
                bound += record.shape[0] * sum(count * math.lgamma(length + 1) for count, length in runs) / math.log(2)
                stored += 8 * f.record(record.name)["length"]
        assert bound <= stored <= 1.01 * bound, (size, stored / bound)


@pytest.mark.parametrize("levels", [4, 8, 16])
def test_level_pool_sections_are_within_1_01_of_the_multiset_bound(levels):
    model = nn.Linear(300, 64, bias=False)
    spec = permcodec.init_(model, seed=2, dist="levels", num_levels=levels)
    block_trained(model, spec, seed=levels)
    counts = distributions.level_counts(levels, 300)
    bound = 64 * (math.lgamma(301) - sum(math.lgamma(m + 1) for m in counts)) / math.log(2)
    with permcodec.PCFile(permcodec.encode(model, level="max")) as f:
        record = f.record("weight")
        assert record["scheme"] == "multiset"
        assert bound <= 8 * record["length"] <= 1.01 * bound


# ---------------------------------------------------------------- level pools

def test_level_counts_give_the_first_n_mod_k_values_one_more():
    assert distributions.level_counts(4, 10) == [3, 3, 2, 2]
    assert distributions.level_counts(3, 2) == [1, 1, 0]
    row = distributions.sample("levels", {"values": [-1.0, 0.5, 2.0, 3.0]}, 1, 2, 0, 10, row_length=10)
    assert sorted(row.tolist()) == [-1.0] * 3 + [0.5] * 3 + [2.0] * 2 + [3.0] * 2


def test_level_values_are_the_quantile_midpoints_of_the_base():
    params = distributions.make_params("levels", (2, 6), num_levels=4)  # he_uniform: bound = 1
    assert params == {"values": [-0.75, -0.25, 0.25, 0.75]}
    normal = distributions.make_params("levels", (8, 2), num_levels=3, base="normal", mean=1.0, std=2.0)
    low = statistics.NormalDist(1.0, 2.0).inv_cdf(1 / 6)  # -0.9348...: the quantile 1/6, rounded to f32 below
    assert normal["values"] == [float(np.float32(low)), 1.0, float(np.float32(2.0 - low))]


def test_any_element_range_of_a_level_pool_is_its_slice(monkeypatch):
    params = distributions.make_params("levels", (7, 13), num_levels=5)
    whole = distributions.sample("levels", params, 3, 4, 0, 91, row_length=13)
    monkeypatch.setattr(distributions, "CHUNK_ELEMENTS", 20)  # one row per pass: ranges cross passes
    for start, count in [(0, 91), (5, 30), (13, 13), (90, 1), (40, 0)]:
        part = distributions.sample("levels", params, 3, 4, start, count, row_length=13)
        assert torch.equal(part.view(torch.int32), whole[start:start + count].view(torch.int32))


@pytest.mark.parametrize("params,message", [
    ({"values": []}, "levels values must be a list of 1 to 65536 numbers, found list of 0"),
    ({"values": [0.5, 0.25]}, "levels values must be strictly ascending"),
    ({"values": [0.5, 0.5]}, "levels values must be strictly ascending"),
    ({"values": [-0.0, 1.0]}, "levels values hold -0.0; pools hold +0.0 only"),
    ({"values": [0.1, 1.0]}, "must be a float32 value, found 0.1"),
    ({"values": "0.5"}, "levels values must be a list of 1 to 65536 numbers, found str"),
    ({"values": [1.0], "base": "he_uniform"}, "params must have keys ['values']"),
])
def test_bad_level_params_are_refused(params, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        distributions.validate("levels", params, "tensor 'w'")


def test_levels_needs_num_levels():
    with pytest.raises(SpecError, match=r"argument 'num_levels' must be an integer in \[1, 65536\], found None"):
        distributions.make_params("levels", (2, 2))


# ---------------------------------------------------------------- what a decoder refuses

def edited_record(edit) -> bytes:
    """The block_layouts fixture with its first record edited (CRC recomputed, so the check is reached)."""
    data = open("tests/fixtures/block_layouts.pc", "rb").read()
    header_length = container.PREAMBLE.unpack(data[:container.PREAMBLE_SIZE])[3]
    header = msgpack.unpackb(data[container.PREAMBLE_SIZE:container.PREAMBLE_SIZE + header_length], raw=False)
    edit(header["tensors"][0])
    raw = msgpack.packb(header, use_bin_type=True)
    preamble = container.PREAMBLE.pack(container.MAGIC, 1, 0, len(raw), container.crc32(raw))
    return preamble + raw + data[container.PREAMBLE_SIZE + header_length:]


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(block={"layout": "diagonal", "size": 5}),
     "tensor '0.weight': block layout must be one of contiguous, strided, shuffled, found 'diagonal'"),
    (lambda r: r.update(block={"layout": "shuffled", "size": 0}),
     "tensor '0.weight': block size must be an integer in [1, 2^31 - 1], found 0"),
    (lambda r: r.update(block={"layout": "shuffled"}),
     "tensor '0.weight': block must be a map with keys ['layout', 'size'], found ['layout']"),
    (lambda r: r.update(parts=r["parts"][:1]),
     "tensor '0.weight': parts must be a list of 2 map(s), one per run of equal blocks [(3, 5), (3, 4)], "
     "found a list of 1"),
    (lambda r: r["parts"][0].update(length=r["parts"][0]["length"] + 1),
     "tensor '0.weight': part lengths add up to 37 bytes, the section holds 36"),
    (lambda r: r["parts"][1].update(extra=1),
     "tensor '0.weight' part 1: must be a map with keys ['length', 'scheme', 'scheme_params']"),
    (lambda r: r["parts"][0].update(scheme="zip"),
     "tensor '0.weight' part 0: unknown index scheme 'zip'"),
    (lambda r: r["parts"][0].update(scheme_params={"lanes": 13}),
     "tensor '0.weight' part 0: lanes must be an integer in [1, 12] (the row count), found 13"),
    (lambda r: r.update(scheme="exact"),
     "tensor '0.weight': a permuted record must have keys"),
])
def test_bad_block_records_are_refused_with_a_message_naming_the_field(edit, message):
    with pytest.raises(FormatError) as err:
        permcodec.decode(edited_record(edit))
    assert str(err.value).startswith(message)


def test_a_decoder_without_blocks_would_refuse_by_the_key_set():
    """What a revision 1.0-1.3 decoder checks: a permuted record has exactly init, scheme and scheme_params."""
    def as_old_decoder_sees(record):
        record.pop("block")  # the parts alone are not a record of whole rows either
    with pytest.raises(FormatError, match="a permuted record must have keys .*'scheme', 'scheme_params'.*found"):
        permcodec.decode(edited_record(as_old_decoder_sees))


def test_cli_trains_block_and_level_models_and_info_shows_them(tmp_path, capsys):
    from permcodec.cli import main

    for name, flags in {"b": ["--block", "16"], "l": ["--dist", "levels", "--num-levels", "4", "--block", "8",
                                                     "--block-layout", "strided"]}.items():
        checkpoint, packed = tmp_path / f"{name}.pt", tmp_path / f"{name}.pc"
        assert main(["train", "--model", "mlp", "--steps", "3", "-q", "-o", str(checkpoint), *flags]) == 0
        assert main(["encode", str(checkpoint), "-o", str(packed), "-q"]) == 0
        capsys.readouterr()
        assert main(["info", str(packed)]) == 0
        shown = capsys.readouterr().out
        assert ("shuffled 16" if name == "b" else "strided 8") in shown
    assert main(["train", "--model", "mlp", "--dist", "levels", "--steps", "1", "-q", "-o",
                 str(tmp_path / "x.pt")]) == 1
    assert capsys.readouterr().err == ("permcodec train: error: dist='levels': --num-levels is required (it must be "
                                       "an integer in [1, 65536])\n")


@pytest.mark.parametrize("value", [2**53 + 1, 2**64 - 1, 16777217])
def test_an_integer_param_must_itself_be_a_float32_value(value):
    """The spec asks for the value to be exactly f32; float(value) rounding it to one is not enough."""
    with pytest.raises(SpecError, match=f"parameter 'bound' must be a float32 value, found {value}"):
        distributions.validate("he_uniform", {"bound": value}, "tensor 'w'")
    with pytest.raises(SpecError, match=f"must be a float32 value, found {value}"):
        distributions.validate("levels", {"values": [value]}, "tensor 'w'")


def test_resume_refuses_a_block_setting_the_run_did_not_have(tmp_path):
    from permcodec.resuming import merged_config
    from permcodec.train.config import TrainConfig

    saved = {"model": "mlp", "epochs": 1}  # a run of whole rows, written before blocks existed
    with pytest.raises(SpecError, match=r"these flags ask for others: block=8 \(the file's run: the default\), "
                                        r"block_layout='strided' \(the file's run: 'shuffled'\)"):
        merged_config(saved, TrainConfig(model="mlp", block=8, block_layout="strided"))
    assert merged_config(saved, TrainConfig(model="mlp", epochs=3)).block is None


def test_a_block_layout_needs_a_block_size():
    from permcodec.train.config import TrainConfig, check_config

    with pytest.raises(SpecError, match=r"block_layout 'strided' needs a block size \(--block B\)"):
        check_config(TrainConfig(block_layout="strided"))


def test_training_refuses_blocks_of_one(capsys, tmp_path):
    from permcodec.cli import main
    from permcodec.train.config import TrainConfig, check_config

    with pytest.raises(SpecError, match=r"^block 1 leaves nothing to permute \(each block holds one position"):
        check_config(TrainConfig(block=1))
    assert check_config(TrainConfig(block=2)).block == 2
    assert main(["train", "--model", "mlp", "--steps", "1", "--block", "1", "-o", str(tmp_path / "m.pt")]) == 1
    assert capsys.readouterr().err.startswith("permcodec train: error: block 1 leaves nothing to permute")
    assert not (tmp_path / "m.pt").exists()


def test_0d_records_sample_and_refuse_blocks_and_levels():
    record = TensorInit.from_dict({"name": "s", "shape": [], "seed": 1, "stream": 0, "dist": "uniform",
                                   "params": {"low": 0.0, "high": 1.0}})
    assert record.regenerate().shape == ()
    with pytest.raises(SpecError, match="tensor 's': a 0-D tensor has no rows, so it takes neither blocks nor levels"):
        TensorInit.from_dict({"name": "s", "shape": [], "seed": 1, "stream": 0, "dist": "uniform",
                              "params": {"low": 0.0, "high": 1.0}, "block": {"layout": "strided", "size": 2}})


def test_levels_that_round_to_one_float32_are_refused():
    with pytest.raises(SpecError, match=r"dist='levels': 100 levels of uniform \{'low': 1.0, 'high': "
                                        r"1.000000238418579\} are not distinct in float32; choose fewer levels"):
        distributions.make_params("levels", (2, 2), num_levels=100, base="uniform", low=1.0, high=1.0000002)


def test_sampling_a_level_pool_needs_its_row_length():
    with pytest.raises(SpecError, match=r"^dist='levels' needs the tensor's row_length to sample$"):
        distributions.sample("levels", {"values": [0.5]}, 1, 2, 0, 4)
