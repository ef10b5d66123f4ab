"""Group records (specs/format.md Section 6.4, revision 1.7): small raw tensors of one dtype in one section.

The worked example's bytes come from the spec; every hostile file is
raw_groups.pc with its header edited and the header CRC valid, so only the
rule under test can refuse it.
"""

import hashlib
import json
import re
import struct
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

import permcodec
from permcodec import (FormatError, IntegrityError, LimitError, MemoryLimitError, SpecError, cli, decoder,
                       raw_decoding, scheduler)
from permcodec.format import container, groups
from permcodec.format.container import Limits
from permcodec.format.schemes import RAW_CODEC
from permcodec.inspection import describe
from permcodec.init.initspec import InitSpec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import make_fixtures  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = (FIXTURES / "raw_groups.pc").read_bytes()
HEADER_LENGTH = struct.unpack_from("<I", EXAMPLE, 12)[0]
DATA_AREA = EXAMPLE[20 + HEADER_LENGTH:]
ORDER = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]


def header() -> dict:
    return msgpack.unpackb(EXAMPLE[20:20 + HEADER_LENGTH], raw=False)


def file_with(header_map: dict, data_area: bytes = DATA_AREA) -> bytes:
    header_bytes = msgpack.packb(header_map, use_bin_type=True)
    preamble = container.PREAMBLE.pack(container.MAGIC, 1, 0, len(header_bytes), zlib.crc32(header_bytes))
    return preamble + header_bytes + data_area


def edited(edit) -> bytes:
    header_map = header()
    edit(header_map["tensors"][1])
    return file_with(header_map)


def refused(data: bytes, error=FormatError, limits: Limits | None = None) -> str:
    with pytest.raises(error) as caught:
        permcodec.PCFile(data, limits=limits)
    return str(caught.value)


def tensor_bits(tensor) -> tuple:
    array = tensor.numpy() if isinstance(tensor, torch.Tensor) and tensor.dtype != torch.bfloat16 else tensor
    if isinstance(array, torch.Tensor):  # bfloat16: its bits as int16
        return "bfloat16", tuple(array.shape), array.contiguous().view(torch.int16).numpy().tobytes()
    return array.dtype.str, array.shape, np.ascontiguousarray(array).tobytes()


def same_bits(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(tensor_bits(a[name]) == tensor_bits(b[name]) for name in a)


# ---------------------------------------------------------------- the worked example (specs/format.md 6.4)

def test_the_worked_example_is_the_spec_s():
    f = permcodec.PCFile(EXAMPLE)
    assert len(EXAMPLE) == 707
    assert f.keys() == ORDER
    group = f.header["tensors"][1]
    assert (group["names"], group["positions"], group["offset"], group["length"], group["crc32"]) == \
        (ORDER[1:6], [1, 2, 3, 4, 5], 15, 35, 71127282)
    elements = struct.pack("<10I", 0x3F000000, 0xBE800000, 0x3F800000, 0x3F000000, 0x3E800000, 0xBF800000,
                           0x00000000, 0x40000000, 0x3F800000, 0x40800000)
    assert group["sha256"] == hashlib.sha256(elements).digest() == bytes.fromhex(
        "de7fcbfd374ff16c52878be6264cccfbc0080d4680d1e83c47f043fa5216d185")
    assert DATA_AREA[15:50] == bytes.fromhex("28b52ffd2028d50000a000808000808000008080"
                                             "3fbe3f3f3ebf00403f4001003410 02".replace(" ", ""))
    decoded = permcodec.decode(EXAMPLE)
    assert b"".join(decoded[name].numpy().tobytes() for name in ORDER[1:6]) == elements
    assert decoded["1.num_batches_tracked"].dtype == torch.int64 and int(decoded["1.num_batches_tracked"]) == 3


def test_the_tensor_order_puts_members_at_their_positions_and_records_in_the_slots_left():
    records = [{"kind": "raw", "name": "r0"}, {"kind": "group", "names": ["a", "b"], "shapes": [[1], [2]],
                                               "positions": [3, 0], "dtype": "int8", "codec": "shuffle-zstd"},
               {"kind": "raw", "name": "r1"}, {"kind": "group", "names": ["c"], "shapes": [[]], "positions": [2],
                                               "dtype": "int8", "codec": "shuffle-zstd"}]
    ordered = groups.tensor_records(records)
    assert [r["name"] for r in ordered] == ["b", "r0", "c", "a", "r1"]
    assert [(r["group"], r["start"]) for r in ordered if "group" in r] == [(1, 1), (3, 0), (1, 0)]


# ---------------------------------------------------------------- round trips

def grouped_state():
    torch.manual_seed(0)
    return make_fixtures.grouped_dtypes()


def test_every_dtype_round_trips_through_groups_in_order_by_every_entry_point():
    state, spec = grouped_state()
    data = permcodec.encode(state, spec)
    f = permcodec.PCFile(data)
    kinds = [r["kind"] for r in f.header["tensors"]]
    assert kinds.count("group") == 10 and f.keys() == list(state)
    assert same_bits(permcodec.decode(data), state)
    assert same_bits({name: f.get_tensor(name) for name in f.keys()}, state)
    numpy_held = {name: t for name, t in state.items() if t.dtype != torch.bfloat16}
    arrays = {name: f.get_array(name) for name in numpy_held}
    assert same_bits(arrays, {name: t.numpy() for name, t in numpy_held.items()})
    with pytest.raises(SpecError, match="tensor 'bf16.a' is bfloat16, which numpy has no dtype for"):
        f.get_array("bf16.a")


def test_the_committed_fixture_decodes_to_its_source_tensors():
    state, _ = grouped_state()
    assert same_bits(permcodec.load(FIXTURES / "grouped_dtypes.pc"), state)


def test_members_of_one_group_are_views_of_one_buffer_without_overlap():
    state, spec = grouped_state()
    decoded = permcodec.decode(permcodec.encode(state, spec))
    members = [decoded[name] for name in ("f32.nan", "0.bias", "1.bias", "f32.scalar", "f32.block0")]
    assert all(t.numpy().flags.writeable for t in members)
    arrays = [t.numpy() for t in members]
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])
    members[0].fill_(1.0)
    assert decoded["0.bias"].equal(state["0.bias"])


def test_without_groups_every_raw_tensor_has_its_record_and_the_bits_are_the_same():
    state, spec = grouped_state()
    data = permcodec.encode(state, spec, raw_groups=False)
    f = permcodec.PCFile(data)
    assert "group" not in [r["kind"] for r in f.header["tensors"]]
    assert same_bits(permcodec.decode(data), state)
    assert len(data) > len(permcodec.encode(state, spec))


def test_a_fixture_of_an_earlier_revision_is_rewritten_byte_for_byte(tmp_path):
    """make_fixtures writes the files of revisions before 1.7 without groups, so a rewrite reproduces them."""
    make_fixtures.write_fixture("wide_rows_fast", tmp_path / "w.pc")
    assert (tmp_path / "w.pc").read_bytes() == (FIXTURES / "wide_rows_fast.pc").read_bytes()


def test_the_cli_writes_groups_unless_asked_not_to(tmp_path, capsys):
    model, spec = make_fixtures.raw_groups()
    torch.save({"state_dict": model.state_dict(), "init": spec.to_dict()}, tmp_path / "m.pt")
    assert cli.main(["encode", str(tmp_path / "m.pt"), "-q"]) == 0
    assert cli.main(["encode", str(tmp_path / "m.pt"), "-q", "-o", str(tmp_path / "old.pc"), "--no-raw-groups"]) == 0
    kinds = {path: [r["kind"] for r in permcodec.safe_open(tmp_path / path).header["tensors"]]
             for path in ("m.pc", "old.pc")}
    assert kinds == {"m.pc": ["permuted", "group", "raw"], "old.pc": ["permuted"] + ["raw"] * 6}
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "m.pc")]) == 0
    out = capsys.readouterr().out
    assert "1.running_mean               (2,)               shuffle-zstd  -                 group 0" in out
    assert "group 0: 5 float32 tensors, 10 elements in 35 bytes (28.00 bits/element)" in out
    assert "7 tensors, 17 elements" in out


def test_info_json_gives_each_member_its_group_and_each_group_its_bytes():
    info = describe(FIXTURES / "raw_groups.pc")
    by_name = {t["name"]: t for t in info["tensors"]}
    assert [t["name"] for t in info["tensors"]] == ORDER
    assert (by_name["1.bias"]["group"], by_name["1.bias"]["bytes"], by_name["1.bias"]["bits_per_weight"]) == \
        (0, None, None)
    assert by_name["1.num_batches_tracked"]["group"] is None and by_name["1.num_batches_tracked"]["bytes"] == 17
    assert info["groups"] == [{"dtype": "float32", "names": ORDER[1:6], "elements": 10, "bytes": 35,
                               "bits_per_element": 28.0}]
    json.dumps(info, default=lambda value: value.hex())


# ---------------------------------------------------------------- the encoder's rule (informative, 6.4)

def test_the_encoder_groups_small_tensors_by_dtype_in_file_order():
    raw = [("a", "float32", 3), ("n", "int64", 1), ("b", "float32", 4096), ("big", "float32", 4097),
           ("c", "float32", 0), ("h", "float16", 2)]
    assert groups.plan_groups(raw) == [["a", "b", "c"]]  # int64 and float16 have one each; 4,097 is too large


def test_a_group_holds_65536_elements_at_most_and_two_tensors_at_least():
    at_limit = [(f"t{i}", "float32", 4096) for i in range(16)]
    names = [name for name, _, _ in at_limit]
    assert groups.plan_groups(at_limit) == [names]
    assert groups.plan_groups(at_limit + [("one_more", "float32", 1)]) == [names]  # alone: a raw record
    assert groups.plan_groups(at_limit + [("a", "float32", 1), ("b", "float32", 2)]) == [names, ["a", "b"]]


# ---------------------------------------------------------------- what a decoder must reject (6.4)

def test_the_unedited_example_reencoded_by_msgpack_decodes():
    assert same_bits(permcodec.decode(edited(lambda g: None)), permcodec.decode(EXAMPLE))


@pytest.mark.parametrize("edit,message", [
    (lambda g: g.update(name="x"), "tensor record 1: a group record must have keys ['codec', 'crc32', 'dtype', "
                                   "'kind', 'length', 'names', 'offset', 'positions', 'sha256', 'shapes'], found"),
    (lambda g: g.pop("positions"), "tensor record 1: a group record must have keys"),
    (lambda g: g.update(names=[], shapes=[], positions=[]),
     "a group's names, shapes and positions must be lists of one entry per member, at least one, found a list "
     "of 0, a list of 0 and a list of 0"),
    (lambda g: g["shapes"].pop(), "found a list of 5, a list of 4 and a list of 5"),
    (lambda g: g.update(positions=7), "found a list of 5, a list of 5 and int"),
    (lambda g: g["names"].__setitem__(2, ""), "tensor record 1: a group's names must be non-empty strings, found ''"),
    (lambda g: g["names"].__setitem__(2, 5), "a group's names must be non-empty strings, found 5"),
    (lambda g: g.update(dtype="float8"), "group of 5 raw tensors from '0.bias': unknown dtype 'float8'"),
    (lambda g: g.update(codec="gzip"), "group of 5 raw tensors from '0.bias': unknown raw codec 'gzip'"),
    (lambda g: g.update(crc32=-1), "group of 5 raw tensors from '0.bias': crc32 must be a 32-bit unsigned integer"),
    (lambda g: g["shapes"].__setitem__(1, [-2]), "tensor '1.weight': shape must be a list of non-negative integers"),
    (lambda g: g["positions"].__setitem__(0, 1.0), "tensor '0.bias': position must be a non-negative integer, "
                                                   "found 1.0"),
    (lambda g: g["positions"].__setitem__(0, True), "tensor '0.bias': position must be a non-negative integer"),
    (lambda g: g["positions"].__setitem__(0, -1), "tensor '0.bias': position must be a non-negative integer"),
    (lambda g: g["positions"].__setitem__(4, 7), "tensor '1.running_var': position 7 is past the file's 7 tensors"),
    (lambda g: g["positions"].__setitem__(4, 1), "tensor '1.running_var': position 1 is another member's"),
    (lambda g: g["names"].__setitem__(4, "0.bias"), "tensor name '0.bias' appears twice"),
    (lambda g: g["names"].__setitem__(4, "0.weight"), "tensor name '0.weight' appears twice"),
    (lambda g: g["names"].__setitem__(4, "1.num_batches_tracked"), "tensor name '1.num_batches_tracked' appears twice"),
])
def test_a_malformed_group_record_is_refused_at_open(edit, message):
    assert message in refused(edited(edit))


def test_positions_are_checked_across_groups():
    def two_groups(header_map):
        group = header_map["tensors"][1]
        first = {**group, "names": group["names"][:2], "shapes": group["shapes"][:2], "positions": [1, 2]}
        second = {**group, "names": group["names"][2:], "shapes": group["shapes"][2:], "positions": [3, 4, 2]}
        header_map["tensors"][1:2] = [first, {**second, "offset": 15 + 35, "length": 0}]
        header_map["tensors"][3]["offset"] = 50
    header_map = header()
    two_groups(header_map)
    assert "tensor '1.running_var': position 2 is another member's" in refused(file_with(header_map))


def test_the_members_count_toward_the_tensor_limit_in_a_pair():
    assert permcodec.PCFile(EXAMPLE, limits=Limits(max_tensors=7)).keys() == ORDER
    assert refused(EXAMPLE, LimitError, Limits(max_tensors=6)) == \
        "the groups' members bring the tensors past the limit of 6"


def test_a_group_s_elements_are_held_to_the_per_tensor_limit_in_a_pair():
    assert permcodec.PCFile(EXAMPLE, limits=Limits(max_tensor_elements=10)).keys() == ORDER
    assert refused(EXAMPLE, LimitError, Limits(max_tensor_elements=9)) == \
        "group of 5 raw tensors from '0.bias': 10 elements exceed the limit of 9 (a group decodes as one array)"


def test_a_group_holding_no_elements_decodes():
    empty = file_with({**header(), "tensors": [{"kind": "group", "dtype": "float32", "names": ["a", "b"],
                                                "shapes": [[0, 2**31 - 1], [0]], "positions": [1, 0],
                                                "codec": "shuffle-zstd", "offset": 0, "length": 9,
                                                "crc32": zlib.crc32(bytes.fromhex("28b52ffd2000010000")),
                                                "sha256": hashlib.sha256(b"").digest()}]},
                      bytes.fromhex("28b52ffd2000010000"))
    decoded = permcodec.decode(empty)
    assert list(decoded) == ["b", "a"] and decoded["a"].shape == (0, 2**31 - 1)


# ---------------------------------------------------------------- damaged sections

def damaged_example() -> bytes:
    data = bytearray(EXAMPLE)
    data[20 + HEADER_LENGTH + 30] ^= 1  # inside the group's frame
    return bytes(data)


def test_a_damaged_group_is_refused_by_its_crc_for_each_member_and_for_the_file():
    f = permcodec.PCFile(damaged_example())
    assert f.get_tensor("0.weight").shape == (2, 3) and int(f.get_tensor("1.num_batches_tracked")) == 3
    message = "group of 5 raw tensors from '0.bias': section CRC-32 mismatch"
    for name in ORDER[1:6]:  # each member's error names it, then its group, whose own error is its cause
        for get in (f.get_tensor, f.get_array):
            with pytest.raises(IntegrityError, match=re.escape(f"tensor {name!r}, in the {message}")) as caught:
                get(name)
            assert type(caught.value.__cause__) is IntegrityError and str(caught.value.__cause__).startswith(message)
    for decode_all in (permcodec.decode, lambda data: scheduler.decode_all_arrays(permcodec.PCFile(data))):
        with pytest.raises(IntegrityError, match=re.escape(f"tensor {ORDER[1]!r}, in the {message}")) as caught:
            decode_all(damaged_example())
        assert type(caught.value.__cause__) is IntegrityError and str(caught.value.__cause__).startswith(message)


def test_a_group_whose_bits_differ_from_its_hash_is_refused_unless_verify_is_off():
    data = edited(lambda g: g.update(sha256=bytes(32)))
    with pytest.raises(IntegrityError, match="group of 5 raw tensors from '0.bias': decoded bits do not match the "
                                             "stored SHA-256"):
        permcodec.decode(data)
    assert same_bits(permcodec.decode(data, verify=False), permcodec.decode(EXAMPLE))


def test_shapes_that_imply_another_frame_size_are_refused_before_decompressing():
    data = edited(lambda g: g["shapes"].__setitem__(0, [3]))
    with pytest.raises(FormatError, match="group of 5 raw tensors from '0.bias'.*44"):
        permcodec.decode(data)


def test_a_bool_group_holding_a_byte_other_than_0_and_1_is_refused():
    frame = RAW_CODEC.encode(bytes([1, 0, 2]), 1, 3)
    group = {"kind": "group", "dtype": "bool", "names": ["a", "b"], "shapes": [[2], [1]], "positions": [0, 1],
             "codec": "shuffle-zstd", "offset": 0, "length": len(frame), "crc32": zlib.crc32(frame),
             "sha256": hashlib.sha256(bytes([1, 0, 2])).digest()}
    data = file_with({**header(), "tensors": [group]}, frame)
    with pytest.raises(FormatError, match="group of 2 raw tensors from 'a': bool tensor holds bytes other than 0 "
                                          "and 1"):
        permcodec.PCFile(data).get_tensor("b")


# ---------------------------------------------------------------- threads

def test_members_read_from_many_threads_have_the_bits_of_one_thread():
    state, spec = grouped_state()
    f = permcodec.PCFile(permcodec.encode(state, spec))
    names = [name for name in f.keys() if "group" in f.record(name)] * 4
    barrier = threading.Barrier(8)

    def read(index):
        if index < 8:  # the first eight calls start together, one on each thread
            barrier.wait()
        return tensor_bits(f.get_tensor(names[index]))

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(read, range(len(names))))
    assert found == [tensor_bits(state[name]) for name in names]


def test_decode_all_on_threads_takes_each_group_once(monkeypatch):
    state, spec = grouped_state()
    data = permcodec.encode(state, spec)
    calls = []
    real = decoder.decode_group
    monkeypatch.setattr(decoder, "decode_group", lambda *args: calls.append(args[0]["names"][0]) or real(*args))
    assert same_bits(permcodec.decode(data), state)
    assert sorted(calls) == sorted(r["names"][0] for r in permcodec.PCFile(data).header["tensors"]
                                   if r["kind"] == "group")


# ---------------------------------------------------------------- cost bounded by the group, once

def scalars_file(count: int, damaged_int64: bool = False) -> bytes:
    """``count`` float32 scalars (one group) and two int64 tensors (a second group), its last byte flipped if
    ``damaged_int64`` (the int64 group's section is the last)."""
    state = {f"s{i}": torch.tensor(float(i)) for i in range(count)}
    state.update({"i.a": torch.tensor([1, 2]), "i.b": torch.tensor([3])})
    data = bytearray(permcodec.encode(state, InitSpec([])))
    data[-1] ^= 1 if damaged_int64 else 0
    return bytes(data)


def counted_group_decodes(monkeypatch) -> list:
    calls, real = [], decoder.decode_group
    monkeypatch.setattr(decoder, "decode_group", lambda group, *args: calls.append(group["names"][0]) or
                        real(group, *args))
    return calls


def buffer_under(array: np.ndarray):
    """The memory a numpy array lies in, under its chain of views."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array.base if array.base is not None else array


def test_reading_a_group_s_members_one_by_one_decodes_it_once_and_keeps_none_of_it(monkeypatch):
    f = permcodec.PCFile(scalars_file(2000))
    calls = counted_group_decodes(monkeypatch)
    tensors = {name: f.get_tensor(name) for name in f.keys()}
    arrays = {name: f.get_array(name) for name in f.keys()}
    assert calls == ["s0", "i.a", "s0", "i.a"]  # the last group read is kept for the next member
    assert all(t.untyped_storage().nbytes() == t.nbytes for t in tensors.values())  # a copy of its own bytes
    assert all(len(buffer_under(a)) == a.nbytes for a in arrays.values())
    assert [float(tensors[f"s{i}"]) for i in (0, 1999)] == [0.0, 1999.0] and arrays["i.a"].tolist() == [1, 2]


def test_after_a_failure_decode_all_still_decodes_each_group_once(monkeypatch):
    """Even a group too large to be kept between reads (as if each were): the members left are decoded by group."""
    monkeypatch.setattr(decoder, "SHARED_GROUP_BYTES", 0)
    calls = counted_group_decodes(monkeypatch)
    with pytest.raises(IntegrityError, match="tensor 'i.a', in the group of 2 raw tensors from 'i.a': section CRC-32 "
                                             "mismatch"):
        permcodec.decode(scalars_file(2000, damaged_int64=True))
    assert sorted(calls) == ["i.a", "s0"]


def test_a_member_error_keeps_the_class_and_cause_and_passes_what_it_cannot_rebuild():
    group_error = MemoryLimitError("group of 2 raw tensors from 'a': not enough memory for its 9 elements")
    named = raw_decoding.member_error(group_error, "b")
    assert type(named) is MemoryLimitError and named.__cause__ is group_error
    assert str(named) == "tensor 'b', in the group of 2 raw tensors from 'a': not enough memory for its 9 elements"

    class AtOffset(FormatError):
        def __init__(self, message: str, offset: int):
            super().__init__(message)
            self.offset = offset

    unusual, disk = AtOffset("group of 2 raw tensors from 'a': bad byte", 7), OSError("disk")
    assert raw_decoding.member_error(unusual, "b") is unusual and raw_decoding.member_error(disk, "b") is disk
