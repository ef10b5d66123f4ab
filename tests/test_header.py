"""The header is validated fully, once, when it is parsed (specs/format.md Sections 2, 5, 6 and 16).

Every file here is tiny_linear.pc with its header edited and every CRC valid,
so only the rule under test can refuse it. The headers are packed by the small
msgpack writer below, not by the msgpack package, so that integer tags and
string bytes are exactly what each test says.
"""

import contextlib
import io
import struct
import sys
import zlib
from pathlib import Path

import msgpack
import pytest
import torch

import permcodec
from permcodec import FormatError, LimitError, SpecError, bits, cli, codec
from permcodec.format import container, zstdframe
from permcodec.format.container import Limits

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_linear.pc"
DATA = FIXTURE.read_bytes()
HEADER_LENGTH = struct.unpack_from("<I", DATA, 12)[0]
HEADER = msgpack.unpackb(DATA[20:20 + HEADER_LENGTH], raw=False)
DATA_AREA = DATA[20 + HEADER_LENGTH:]


class Raw(bytes):
    """Bytes written into the msgpack stream as they are (a hand-made encoding of one value)."""


def pack(value, signed_ints: bool = False) -> bytes:
    """msgpack of dicts, lists, str, bytes, bool, None, float (float 64) and int (smallest tag, or int 64)."""
    if isinstance(value, Raw):
        return bytes(value)
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if signed_ints or value < 0:
            return b"\xd3" + struct.pack(">q", value)
        return msgpack.packb(value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        return msgpack.packb(value)
    if isinstance(value, bytes):
        return msgpack.packb(value, use_bin_type=True)
    if isinstance(value, list):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(pack(v, signed_ints) for v in value)
    if isinstance(value, dict):
        return b"\xdf" + struct.pack(">I", len(value)) + b"".join(
            pack(k, signed_ints) + pack(v, signed_ints) for k, v in value.items())
    raise TypeError(type(value))


def file_with(header_bytes: bytes, data_area: bytes = DATA_AREA) -> bytes:
    preamble = container.PREAMBLE.pack(container.MAGIC, 1, 0, len(header_bytes), zlib.crc32(header_bytes))
    return preamble + header_bytes + data_area


def edited(edit, signed_ints: bool = False) -> bytes:
    header = msgpack.unpackb(DATA[20:20 + HEADER_LENGTH], raw=False)
    edit(header)
    return file_with(pack(header, signed_ints))


def refused(data: bytes, error=FormatError, limits: Limits | None = None) -> str:
    with pytest.raises(error) as caught:
        permcodec.decode(data, limits=limits)
    return str(caught.value)


def test_the_writer_reproduces_the_fixture_exactly_with_permcodecs_tags():
    """Guard for the tests below: unedited, the header decodes to the golden tensors."""
    assert permcodec.decode(edited(lambda h: None)).keys() == {"weight", "bias"}


# ---------------------------------------------------------------- checked at parse, seen by every entry point

@pytest.mark.parametrize("kind_index,key,message", [
    (0, "scheme", "tensor 'weight': a permuted record must have keys"),
    (0, "init", "tensor 'weight': a permuted record must have keys"),
    (1, "codec", "tensor 'bias': a raw record must have keys"),
])
def test_a_record_without_its_kind_specific_key_is_refused_when_the_header_is_parsed(tmp_path, kind_index, key,
                                                                                       message):
    path = tmp_path / "bad.pc"
    path.write_bytes(edited(lambda h: h["tensors"][kind_index].pop(key)))
    with pytest.raises(FormatError, match=message):
        permcodec.safe_open(path)  # before any tensor is asked for
    for command in (["info", str(path)], ["info", "--json", str(path)], ["verify", str(path)]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(command) == 1
        assert f"permcodec {command[0]}: error: {message}" in err.getvalue()


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(scheme="zigzag"), "tensor 'weight': unknown index scheme 'zigzag'; known: delta, exact, "
                                          "multiset"),
    (lambda r: r.update(scheme=["delta"]), "tensor 'weight': unknown index scheme ['delta']"),
    (lambda r: r["init"].update(rng="mt19937"), "tensor 'weight': unknown rng 'mt19937'"),
    (lambda r: r["init"].update(dist="cauchy"), "bad init record: tensor 'weight': unknown distribution 'cauchy'"),
    (lambda r: r["init"].update(seed=-1), "bad init record: seed must be an integer in [0, 2**64), found -1"),
    (lambda r: r["init"]["params"].update(bound=-1.0), "bad init record: tensor 'weight': bound must be > 0"),
    (lambda r: r.update(dtype="float16"), "tensor 'weight': permuted tensors are float32, found 'float16'"),
])
def test_kind_specific_fields_are_refused_at_open(tmp_path, edit, message):
    path = tmp_path / "bad.pc"
    path.write_bytes(edited(lambda h: edit(h["tensors"][0])))
    with pytest.raises(FormatError) as caught:
        permcodec.safe_open(path)
    assert str(caught.value).startswith(message)


def test_unknown_raw_codec_is_refused_at_open(tmp_path):
    path = tmp_path / "bad.pc"
    path.write_bytes(edited(lambda h: h["tensors"][1].update(codec="gzip")))
    with pytest.raises(FormatError, match="tensor 'bias': unknown raw codec 'gzip' \\(expected 'shuffle-zstd'\\)"):
        permcodec.safe_open(path)


# ---------------------------------------------------------------- what an outside implementer found ambiguous

def test_bytes_after_the_header_map_within_header_length_are_refused():
    header = DATA[20:20 + HEADER_LENGTH] + b"\xc0"
    assert refused(file_with(header)) == "header holds 1 bytes after its map, within header_length"


def test_signed_integer_tags_holding_non_negative_values_are_accepted():
    data = edited(lambda h: None, signed_ints=True)
    assert b"\xd3" + struct.pack(">q", 7) in data  # the seed, as int 64
    assert permcodec.decode(data).keys() == {"weight", "bias"}


@pytest.mark.parametrize("utf8,what", [(b"\xed\xa0\x80", "a UTF-16 surrogate"), (b"\xc0\x80", "an overlong NUL"),
                                       (b"\xe0\x80\xaf", "an overlong '/'"), (b"\xf4\x90\x80\x80", "past U+10FFFF"),
                                       (b"\x80", "a lone continuation byte")])
def test_invalid_utf8_by_rfc_3629_is_refused(utf8, what):
    data = edited(lambda h: h["metadata"].update(note=Raw(bytes([0xa0 | len(utf8)]) + utf8)))
    assert refused(data).startswith("header is not valid msgpack: UnicodeDecodeError"), what


def test_duplicate_tensor_names_are_refused():
    data = edited(lambda h: h["tensors"][1].update(name="weight"))
    assert refused(data) == "tensor name 'weight' appears twice"


@pytest.mark.parametrize("path,field", [
    (("init", "seed"), "seed"), (("init", "stream"), "stream"), (("shape",), "shape"), (("offset",), "offset"),
    (("length",), "length"), (("crc32",), "crc32"), (("scheme_params", "lanes"), "lanes")])
def test_integer_fields_written_as_floats_are_refused(path, field):
    def edit(header):
        record = header["tensors"][0]
        record.update(scheme="exact", scheme_params={"lanes": 1})
        holder = record
        for key in path[:-1]:
            holder = holder[key]
        value = holder[path[-1]]
        holder[path[-1]] = [float(v) for v in value] if isinstance(value, list) else float(value)
    data = edited(edit)
    message = refused(data)
    assert field in message and ("integer" in message or "must be" in message), message


def test_version_written_as_a_float_is_refused():
    assert refused(edited(lambda h: h.update(version=1.0)), container.UnsupportedVersionError) == \
        "header version 1.0 is not supported"


def test_keep_below_written_as_a_float_is_refused():
    def edit(header):
        header["tensors"][0]["init"] = {"rng": "philox4x32-10", "seed": 1, "stream": 0, "dist": "shared",
                                        "params": {"value": 0.5, "density": 0.5, "keep_below": float(2**31)}}
    assert "keep_below must be round(density * 2^32) = 2147483648, found 2147483648.0" in refused(edited(edit))


def test_shared_value_minus_zero_is_refused():
    def edit(header):
        header["tensors"][0]["init"] = {"rng": "philox4x32-10", "seed": 1, "stream": 0, "dist": "shared",
                                        "params": {"value": -0.0, "density": 0.5, "keep_below": 2**31}}
    assert refused(edited(edit)).endswith("shared value must be non-zero")


def test_the_per_file_element_cap_counts_elements_not_extents():
    """An empty [0, 5] tensor adds nothing to the file's count, though it counts 5 against the per-tensor cap."""
    def edit(header):
        empty = {**header["tensors"][1], "name": "empty", "shape": [0, 5], "offset": len(DATA_AREA),
                 "length": len(zstdframe.compress(b"")),
                 "crc32": zlib.crc32(zstdframe.compress(b"")), "sha256": codec.sha256_of(torch.empty(0))}
        header["tensors"].append(empty)
    data = file_with(pack(_header_with(edit)), DATA_AREA + zstdframe.compress(b""))
    assert permcodec.decode(data, limits=Limits(max_total_elements=8))["empty"].shape == (0, 5)
    assert refused(data, LimitError, Limits(max_total_elements=7)) == \
        "total element count exceeds the limit of 7"
    assert refused(data, LimitError, Limits(max_tensor_elements=4)).startswith("tensor 'weight': 6 elements exceed")


def _header_with(edit) -> dict:
    header = msgpack.unpackb(DATA[20:20 + HEADER_LENGTH], raw=False)
    edit(header)
    return header


def test_an_array_count_past_the_header_bytes_is_refused_before_allocating():
    claim = Raw(b"\xdd\xff\xff\xff\xff")  # an array of 2^32 - 1 entries, in 5 bytes
    data = edited(lambda h: h["metadata"].update(note=claim))
    assert refused(data).startswith("header is not valid msgpack: ValueError: 4294967295 exceeds max_array_len")


def test_a_header_of_empty_containers_is_refused_early():
    """Valid headers hold a few arrays and maps per tensor (at most 12); 1,300,000 empty maps in 1.3 MB are not one."""
    block = b"\xdd" + struct.pack(">I", 100_000) + b"\x80" * 100_000
    data = edited(lambda h: h["metadata"].update(note=Raw(b"\x9d" + block * 13)))
    assert refused(data) == "header holds more arrays and maps than its tensors can use"


def test_nesting_deeper_than_msgpacks_stack_is_refused():
    data = edited(lambda h: h["metadata"].update(note=Raw(b"\x91" * 5000 + b"\xc0")))
    assert refused(data).startswith("header is not valid msgpack")


# ---------------------------------------------------------------- byte order and the API's argument types

def test_tensor_bytes_are_little_endian_whatever_the_host(monkeypatch):
    tensor = torch.tensor([1.0, -2.5], dtype=torch.float32)
    little = codec.tensor_bytes(tensor)
    assert little == struct.pack("<2f", 1.0, -2.5)
    monkeypatch.setattr(sys, "byteorder", "big")  # the host's memory is now read as big-endian
    swapped = codec.tensor_bytes(tensor)
    assert swapped == struct.pack(">2f", 1.0, -2.5)
    assert torch.equal(bits.tensor_from_bytes(swapped, torch.float32, [2]).view(torch.int32), tensor.view(torch.int32))


def test_decode_of_a_path_names_load():
    with pytest.raises(SpecError, match=r"decode takes the bytes of a \.pc file, not str; to read a file by its path "
                                        r"use permcodec\.load\(path\)"):
        permcodec.decode(str(FIXTURE))


def test_an_open_file_builds_each_init_as_tensor_init_does_without_checking_it_again():
    """``PCFile`` takes each permuted record's init as the checks at open left it (``checked_tensor_init``);
    ``tensor_init`` checks every field again. On every committed fixture, blocks and levels included, they
    agree."""
    from permcodec import decoder

    compared = set()
    for path in sorted((Path(__file__).parent / "fixtures").rglob("*.pc")):
        f = permcodec.PCFile(path.read_bytes())
        for name in f.keys():
            record = f.record(name)
            if record["kind"] == "permuted":
                assert decoder.checked_tensor_init(record) == decoder.tensor_init(record), (path.name, name)
                compared.add(record["init"]["dist"] if "block" not in record else "block")
    assert {"block", "levels", "he_uniform"} <= compared
