"""The decoder under fuzzing: a damaged or hostile file raises a PermcodecError or decodes to the right bits.

A fast subset of tools/fuzz.py, which runs 100,000 cases and reports on them;
below it, the smallest reproducers of what the fuzzer found, one test each.
"""

import copy
import hashlib
import struct
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings

import permcodec
from permcodec import FormatError
from permcodec.format import container, indexcode, rans
from permcodec.format.container import Limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fuzz  # noqa: E402

FIXTURES = fuzz.load_fixtures()
TINY = next(f for f in FIXTURES if f.name == "tiny_linear")
TIME_LIMIT = 2.0


def assert_sound(case: fuzz.Case) -> None:
    """PermcodecError, or exactly the tensors the case expects; and fast."""
    result = fuzz.run_case(case)
    assert result.problem is None, f"{case.generator}: {result.problem}: {result.detail}"
    assert result.seconds <= TIME_LIMIT, f"{case.generator}: {result.seconds:.2f} s"


# ---------------------------------------------------------------- fuzzing, a few hundred cases

@pytest.mark.parametrize("first", range(0, 400, 100))
def test_damaged_golden_files_fail_cleanly_or_decode_exactly(first):
    for index in range(first, first + 100):
        assert_sound(fuzz.damage_case(0, index, FIXTURES))


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(case=fuzz.hostile_files())
def test_hostile_files_fail_cleanly_or_decode_as_their_header_says(case):
    assert_sound(case)


def test_every_golden_file_decodes_under_the_fuzzing_caps():
    for fixture in FIXTURES:
        assert_sound(fuzz.Case("golden", fixture.data, fixture.expect))


def test_a_silently_wrong_decode_is_caught():
    """The judge itself: a section swapped behind recomputed CRCs, checked without the SHA-256."""
    sections = list(TINY.sections)
    records = fuzz.with_layout([{**TINY.header["tensors"][1], "name": "weight"},
                                {**TINY.header["tensors"][1]}], [sections[1], sections[1]])
    data = fuzz.assemble(fuzz.pack_header(records), sections[1] * 2)
    result = fuzz.run_case(fuzz.Case("swap", data, TINY.expect[:1] + TINY.expect[1:], verify=False))
    assert result.problem == "silent corruption"


def test_handmade_zstd_frames_decode_as_zstd_says():
    payload = bytes(range(200)) * 700
    frame = fuzz.zstd_frame(fuzz.raw_blocks(payload), len(payload), single_segment=False, window_log=20)
    assert indexcode.decompress_exact(frame, len(payload), "t") == payload
    rle = fuzz.zstd_frame(fuzz.rle_blocks(7, 300_000), 300_000)
    assert indexcode.decompress_exact(rle, 300_000, "t") == bytes([7]) * 300_000


# ---------------------------------------------------------------- reproducers of fuzzer findings

def tiny_with(edit, data_area=None) -> bytes:
    """tiny_linear.pc with its header edited by ``edit`` and every CRC still valid."""
    header = copy.deepcopy(TINY.header)
    edit(header)
    return fuzz.assemble(fuzz.pack_value(header), b"".join(TINY.sections) if data_area is None else data_area)


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


def test_empty_permuted_tensor_with_long_rows_allocates_nothing():
    """Shape [0, 2^20, 2^20] holds no element, but its rows are 2^40 long: nothing may be sized by row length."""
    empty = indexcode.compress(b"")

    def edit(header):
        header["tensors"] = [{**header["tensors"][0], "shape": [0, 2**20, 2**20], "offset": 0,
                              "length": len(empty), "crc32": container.crc32(empty),
                              "sha256": hashlib.sha256(b"").digest()}]
    try:
        tensors = permcodec.decode(tiny_with(edit, empty), limits=fuzz.FUZZ_LIMITS)
    except permcodec.PermcodecError:
        return
    assert tensors["weight"].shape == (0, 2**20, 2**20)


@pytest.mark.parametrize("backend", rans.BACKENDS)
@pytest.mark.parametrize("scheme", ["exact", "multiset"])
def test_empty_arrangement_tensor_with_the_longest_rows_allocates_nothing(monkeypatch, backend, scheme):
    """[0, 2^31 - 1] passes the default limits (a zero dimension counts as 1); nothing may be sized by n."""
    monkeypatch.setenv("PERMCODEC_BACKEND", backend)
    section = bytes.fromhex("02000000" "01000000" "00000000")

    def edit(header):
        header["tensors"] = [{**header["tensors"][0], "shape": [0, 2**31 - 1], "scheme": scheme,
                              "scheme_params": {"lanes": 1}, "offset": 0, "length": len(section),
                              "crc32": container.crc32(section), "sha256": hashlib.sha256(b"").digest()}]
    assert permcodec.decode(tiny_with(edit, section))["weight"].shape == (0, 2**31 - 1)


@pytest.mark.parametrize("scheme", ["exact", "multiset"])
def test_arrangement_rows_longer_than_2_31_are_refused_whatever_the_limits(scheme):
    """specs/format.md 9.3: rANS needs n <= 2^31, so a decoder with larger caps must still refuse."""
    section = bytes.fromhex("02000000" "01000000" "00000000")

    def edit(header):
        header["tensors"] = [{**header["tensors"][0], "shape": [0, 2**31 + 1], "scheme": scheme,
                              "scheme_params": {"lanes": 1}, "offset": 0, "length": len(section),
                              "crc32": container.crc32(section), "sha256": hashlib.sha256(b"").digest()}]
    roomy = Limits(max_dim=2**32, max_tensor_elements=2**32)
    with pytest.raises(FormatError, match=f"tensor 'weight': scheme '{scheme}' needs rows of at most 2\\^31 "
                                          f"elements, found 2147483649"):
        permcodec.decode(tiny_with(edit, section), limits=roomy)


def test_skippable_frame_is_not_a_section():
    """specs/format.md section 10: a skippable frame is not allowed, even for an empty tensor."""
    skippable = struct.pack("<II", 0x184D2A50, 0)

    def edit(header):
        header["tensors"] = [{**header["tensors"][1], "shape": [0], "offset": 0, "length": len(skippable),
                              "crc32": container.crc32(skippable), "sha256": hashlib.sha256(b"").digest()}]
    with pytest.raises(FormatError):
        permcodec.decode(tiny_with(edit, skippable))


def test_reproducer_bytes_are_valid_msgpack_apart_from_the_fault():
    """The helper above changes only what each test says: the unedited header decodes."""
    assert msgpack.unpackb(fuzz.pack_value(TINY.header), raw=False) == TINY.header
    assert permcodec.decode(tiny_with(lambda h: None)).keys() == {"weight", "bias"}
