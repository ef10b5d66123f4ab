"""The readers under fuzzing: a damaged or hostile file raises a PermcodecError or decodes to the right bits,
through every entry point (load, safe_open, info, info --json, verify), under the lowered caps and the defaults.

A fast subset of tools/fuzz.py, which runs 200,000 cases and reports on them
(the same workers, budgets and judge, a few hundred cases); then tests of the
judge itself; below them, the smallest reproducers of what the fuzzer found,
one test each.
"""

import argparse
import copy
import hashlib
import math
import random
import struct
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

import permcodec
from permcodec import FormatError, LimitError, cli
from permcodec.format import container, rans, zstdframe
from permcodec.format import limits as caps
from permcodec.format.container import Limits
from permcodec.init import distributions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fuzz  # noqa: E402

FIXTURES = fuzz.load_fixtures()
TINY = next(f for f in FIXTURES if f.name == "tiny_linear")
EMPTY_SHA = hashlib.sha256(b"").digest()


# ---------------------------------------------------------------- fuzzing, a few hundred cases

def test_fast_fuzz_run_passes_every_case_through_every_entry_point_in_both_halves(tmp_path):
    """600 cases on 2 workers, each under its address-space cap and time limit: none may fail."""
    args = argparse.Namespace(cases=600, seed=0, time_limit=fuzz.BASE_SECONDS, jobs=2, hostile_share=0.4, batch=50,
                              out=str(tmp_path), progress=False)
    total = fuzz.run(args)
    failures = "\n".join(f"{problem}: {signature} ({n}x) {total.examples.get((problem, signature), [])}"
                         for (problem, signature), n in total.failures.items())
    assert not total.failures, failures
    assert total.cases == 600
    assert {half: counts["cases"] for half, counts in total.halves.items()} == {"lowered": 300, "default": 300}
    assert total.shares_limits, "the CLI did not run under FUZZ_LIMITS in the lowered half"
    for entry in fuzz.ENTRY_POINTS:
        assert sum(n for (name, _), n in total.entries.items() if name == entry) == 600, entry
    assert total.entries[("load", "OK")] > 60 and total.entries[("verify", "FormatError")] > 150
    assert {"hostile:empty_long", "hostile", "damage:flip_bits"} <= set(total.generators)
    for tag in ("block", "levels", "empty_block"):
        assert any(tag in generator.split(":") for generator in total.generators), tag


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """Runs cases in this process, without the address-space cap (this process is not warmed up) or alarm."""
    return fuzz.Runner(tmp_path_factory.mktemp("fuzz"), cap=False, alarm=False)


@pytest.mark.parametrize("half", fuzz.HALVES)
def test_every_golden_file_passes_every_entry_point(runner, half):
    for fixture in FIXTURES:
        outcome = runner(fuzz.Case("golden", fixture.data, fixture.expect, half=half))
        assert outcome.problems == [], outcome.detail
        assert {entry: r.status for entry, r in outcome.ran.items()} == dict.fromkeys(fuzz.ENTRY_POINTS, "OK")


def test_the_cli_reads_the_lowered_caps():
    """permcodec reads caps.DEFAULT_LIMITS at call time, so setting it reaches info and verify."""
    assert fuzz.cli_shares_limits(fuzz.FIXTURES / "tiny_linear.pc")
    with fuzz.decoder_limits("lowered"):
        assert caps.DEFAULT_LIMITS is fuzz.FUZZ_LIMITS
    assert caps.DEFAULT_LIMITS == Limits()


# ---------------------------------------------------------------- the generators

def test_default_half_files_declare_at_most_2_22_elements():
    cases = [fuzz.damage_case(0, index, FIXTURES, "default") for index in range(300)]
    fuzz.hypothesis_cases(300, 1, cases.append, "default")
    assert all(case.half == "default" for case in cases)
    assert max(fuzz.declared_elements(case.data) for case in cases) <= fuzz.MAX_DECLARED


@pytest.fixture(scope="module")
def hostile_cases():
    """Hostile files of both halves, two batches of 300 each: hypothesis repeats much of a batch (300 files may
    hold only a dozen distinct seeds), so what comes up at random is counted over two."""
    cases = []
    for half in fuzz.HALVES:
        for batch in (1, 2):
            fuzz.hypothesis_cases(300, batch, cases.append, half)
    return cases


def generated_records(cases, half=None, block=None):
    """The records of ``cases`` (of ``half``, if given) that are maps; with ``block``, only block records
    (True: a block map and a list of part maps) or only the others (False)."""
    for case in cases:
        if half is None or case.half == half:
            for record in fuzz.header_records(case.data):
                if isinstance(record, dict):
                    is_block = isinstance(record.get("block"), dict) and isinstance(record.get("parts"), list) \
                        and all(isinstance(part, dict) for part in record["parts"])
                    if block is None or block == is_block:
                        yield record


def test_default_half_holds_empty_tensors_with_the_longest_rows_of_every_kind_and_scheme(hostile_cases):
    seen = set()
    for record in generated_records(hostile_cases, "default", block=False):
        if record.get("shape") in ([0, 2**31 - 1], [2**31 - 1, 0]):
            seen.add((tuple(record["shape"]), record.get("scheme", record.get("kind"))))
    assert seen >= {(shape, kind) for shape in [(0, 2**31 - 1), (2**31 - 1, 0)]
                    for kind in ("raw", "delta", "exact", "multiset", "sparse")}


def test_hostile_files_hold_block_records_of_every_layout_scheme_and_size(hostile_cases):
    """Format rev 1.4: block records of each layout, with one and two runs of blocks, blocks of 1, of sizes that
    divide the row or leave a shorter block, of the row or more; parts of each scheme; empty ones with the
    longest or most rows of each half."""
    layouts, schemes, sizes, runs, empty = set(), set(), set(), set(), set()
    for record in generated_records(hostile_cases, block=True):
        shape, block = record.get("shape"), record["block"]
        layouts.add(block.get("layout"))
        schemes.update(part.get("scheme") for part in record["parts"])
        runs.add(len(record["parts"]))
        if isinstance(shape, list) and len(shape) >= 2 and all(type(s) is int and s >= 0 for s in shape):
            n, size = math.prod(shape[1:]), block.get("size")
            if 0 in shape:
                empty.add(tuple(shape))
            elif type(size) is int and size > 0:
                sizes.add("1" if size == 1 else "n or more" if size >= n else "divides" if n % size == 0
                          else "splits")
    assert layouts >= set(fuzz.BLOCK_LAYOUTS) and schemes >= {"delta", "exact", "multiset", "sparse"}
    assert sizes == {"1", "n or more", "divides", "splits"} and runs >= {1, 2}
    assert empty >= {(0, 2**20), (2**20, 0), (0, 2**31 - 1), (2**31 - 1, 0)}


def test_hostile_files_hold_group_records_with_valid_and_broken_positions(hostile_cases):
    """Format rev 1.7: a raw record made a group of two members, at valid positions or at positions a decoder
    must refuse (each fault), the members' elements split every way (an empty member too)."""
    valid, faults, empty_member = 0, set(), False
    for case in hostile_cases:
        for record in fuzz.header_records(case.data):
            if isinstance(record, dict) and record.get("kind") == "group":
                first, second = record["positions"]
                empty_member = empty_member or [0] in record["shapes"]
                if case.must_fail and "position" in case.must_fail:
                    faults.add(type(second).__name__ if type(second) is not int else "duplicate" if first == second
                               else "negative" if second < 0 else "past_end")
                else:
                    valid += 1
    assert valid >= 20 and faults == {"duplicate", "float", "bool", "negative", "past_end"} and empty_member, \
        (valid, faults)


def test_hostile_files_hold_valid_and_broken_levels_records(hostile_cases):
    valid, broken = 0, set()
    for record in generated_records(hostile_cases):
        init = record.get("init")
        if isinstance(init, dict) and init.get("dist") == "levels" and isinstance(init.get("params"), dict):
            try:
                distributions.validate("levels", init["params"])
                valid += 1
            except permcodec.SpecError as err:
                broken.update(why for why in ("ascending", "-0.0", "list of", "float32 value", "finite", "number")
                              if why in str(err))
    assert valid >= 20 and len(broken) >= 3, (valid, broken)


@pytest.mark.parametrize("fault", ["huge", "unsorted", "repeated", "negative_zero", "not_f32", "non_finite", "empty"])
def test_broken_levels_values_are_refused_or_around_the_cap(fault):
    rng = random.Random(0)
    for _ in range(6 if fault == "huge" else 20):
        values = fuzz.broken_levels([-1.0, 0.0, 0.5], fault, rng)
        if fault == "huge":
            assert len(values) in fuzz.LEVEL_COUNTS
            assert msgpack.unpackb(fuzz.pack_value(values)) == values  # an array 32 past 65,535 items
        else:
            with pytest.raises(permcodec.SpecError):
                distributions.validate("levels", {"values": values})


def block_record(shape, layout, size_kind, part_schemes, dist="he_uniform", seed=0) -> dict:
    rng = random.Random(seed)
    record = {"name": "w", "kind": "permuted", "dtype": "float32", "shape": shape,
              "init": fuzz.init_record(dist, rng)}
    record["block"] = {"layout": layout, "size": fuzz.block_size(size_kind, fuzz.perm.row_shape(shape)[1], rng)}
    record["parts"] = fuzz.block_parts(shape, record["block"], part_schemes, rng)
    return record


def block_case(record, section, sha, verify=True, expect_sha=None) -> fuzz.Case:
    records = fuzz.with_layout([{**record, "sha256": sha}], [section])
    return fuzz.Case("block", fuzz.assemble(fuzz.pack_header(records), section),
                     fuzz.claims(records, [expect_sha or sha]), verify)


def test_truthful_block_sections_decode_to_the_generators_sha_through_every_entry_point(runner, monkeypatch):
    """block_section's parts (delta by hand, exact and multiset by the encoder) for every layout and kind of
    block size, each scheme in each part, whole-row and level pools: what the decoder makes of them is the
    tensor whose SHA-256 the generator claims."""
    monkeypatch.setattr(fuzz, "ARRANGEMENT_DAMAGE", ("valid",))
    made = 0
    for layout in fuzz.BLOCK_LAYOUTS:
        for index, size_kind in enumerate(["splits", "divides", "1", "n", "over_n", "max"]):
            for schemes in (["delta", "exact"], ["multiset", "delta"], ["exact", "multiset"]):
                dist = "levels" if index % 2 else "sparse"
                record = block_record([3, 27], layout, size_kind, schemes, dist, seed=index)
                section, sha, how = fuzz.block_section(record, "valid", random.Random(index))
                assert how == "valid" and sha is not None
                outcome = runner(block_case(record, section, sha))
                assert outcome.problems == [] and outcome.outcome == "decoded OK", outcome.detail
                made += 1
    assert made == 54


def test_a_block_record_that_lies_about_its_layout_is_caught(runner, monkeypatch):
    """Strided and shuffled blocks of one size have the same runs: an exact or multiset section decodes under
    either (a delta one mostly not: its ranks are relative). The SHA-256 check refuses it; without the check the
    judge sees the wrong bits."""
    monkeypatch.setattr(fuzz, "ARRANGEMENT_DAMAGE", ("valid",))
    record = block_record([3, 27], "shuffled", "splits", ["exact", "multiset"])
    assert len(record["parts"]) == 2
    section, sha, _ = fuzz.block_section(record, "valid", random.Random(1))
    lying = {**record, "block": {**record["block"], "layout": "strided"}}
    checked = runner(block_case(lying, section, sha))
    assert checked.problems == [] and checked.outcome == "IntegrityError"
    unchecked = runner(block_case(lying, section, sha, verify=False))
    assert [problem[0] for problem in unchecked.problems][:2] == ["silent corruption"] * 2


def test_declared_elements_sums_the_shapes_a_header_states():
    records = [{"shape": [0, 2**31 - 1]}, {"shape": [3, 4]}, {"shape": [2, -1]}, {"shape": "x"}, 7]
    assert fuzz.declared_elements(fuzz.assemble(fuzz.pack_header(records), b"")) == 12
    assert fuzz.declared_elements(TINY.data) == sum(np.prod(shape) for _, _, shape, _ in TINY.expect)
    assert fuzz.declared_elements(b"not a permcodec file") == 0


def test_budgets_grow_with_declared_elements():
    small, full = fuzz.Budget.of(TINY.data), fuzz.Budget.of(fuzz.assemble(fuzz.pack_header([{"shape": [2**23]}]),
                                                                           b""))
    assert small.seconds == pytest.approx(2.0, abs=1e-3) and small.extra_bytes < fuzz.AS_HEADROOM + 2**20
    assert (full.declared, full.seconds, full.extra_bytes) == (2**23, 3.0, fuzz.AS_HEADROOM + 64 * 2**22)


def test_plan_splits_the_cases_between_the_halves_and_families():
    units = fuzz.plan(1001, 0.4, 100)
    count = {(half, family): sum(u.count for u in units if (u.half, u.family) == (half, family))
             for half in fuzz.HALVES for family in ("damage", "hostile")}
    assert count == {("lowered", "damage"): 301, ("lowered", "hostile"): 200,
                     ("default", "damage"): 300, ("default", "hostile"): 200}


def test_a_unit_resumes_after_the_case_that_killed_its_worker():
    unit = fuzz.Unit("damage", "default", 0, 10, resume=4, skip=frozenset({6}))
    assert [p for p in range(10) if unit.wants(p)] == [4, 5, 7, 8, 9] and unit.remaining() == 5


# ---------------------------------------------------------------- the judge

def file_with(records: list, sections: list) -> bytes:
    return fuzz.assemble(fuzz.pack_header(fuzz.with_layout(records, sections)), b"".join(sections))


def test_a_silently_wrong_decode_is_caught(runner):
    """A section swapped behind recomputed CRCs, checked without the SHA-256: load and safe_open return it."""
    sections = list(TINY.sections)
    records = [{**TINY.header["tensors"][1], "name": "weight"}, {**TINY.header["tensors"][1]}]
    data = file_with(records, [sections[1], sections[1]])
    outcome = runner(fuzz.Case("swap", data, TINY.expect, verify=False))
    assert [problem[:2] for problem in outcome.problems][:2] == [
        ("silent corruption", "load (swap, lowered)"), ("silent corruption", "safe_open (swap, lowered)")]


def test_a_cli_error_passes_only_as_one_line_for_a_permcodec_error(runner):
    outcome = runner(fuzz.Case("truncated", TINY.data[:-1], TINY.expect))
    assert outcome.problems == []
    assert {entry: r.status for entry, r in outcome.ran.items()} == dict.fromkeys(fuzz.ENTRY_POINTS, "FormatError")
    code, out, err, caught = fuzz.run_cli(["verify", "/nonexistent/x.pc"])
    assert (code, out, type(caught)) == (cli.EXIT_ERROR, "", FileNotFoundError)
    assert err.startswith("permcodec verify: error: ")
    assert fuzz.cli_ran("verify", code, out, err, caught, capped=False).status == "crash"


def test_an_uncaught_exception_in_the_cli_is_a_crash(runner, monkeypatch):
    def broken(args):
        raise KeyError("tensors")

    monkeypatch.setattr(cli, "run_info", broken)
    monkeypatch.setattr(fuzz, "_traced_cli", None)  # the next run builds its parser with the broken command
    outcome = runner(fuzz.Case("golden", TINY.data, TINY.expect))
    assert [(problem, signature.split(" at ")[0]) for problem, signature, _ in outcome.problems] == [
        ("crash", "info: KeyError"), ("crash", "info --json: KeyError")]
    assert outcome.ran["verify"].status == "OK"
    monkeypatch.setattr(fuzz, "_traced_cli", None)


def test_verify_failing_a_file_that_loads_is_a_disagreement(runner, monkeypatch):
    def refuses(args):
        raise FormatError("refused")

    monkeypatch.setattr(cli, "run_verify", refuses)
    monkeypatch.setattr(fuzz, "_traced_cli", None)
    outcome = runner(fuzz.Case("golden", TINY.data, TINY.expect))
    assert [problem[:2] for problem in outcome.problems] == [("entry points disagree", "load OK, verify FormatError")]
    monkeypatch.setattr(fuzz, "_traced_cli", None)


def raw_only_case() -> fuzz.Case:
    """A file of one raw tensor: none of its entry points loads numba, which this process may not have
    loaded yet (the workers warm up before any cap; loading numba's kernels under one spins in OpenBLAS)."""
    sections = [TINY.sections[1]]
    return fuzz.Case("raw", file_with([TINY.header["tensors"][1]], sections), TINY.expect[1:])


def test_an_allocation_past_the_cap_is_reported_as_over_the_cap(tmp_path, monkeypatch):
    """The cap is in force inside the case and lifted after it."""
    capped = fuzz.Runner(tmp_path, alarm=False)
    before = fuzz.resource.getrlimit(fuzz.resource.RLIMIT_AS)
    monkeypatch.setattr(permcodec, "load", lambda *a, **k: np.empty(fuzz.AS_HEADROOM * 4, dtype=np.uint8))
    outcome = capped(raw_only_case())
    assert outcome.ran["load"].status == "over cap"
    assert outcome.problems[0][0] == "over address-space cap"
    assert outcome.problems[0][1].startswith("load: ") and "MemoryError at " in outcome.problems[0][1]
    assert fuzz.resource.getrlimit(fuzz.resource.RLIMIT_AS) == before
    assert np.empty(fuzz.AS_HEADROOM * 4, dtype=np.uint8).size  # and the same allocation works after it


def test_a_memory_limit_error_under_the_cap_is_over_the_cap(tmp_path, runner, monkeypatch):
    """permcodec names running out of memory as a MemoryLimitError: under the fuzzing cap that is the case
    outgrowing its budget, not a clean refusal. Without a cap it is a PermcodecError like any other."""
    def load(*args, **kwargs):
        try:
            raise MemoryError("allocation refused")
        except MemoryError:
            raise permcodec.MemoryLimitError("tensor 'weight': not enough memory") from None

    monkeypatch.setattr(permcodec, "load", load)
    capped = fuzz.Runner(tmp_path, alarm=False)(raw_only_case())
    assert capped.ran["load"].status == "over cap"
    problem, signature, detail = capped.problems[0]
    assert problem == "over address-space cap" and signature.startswith("load: MemoryLimitError at ")
    assert signature.endswith(")") and "(MemoryError at " in signature and "allocation refused" in detail
    assert runner(fuzz.Case("golden", TINY.data, TINY.expect)).ran["load"].status == "MemoryLimitError"


def test_a_case_past_its_hang_limit_is_interrupted(tmp_path, monkeypatch):
    import signal

    monkeypatch.setattr(fuzz, "HANG_MIN", 0.2)
    monkeypatch.setattr(fuzz, "HANG_FACTOR", 0.1)
    monkeypatch.setattr(permcodec, "load", lambda *a, **k: time.sleep(5))
    previous = signal.signal(signal.SIGALRM, fuzz.raise_timeout)
    try:
        started = time.monotonic()
        outcome = fuzz.Runner(tmp_path, cap=False)(fuzz.Case("golden", TINY.data, TINY.expect))
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 2
    assert outcome.ran["load"].status == "hang" and outcome.ran["verify"].status == "skipped"
    assert outcome.problems[0][0] == "hang"


def test_handmade_zstd_frames_decode_as_zstd_says():
    payload = bytes(range(200)) * 700
    frame = fuzz.zstd_frame(fuzz.raw_blocks(payload), len(payload), single_segment=False, window_log=20)
    assert zstdframe.decompress_exact(frame, len(payload), "t") == payload
    rle = fuzz.zstd_frame(fuzz.rle_blocks(7, 300_000), 300_000)
    assert zstdframe.decompress_exact(rle, 300_000, "t") == bytes([7]) * 300_000


# ---------------------------------------------------------------- reproducers of fuzzer findings

def tiny_with(edit, data_area=None) -> bytes:
    """tiny_linear.pc with its header edited by ``edit`` and every CRC still valid."""
    header = copy.deepcopy(TINY.header)
    edit(header)
    return fuzz.assemble(fuzz.pack_value(header), b"".join(TINY.sections) if data_area is None else data_area)


def one_record(record: dict, section: bytes):
    def edit(header):
        header["tensors"] = [{**record, "offset": 0, "length": len(section), "crc32": container.crc32(section),
                              "sha256": EMPTY_SHA}]
    return tiny_with(edit, section)


def test_unhashable_dtype_is_a_format_error():
    data = tiny_with(lambda h: h["tensors"][1].update(dtype=["float32"]))
    with pytest.raises(FormatError, match="dtype"):
        permcodec.decode(data)


@pytest.mark.parametrize("where", ["record", "header"])
def test_bytes_key_beside_str_keys_is_a_format_error(where):
    """strict_map_key lets bytes keys through; listing them beside str keys must not raise TypeError."""
    def edit(header):
        (header["tensors"][1] if where == "record" else header)[b"extra"] = 1
    with pytest.raises(FormatError):
        permcodec.decode(tiny_with(edit))


def test_empty_permuted_tensor_with_2_40_long_rows_is_refused_by_the_fuzzing_caps():
    """[0, 2^20, 2^20] holds no element, but its rows are 2^40 long: the caps count a zero dimension as 1, so the
    header is refused before anything is sized by row length; [0, 2^10, 2^10], at the cap, decodes."""
    weight = TINY.header["tensors"][0]
    empty = zstdframe.compress(b"")
    with pytest.raises(LimitError, match=r"^tensor 'weight': 1099511627776 elements exceed the limit of 1048576 "
                                         r"\(a zero dimension counts as 1\)$"):
        permcodec.decode(one_record({**weight, "shape": [0, 2**20, 2**20]}, empty), limits=fuzz.FUZZ_LIMITS)
    at_cap = permcodec.decode(one_record({**weight, "shape": [0, 2**10, 2**10]}, empty), limits=fuzz.FUZZ_LIMITS)
    assert at_cap["weight"].shape == (0, 2**10, 2**10)


@pytest.mark.parametrize("backend", rans.BACKENDS)
@pytest.mark.parametrize("scheme", ["exact", "multiset"])
@pytest.mark.parametrize("shape", [[0, 2**31 - 1], [2**31 - 1, 0]])
def test_empty_arrangement_tensor_with_the_longest_rows_or_most_rows_allocates_nothing(monkeypatch, backend,
                                                                                        scheme, shape):
    """Both pass the default limits (a zero dimension counts as 1); nothing may be sized by n or by rows."""
    monkeypatch.setenv("PERMCODEC_BACKEND", backend)
    section = rans.nothing_coded_section(1)
    data = one_record({**TINY.header["tensors"][0], "shape": shape, "scheme": scheme, "scheme_params": {"lanes": 1}},
                      section)
    assert permcodec.decode(data)["weight"].shape == tuple(shape)


@pytest.mark.parametrize("scheme", ["exact", "multiset"])
def test_arrangement_rows_longer_than_2_31_are_refused_whatever_the_limits(scheme):
    """specs/format.md 9.3: rANS needs n <= 2^31, so a decoder with larger caps must still refuse."""
    section = rans.nothing_coded_section(1)
    data = one_record({**TINY.header["tensors"][0], "shape": [0, 2**31 + 1], "scheme": scheme,
                       "scheme_params": {"lanes": 1}}, section)
    roomy = Limits(max_dim=2**32, max_tensor_elements=2**32)
    with pytest.raises(FormatError, match=f"tensor 'weight': scheme '{scheme}' needs rows of at most 2\\^31 "
                                          f"elements, found 2147483649"):
        permcodec.decode(data, limits=roomy)


def test_skippable_frame_is_not_a_section():
    """specs/format.md section 10: a skippable frame is not allowed, even for an empty tensor."""
    skippable = struct.pack("<II", 0x184D2A50, 0)
    with pytest.raises(FormatError):
        permcodec.decode(one_record({**TINY.header["tensors"][1], "shape": [0]}, skippable))


def test_reproducer_bytes_are_valid_msgpack_apart_from_the_fault():
    """The helper above changes only what each test says: the unedited header decodes."""
    assert msgpack.unpackb(fuzz.pack_value(TINY.header), raw=False) == TINY.header
    assert permcodec.decode(tiny_with(lambda h: None)).keys() == {"weight", "bias"}
