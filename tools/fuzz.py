"""Fuzz the .pc decoder: a damaged or hostile file must fail with a PermcodecError, fast, in bounded memory.

    python tools/fuzz.py                                 # 100,000 cases on 2 workers, then a report
    python tools/fuzz.py --cases 5000 --seed 3 --time-limit 2 --jobs 1

Every case is one call of ``permcodec.decode`` under FUZZ_LIMITS (caps far
below the defaults, so that "memory stays within the caps" means something).
Cases come from two families, mixed:

- damage (seeded ``random``): bit flips, byte overwrites, inserts, deletes,
  truncation and splicing of the golden files in tests/fixtures/, with the
  CRCs left as they are; and the same kinds of damage with the CRCs
  recomputed, header edits, record reorders and section swaps, so that the
  checks behind the CRCs are reached too.
- hostile (hypothesis strategies, ``hostile_files``): files built from scratch
  with valid CRCs: records with wrong types, huge or empty shapes, unknown
  schemes, bad init params, zstd frames that declare huge or no sizes, lie
  about their size, are concatenated, skippable, legacy or followed by bytes,
  and msgpack headers with duplicate keys, extension types, bad UTF-8 or deep
  nesting.

A case passes when decode raises a PermcodecError, or returns exactly the
tensors the case expects (the golden tensors for damage, the header's claims
for hostile files; SHA-256 compared with tests/fixtures/fixtures.json), within
--time-limit seconds, with the worker's peak memory within the memory goal.
Anything else is a failure, saved with its bytes under runs/fuzz-failures/.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import hashlib
import json
import math
import multiprocessing
import queue
import random
import resource
import signal
import struct
import sys
import time
import traceback
from pathlib import Path

import msgpack
import zstandard
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import permcodec
from permcodec import codec, perm
from permcodec.format import container, indexcode, schemes
from permcodec.init import distributions
from permcodec.format.container import Limits

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAILURES = ROOT / "runs" / "fuzz-failures"

# Caps in force while fuzzing: a 2^20-element tensor, 2^22 elements per file, a 1 MiB header.
FUZZ_LIMITS = Limits(max_header_bytes=1 << 20, max_tensors=1024, max_dims=8, max_dim=2**20,
                     max_tensor_elements=2**20, max_total_elements=2**22)
# Memory goal: worker RSS after warm-up plus this many bytes per element the caps allow in one file.
BYTES_PER_ALLOWED_ELEMENT = 64
# Hard ceiling on a worker's data segment above its warm-up size: an allocation past it fails
# (and shows up as a non-PermcodecError) instead of taking the machine down.
DATA_CEILING = 2 << 30
# Largest case a worker can hand to the watchdog (a hung or killed worker's case is saved from it).
MAX_CASE_BYTES = 4 << 20
REPRODUCERS_PER_SIGNATURE = 3

ZSTD_MAGIC = 0xFD2FB528
BLOCK_MAX = 128 << 10
INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 255, 256, 65535, 2**20, 2**20 + 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                    2**63 - 1, 2**64 - 1, -1, -(2**31), -(2**63)]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xD4, 0xD9, 0xDC, 0xDE, 0xDF, 0xFF]


# ---------------------------------------------------------------- cases

@dataclasses.dataclass(frozen=True)
class Case:
    """One input to the decoder and what a successful decode must return.

    ``expect`` lists (name, dtype, shape, sha256) per tensor in file order; a
    sha256 of None means "any bits" (the case gives the decoder no way to know).
    ``must_fail`` says why the spec requires the decoder to reject the file, if it does.
    """

    generator: str
    data: bytes
    expect: tuple
    verify: bool = True
    must_fail: str | None = None


@dataclasses.dataclass(frozen=True)
class Fixture:
    name: str
    data: bytes
    header: dict
    sections: list
    expect: tuple  # the golden tensors: (name, dtype, shape, sha256)


def load_fixtures() -> list[Fixture]:
    digests = json.loads((FIXTURES / "fixtures.json").read_text())
    fixtures = []
    for path in sorted(FIXTURES.glob("*.pc")):
        data = path.read_bytes()
        header_length = container.PREAMBLE.unpack(data[:container.PREAMBLE_SIZE])[3]
        start = container.PREAMBLE_SIZE + header_length
        header = msgpack.unpackb(data[container.PREAMBLE_SIZE:start], raw=False)
        sections = [data[start + r["offset"]:start + r["offset"] + r["length"]] for r in header["tensors"]]
        expect = tuple((r["name"], r["dtype"], tuple(r["shape"]), bytes.fromhex(digests[path.stem][r["name"]]))
                       for r in header["tensors"])
        fixtures.append(Fixture(path.stem, data, header, sections, expect))
    return fixtures


def assemble(header_bytes: bytes, data_area: bytes, *, version: int = 1, flags: int = 0,
             header_length: int | None = None, header_crc: int | None = None) -> bytes:
    """A file from raw header bytes: the preamble's length and CRC are right unless overridden."""
    preamble = container.PREAMBLE.pack(container.MAGIC, version, flags,
                                       len(header_bytes) if header_length is None else header_length,
                                       container.crc32(header_bytes) if header_crc is None else header_crc)
    return preamble + header_bytes + data_area


def pack_header(records: list, metadata=None) -> bytes:
    return msgpack.packb({"format": "permcodec", "version": 1, "tensors": records, "metadata": metadata or {}},
                         use_bin_type=True)


def with_layout(records: list, sections: list) -> list:
    """Records with offset, length and crc32 recomputed from their sections."""
    out, offset = [], 0
    for record, section in zip(records, sections, strict=True):
        out.append({**record, "offset": offset, "length": len(section), "crc32": container.crc32(section)})
        offset += len(section)
    return out


def claims(records: list, shas=None) -> tuple:
    """What a successful decode must return for these records: their dtype, shape and a sha256."""
    shas = shas or [None] * len(records)
    out = []
    for record, sha in zip(records, shas):
        if not isinstance(record, dict):
            out.append((None, None, None, None))
            continue
        shape = record.get("shape")
        shape = tuple(shape) if isinstance(shape, list) else shape
        out.append((record.get("name"), record.get("dtype"), shape, sha))
    return tuple(out)


# ---------------------------------------------------------------- damage: byte mutations (seeded random)

def damage_position(rng: random.Random, fixture: Fixture) -> int:
    """A byte offset, aimed at the preamble, the header or the data area."""
    header_end = len(fixture.data) - sum(map(len, fixture.sections))
    region = rng.random()
    if region < 0.15:
        return rng.randrange(container.PREAMBLE_SIZE)
    if region < 0.6:
        return rng.randrange(container.PREAMBLE_SIZE, header_end)
    return rng.randrange(min(header_end, len(fixture.data) - 1), len(fixture.data))


def flip_bits(rng, data: bytearray, at) -> None:
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        position = at()
        data[position] ^= 1 << rng.randrange(8)


def overwrite_bytes(rng, data: bytearray, at) -> None:
    for _ in range(rng.choice([1, 1, 2, 4])):
        data[at()] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)


def insert_bytes(rng, data: bytearray, at) -> None:
    position = at()
    data[position:position] = rng.randbytes(rng.choice([1, 1, 2, 4, 8]))


def delete_bytes(rng, data: bytearray, at) -> None:
    position = at()
    del data[position:position + rng.choice([1, 1, 2, 4, 16])]


BYTE_MUTATIONS = (flip_bits, overwrite_bytes, insert_bytes, delete_bytes)


def mutate(rng, fixture: Fixture) -> Case:
    data = bytearray(fixture.data)
    mutation = rng.choice(BYTE_MUTATIONS)
    mutation(rng, data, lambda: min(damage_position(rng, fixture), len(data) - 1))
    return Case(f"damage:{mutation.__name__}", bytes(data), fixture.expect)


def truncate(rng, fixture: Fixture) -> Case:
    cut = rng.randrange(len(fixture.data)) if rng.random() < 0.7 else rng.randrange(32)
    return Case("damage:truncate", fixture.data[:cut], fixture.expect)


def extend(rng, fixture: Fixture) -> Case:
    return Case("damage:extend", fixture.data + rng.randbytes(rng.choice([1, 4, 64])), fixture.expect)


def splice(rng, fixture: Fixture, other: Fixture) -> Case:
    """A prefix of one golden file and a suffix of another (or of itself, shifted)."""
    data = fixture.data[:rng.randrange(len(fixture.data) + 1)] + other.data[rng.randrange(len(other.data) + 1):]
    return Case("damage:splice", data, fixture.expect)


def swap_sections(rng, fixture: Fixture) -> Case:
    """Two sections trade places in the data area; the header is untouched."""
    sections = list(fixture.sections)
    i, j = rng.randrange(len(sections)), rng.randrange(len(sections))
    sections[i], sections[j] = sections[j], sections[i]
    start = len(fixture.data) - sum(map(len, sections))
    return Case("damage:swap_sections", fixture.data[:start] + b"".join(sections), fixture.expect)


# ---------------------------------------------------------------- damage behind valid CRCs

def damage_section(rng, fixture: Fixture, verify: bool) -> Case:
    """One section damaged, its CRC recomputed: only the zstd, rank and SHA-256 checks remain."""
    sections = list(fixture.sections)
    index = rng.randrange(len(sections))
    section = bytearray(sections[index]) or bytearray(b"\0")
    mutation = rng.choice(BYTE_MUTATIONS)
    mutation(rng, section, lambda: rng.randrange(len(section)))
    sections[index] = bytes(section)
    records = with_layout(fixture.header["tensors"], sections)
    expect = fixture.expect if verify else claims(records)
    return Case(f"crc-fixed:section_{mutation.__name__}", assemble(pack_header(records), b"".join(sections)),
                expect, verify)


def damage_header_bytes(rng, fixture: Fixture, verify: bool) -> Case:
    """The header's msgpack bytes damaged, header_length and header CRC recomputed.

    The sections are unchanged, so a successful decode must give the golden
    bits under whatever names, dtypes and shapes the damaged header claims.
    """
    raw = bytearray(msgpack.packb(fixture.header, use_bin_type=True))
    mutation = rng.choice(BYTE_MUTATIONS)
    mutation(rng, raw, lambda: rng.randrange(len(raw)))
    return Case(f"crc-fixed:header_{mutation.__name__}", assemble(bytes(raw), b"".join(fixture.sections)),
                claims_of_header(bytes(raw), fixture, verify), verify)


def claims_of_header(raw: bytes, fixture: Fixture, verify: bool) -> tuple:
    """What a decode may return for the golden sections under a rewritten header ``raw``."""
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        records = header["tensors"]
        assert isinstance(records, list)
    except Exception:  # noqa: BLE001 - a header this parser cannot read must not decode at all
        return fixture.expect
    golden = [sha for *_, sha in fixture.expect]
    return claims(records, golden if verify and len(records) == len(golden) else None)


EDIT_VALUES = [None, True, 0, 1, -1, 2**20 + 1, 2**31 - 1, 2**32, 2**64 - 1, 1.0, float("nan"), "", "x", "delta",
               "raw", "permuted", "float32", "int32", "bool", "uint8", "float64", "philox4x32-10", "shuffle-zstd",
               "sparse", "shared", "uniform", b"", b"\0" * 32, [], [0], [1], [2, 3], [3, 2], [0, 2**20, 2**20],
               [2**20], [1] * 9, {}, {"a": 1}, {"bound": 1.0}, {"bound": 0.1}, {"std": -1.0},
               {"low": 1.0, "high": 0.0}, msgpack.ExtType(1, b"x"), msgpack.Timestamp(0)]


def leaf_paths(obj, path=()):
    """Every (path, value) inside nested dicts and lists, containers included."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from leaf_paths(value, path + (key,))


def get_at(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def set_at(obj, path, value):
    if not path:
        return value
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[path[0]] = set_at(copy[path[0]], path[1:], value)
    return copy


def edit_header(rng, fixture: Fixture, verify: bool) -> Case:
    """One value anywhere in the header replaced, or a key or item dropped or added; CRCs stay valid.

    The sections are unchanged, so a successful decode must still give the
    golden bits; dtype and shape must be what the edited header claims.
    """
    path, _ = rng.choice(list(leaf_paths(fixture.header))[1:])
    action = rng.random()
    if action < 0.8:
        header = set_at(fixture.header, path, rng.choice(EDIT_VALUES))
    else:
        parent = get_at(fixture.header, path[:-1])
        edited = dict(parent) if isinstance(parent, dict) else list(parent)
        if action < 0.9:
            del edited[path[-1]]
        elif isinstance(edited, dict):
            edited[rng.choice(["extra", "codec", "init", "scheme", b"name", 0])] = rng.choice(EDIT_VALUES)
        else:
            edited.insert(path[-1], rng.choice(EDIT_VALUES))
        header = set_at(fixture.header, path[:-1], edited)
    raw = msgpack.packb(header, use_bin_type=True)
    return Case("crc-fixed:edit_header", assemble(raw, b"".join(fixture.sections)),
                claims_of_header(raw, fixture, verify), verify)


def reorder_records(rng, fixture: Fixture, verify: bool) -> Case:
    """Records (with their sections) shuffled, dropped, duplicated or cross-wired; layout recomputed."""
    pairs = list(zip(fixture.header["tensors"], fixture.sections, (e[3] for e in fixture.expect)))
    action = rng.randrange(4)
    if action == 0:
        rng.shuffle(pairs)
    elif action == 1 and len(pairs) > 1:
        del pairs[rng.randrange(len(pairs))]
    elif action == 2:
        copies = rng.choice([2, 8, 64])
        pairs = [({**record, "name": f"{record['name']}#{k}"}, section, sha)
                 for k in range(copies) for record, section, sha in pairs[:2]]
    else:  # record i gets section j
        i, j = rng.randrange(len(pairs)), rng.randrange(len(pairs))
        pairs[i] = (pairs[i][0], pairs[j][1], pairs[i][2])
    records = with_layout([p[0] for p in pairs], [p[1] for p in pairs])
    shas = [p[2] for p in pairs] if verify else None
    name = ["shuffle", "drop", "replicate", "crosswire"][action]
    return Case(f"crc-fixed:{name}_records", assemble(pack_header(records), b"".join(p[1] for p in pairs)),
                claims(records, shas), verify)


def damage_case(seed: int, index: int, fixtures: list[Fixture]) -> Case:
    """Case ``index`` of the damage family: the same (seed, index) always gives the same bytes."""
    rng = random.Random(f"{seed}/{index}")
    fixture = rng.choices(fixtures, weights=[1 if f.name == "conv_layers" else 3 for f in fixtures])[0]
    verify = rng.random() < 0.9
    kind = rng.random()
    if kind < 0.40:
        case = mutate(rng, fixture)
    elif kind < 0.45:
        case = truncate(rng, fixture)
    elif kind < 0.47:
        case = extend(rng, fixture)
    elif kind < 0.52:
        case = splice(rng, fixture, rng.choice(fixtures))
    elif kind < 0.55:
        case = swap_sections(rng, fixture)
    elif kind < 0.70:
        return damage_section(rng, fixture, verify)
    elif kind < 0.80:
        return damage_header_bytes(rng, fixture, verify)
    elif kind < 0.93:
        return edit_header(rng, fixture, verify)
    else:
        return reorder_records(rng, fixture, verify)
    # Byte damage behind the CRCs: a decode may only succeed into the golden file it still equals.
    same = next((f for f in fixtures if f.data == case.data), None)
    return dataclasses.replace(case, expect=same.expect if same else fixture.expect, verify=verify)


# ---------------------------------------------------------------- zstd frames, by hand

def zstd_frame(blocks, content_size, *, single_segment: bool = True, window_log: int = 20, dict_id: int = 0,
               checksum: bytes | None = None, reserved_bit: bool = False) -> bytes:
    """A zstd frame (RFC 8878 3.1.1) from ("raw", bytes) / ("rle", byte, count) / ("reserved", bytes) blocks.

    ``content_size`` None writes no Frame_Content_Size; any other value is
    written as is, whatever the blocks hold.
    """
    if content_size is None:
        single_segment, fcs_flag, fcs = False, 0, b""
    elif single_segment and content_size < 256:
        fcs_flag, fcs = 0, bytes([content_size])
    elif 256 <= content_size < 65536 + 256:
        fcs_flag, fcs = 1, struct.pack("<H", content_size - 256)
    elif content_size < 2**32:
        fcs_flag, fcs = 2, struct.pack("<I", content_size)
    else:
        fcs_flag, fcs = 3, struct.pack("<Q", content_size)
    did_flag, did = (0, b"") if dict_id == 0 else (3, struct.pack("<I", dict_id))
    descriptor = fcs_flag << 6 | single_segment << 5 | reserved_bit << 3 | (checksum is not None) << 2 | did_flag
    header = struct.pack("<IB", ZSTD_MAGIC, descriptor)
    header += b"" if single_segment else bytes([(window_log - 10) << 3])
    body = []
    blocks = list(blocks) or [("raw", b"")]
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        if block[0] == "rle":
            block_type, size, payload = 1, block[2], bytes([block[1]])
        else:
            block_type, size, payload = (0 if block[0] == "raw" else 3), len(block[1]), block[1]
        body.append(struct.pack("<I", last | block_type << 1 | size << 3)[:3] + payload)
    return header + fcs + did + b"".join(body) + (checksum or b"")


def raw_blocks(payload: bytes) -> list:
    return [("raw", payload[i:i + BLOCK_MAX]) for i in range(0, len(payload), BLOCK_MAX)]


def rle_blocks(byte: int, count: int) -> list:
    return [("rle", byte, min(BLOCK_MAX, count - i)) for i in range(0, count, BLOCK_MAX)]


def compress(payload: bytes, level: int = 1, content_size: bool = True, checksum: bool = False) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=content_size,
                                    write_checksum=checksum).compress(payload)


# Sections that specs/format.md section 10 (or RFC 8878) says a decoder MUST reject, whatever the payload.
REJECTED_FRAMES = {"no_size", "declares_huge", "long", "rle_long", "bad_checksum", "dict_id", "reserved_bit",
                   "reserved_block", "skippable", "skippable_then_valid", "legacy", "two_frames", "trailing", "empty",
                   "truncated"}
FRAME_KINDS = ["valid"] * 12 + ["valid_checksum", "crafted", "no_size", "declares_other", "declares_huge", "short",
                                "long", "rle_long", "bad_checksum", "dict_id", "big_window", "reserved_bit",
                                "reserved_block", "skippable", "skippable_then_valid", "legacy", "two_frames",
                                "trailing", "empty", "random", "flipped", "truncated"]


def frame_for(kind: str, payload: bytes, rng: random.Random) -> bytes:
    """A section holding ``payload`` the way ``kind`` says (most kinds are invalid on purpose)."""
    size = len(payload)
    if kind == "valid":
        return compress(payload, rng.choice([1, 3, 19]) if size <= 1 << 16 else 1)
    if kind == "valid_checksum":
        return compress(payload, checksum=True)
    if kind == "crafted":
        return zstd_frame(raw_blocks(payload), size, single_segment=rng.random() < 0.5)
    if kind == "no_size":
        return compress(payload, content_size=False)
    if kind == "declares_other":
        return zstd_frame(raw_blocks(payload), max(0, size + rng.choice([-1, 1, 7])))
    if kind == "declares_huge":
        return zstd_frame(raw_blocks(payload[:64]), rng.choice([2**20 * 4, 2**31, 2**40, 2**64 - 1]))
    if kind == "short":
        return zstd_frame(raw_blocks(payload[:max(0, size - rng.choice([1, 2, size or 1]))]), size)
    if kind == "long":
        return zstd_frame(raw_blocks(payload + rng.randbytes(rng.choice([1, 8]))), size)
    if kind == "rle_long":
        return zstd_frame(rle_blocks(0, size + rng.choice([1, 2**20, 2**24])), size, single_segment=False,
                          window_log=rng.choice([17, 20, 27]))
    if kind == "bad_checksum":
        frame = bytearray(compress(payload, checksum=True))
        frame[-1 - rng.randrange(4)] ^= 1 << rng.randrange(8)
        return bytes(frame)
    if kind == "dict_id":
        return zstd_frame(raw_blocks(payload), size, dict_id=rng.randrange(1, 2**32))
    if kind == "big_window":
        return zstd_frame(raw_blocks(payload), size, single_segment=False, window_log=rng.choice([28, 31, 41]))
    if kind == "reserved_bit":
        return zstd_frame(raw_blocks(payload), size, reserved_bit=True)
    if kind == "reserved_block":
        return zstd_frame([("reserved", payload[:64])], size)
    if kind in ("skippable", "skippable_then_valid"):
        junk = rng.randbytes(rng.choice([0, size % 64, 8]))
        skippable = struct.pack("<II", 0x184D2A50 + rng.randrange(16), len(junk)) + junk
        return skippable + (compress(payload) if kind == "skippable_then_valid" else b"")
    if kind == "legacy":
        return struct.pack("<I", rng.choice([0xFD2FB522, 0xFD2FB525, 0xFD2FB526, 0xFD2FB527])) + rng.randbytes(16)
    if kind == "two_frames":
        half = rng.randrange(size + 1)
        return compress(payload[:half]) + compress(payload[half:])
    if kind == "trailing":
        return compress(payload) + rng.choice([b"\0", rng.randbytes(4), compress(b"")])
    if kind == "empty":
        return b""
    if kind == "random":
        return rng.randbytes(rng.choice([1, 4, 16, 64]))
    frame = bytearray(compress(payload))
    if kind == "flipped":
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return bytes(frame)
    return bytes(frame[:rng.randrange(len(frame))])  # truncated


# ---------------------------------------------------------------- hostile files (hypothesis)

class Pairs(list):
    """A msgpack map written from (key, value) pairs, so that it may hold a key twice."""


class BadUtf8(bytes):
    """Bytes written as a msgpack str, so that the str holds invalid UTF-8."""


class Deep(int):
    """An array nested this many levels deep."""


def pack_value(obj) -> bytes:
    """msgpack bytes, with Pairs, BadUtf8 and Deep written by hand wherever they sit."""
    if isinstance(obj, BadUtf8):
        return b"\xd9" + bytes([len(obj)]) + bytes(obj)
    if isinstance(obj, Deep):
        return b"\x91" * int(obj) + b"\xc0"
    if isinstance(obj, (Pairs, dict)):
        pairs = obj if isinstance(obj, Pairs) else list(obj.items())
        head = bytes([0x80 | len(pairs)]) if len(pairs) < 16 else b"\xde" + struct.pack(">H", len(pairs))
        return head + b"".join(pack_value(k) + pack_value(v) for k, v in pairs)
    if isinstance(obj, list):
        head = bytes([0x90 | len(obj)]) if len(obj) < 16 else b"\xdc" + struct.pack(">H", len(obj))
        return head + b"".join(pack_value(v) for v in obj)
    return msgpack.packb(obj, use_bin_type=True)


# Hypothesis draws the structure (what kind of tensor, which fault, which frame); a seeded random.Random,
# itself drawn from hypothesis, fills in bulk values. Strategies are built once here: a draw costs ~0.1 ms,
# so a case makes a dozen or two of them.
SEEDS = st.integers(0, 2**32 - 1)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.sampled_from(INTERESTING_INTS),
                    st.floats(), st.text(max_size=4), st.binary(max_size=8),
                    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
                    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)), st.just(BadUtf8(b"\xff\xfe")))
JUNK = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                 st.dictionaries(st.one_of(st.text(max_size=3), st.binary(max_size=3), st.integers(0, 3)), SCALARS,
                                 max_size=3))
KINDS = st.sampled_from(["permuted", "permuted", "raw"])
DTYPES = st.sampled_from(sorted(container.DTYPE_SIZES))
SMALL_SHAPES = st.lists(st.integers(0, 5), min_size=1, max_size=3)
# Hypothesis draws the first item of a sampled_from (and 0 from integers) far more often than the others,
# so the common choice comes first: here the cheap-to-reject shape, in the fault lists "no fault".
BIG_SHAPES = st.sampled_from([[2**20 + 1], [1, 2**20], [2**10, 2**10], [2**20], [2**19, 2], [2**10, 2**10 + 1],
                              [2**20, 0], [0, 2**20], [0, 2**20, 2**20], [0, 2**20, 2**7], [1] * 9,
                              [2**31 - 1], [2**32], [2**64 - 1]])
DISTS = st.sampled_from(distributions.DISTRIBUTIONS)
FRAMES = st.sampled_from(FRAME_KINDS)
INDEX_SCHEMES = st.sampled_from(["delta", "delta", "exact", "multiset"])
ARRANGEMENT_DAMAGE = ("valid", "valid", "flip", "truncate", "random")
SHA_KINDS = st.sampled_from(["truth"] * 17 + ["random", "short", "junk"])
METADATA = st.one_of(st.just({}), st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))

# Faults: one draw per record and one per file picks at most one; None (no fault) is the common draw.
RECORD_FAULTS = st.sampled_from([None] * 26 + [
    "kind", "dtype", "shape", "name", "scheme", "scheme_params", "codec", "drop_key", "extra_key", "layout",
    "init_key", "init_value", "params_value", "params_key", "params_junk", "density", "sparse_base"])
FILE_FAULTS = st.sampled_from([None] * 72 + [
    "drop_top_key", "extra_top_key", "format", "version", "metadata", "tensors",
    "duplicate_top_key", "duplicate_record_key", "bad_utf8", "deep_nesting", "trailing_object", "cut_header",
    "preamble_version", "preamble_flags", "header_length", "header_crc", "trailing_bytes", "truncated_data"])
RECORD_FAULT_VALUES = {
    "kind": st.one_of(st.sampled_from(["Permuted", "raw ", ""]), JUNK),
    "dtype": st.one_of(DTYPES, st.sampled_from(["float", "int4", "complex64"]), JUNK),
    "shape": st.one_of(st.just([]), JUNK, st.lists(st.sampled_from(INTERESTING_INTS), max_size=9)),
    "name": st.one_of(st.sampled_from(["", "t0", "weight", "a.b", "é", "\x00", " "]), JUNK),
    "scheme": st.one_of(st.sampled_from(["delta2", "", "raw", "DELTA"]), JUNK),
    "scheme_params": st.one_of(st.sampled_from([{"width": 2}, [], None]), JUNK),
    "codec": st.one_of(st.sampled_from(["zstd", "shuffle", ""]), JUNK),
    "extra_key": st.tuples(st.sampled_from(["extra", "init", "codec", "scheme", b"name"]), JUNK),
    "layout": st.tuples(st.sampled_from(["offset", "length", "crc32"]),
                        st.one_of(st.sampled_from(["+1", "-1", 0, 2**32 - 1, 2**64 - 1, -1, True]), JUNK)),
    "init_key": st.sampled_from(["rng", "seed", "stream", "dist", "params", "name", "shape"]),
    "init_value": st.tuples(st.sampled_from(["rng", "seed", "stream", "dist"]),
                            st.one_of(st.sampled_from(INTERESTING_INTS + ["philox4x32-20", "he_unifrom", ""]),
                                      JUNK)),
    "params_value": st.one_of(st.sampled_from([1.0, 0.5, -1.0, 0.0, -0.0, 3.4028234663852886e38, 1e39, 0.1,
                                               float("inf"), float("nan"), 2.0**-149, 1, 2**64 - 1, True, 2**31]),
                              st.floats(width=32), st.floats()),
    "params_key": st.sampled_from(["extra", "mean", "std", "low", "high", "bound", "density", "keep_below"]),
    "params_junk": JUNK,
    "density": st.sampled_from([1.0, 0.30000001192092896, 2.0**-32, 2.0**-33, 1e-10, 0.0, 1.5, -0.5]),
    "sparse_base": st.one_of(st.sampled_from([
        {"dist": "normal"}, {"dist": "uniform", "params": {"low": 1.0, "high": 0.0}},
        {"dist": "sparse", "params": {"density": 0.5, "keep_below": 2**31}}]), JUNK),
}
FILE_FAULT_VALUES = {
    "extra_top_key": st.tuples(st.sampled_from(["extra", b"format", "Format"]), JUNK),
    "format": st.one_of(st.sampled_from(["PERMCODEC", "", "safetensors"]), JUNK),
    "version": st.one_of(st.sampled_from([0, 2, True, 1.0, "1", [1]]), JUNK),
    "metadata": st.one_of(st.sampled_from([{"a": 1}, {b"a": "b"}, {"a": None}]), JUNK),
    "tensors": JUNK,
    "deep_nesting": st.sampled_from([100, 1023, 1024, 1025, 100_000]),
    "trailing_object": st.sampled_from([b"\xc0", b"\x00", b"\x80"]),
    "preamble_version": st.sampled_from([0, 2, 65535]),
    "preamble_flags": st.sampled_from([1, 0x8000, 65535]),
    "header_length": st.sampled_from([-1, 1, 2**20, 2**32]),
    "trailing_bytes": st.sampled_from([b"\0", b"\x28\xb5\x2f\xfd"]),
}


def init_record(dist: str, rng: random.Random) -> dict:
    """A valid init record for ``dist`` (params as the reference encoder derives them)."""
    extra = {}
    if dist in distributions.MASKED:
        extra["density"] = rng.choice([0.5, 0.1, 1.0, 0.9])
    if dist == "shared":
        extra["value"] = rng.choice([0.5, -0.25, 3.0])
    if dist == "sparse":
        extra["base"] = rng.choice(distributions.DENSE)
    params = distributions.make_params(dist, (4, 4), **extra)
    return {"rng": "philox4x32-10", "seed": rng.randrange(2**64), "stream": rng.randrange(2**32), "dist": dist,
            "params": params}


def apply_record_fault(record: dict, fault: str, value, rng: random.Random) -> None:
    """Break ``record`` (in place) the way ``fault`` says, with ``value`` drawn for it."""
    init = record.get("init") if isinstance(record.get("init"), dict) else {}
    params = init.get("params") if isinstance(init.get("params"), dict) else {}
    if fault in ("kind", "dtype", "shape", "name", "scheme", "scheme_params", "codec"):
        record[fault] = value
    elif fault == "drop_key":
        record.pop(rng.choice(sorted(record)))
    elif fault in ("extra_key", "layout"):
        record[value[0]] = value[1]
    elif fault == "init_key":
        init.pop(value, None)
    elif fault == "init_value":
        init[value[0]] = value[1]
    elif fault == "params_value" and params:
        params[rng.choice(sorted(params))] = value
    elif fault == "params_key":
        params[value] = params.pop(value, 0.5) if rng.random() < 0.5 else 1.0
    elif fault == "params_junk" and init:
        init["params"] = value
    elif fault == "density" and "density" in params:
        params["density"] = value
    elif fault == "sparse_base" and "base" in params:
        params["base"] = value


@st.composite
def tensor_records(draw, index: int, big: bool):
    """(record, section, sha256 of what the section decodes to or None, layout fault, frame kind)."""
    kind = draw(KINDS)
    record = {"name": f"t{index}", "kind": kind, "dtype": "float32" if kind == "permuted" else draw(DTYPES),
              "shape": draw(BIG_SHAPES) if big else draw(SMALL_SHAPES)}
    rng = random.Random(draw(SEEDS))
    if kind == "permuted":
        record.update(init=init_record(draw(DISTS), rng), scheme=draw(INDEX_SCHEMES), scheme_params={})
        if record["scheme"] != "delta":
            record["scheme_params"] = {"lanes": rng.randint(1, 3)}
    else:
        record["codec"] = "shuffle-zstd"
    fault = draw(RECORD_FAULTS)
    if fault is not None and fault != "layout":
        apply_record_fault(record, fault, draw(RECORD_FAULT_VALUES[fault]) if fault in RECORD_FAULT_VALUES
                           else None, rng)
    section, truth, frame_kind = section_for(record, draw(FRAMES), rng)
    sha_kind = draw(SHA_KINDS)
    record["sha256"] = draw(JUNK) if sha_kind == "junk" else rng.randbytes(31) if sha_kind == "short" \
        else truth if sha_kind == "truth" and truth else rng.randbytes(32)
    layout_fault = draw(RECORD_FAULT_VALUES["layout"]) if fault == "layout" else None
    truth = truth if frame_kind in ("valid", "valid_checksum", "crafted") else None
    return record, section, truth, layout_fault, frame_kind


def payload_size(record: dict) -> int | None:
    """The decoded payload size the record implies, or None if the record is too broken to say."""
    shape, dtype = record.get("shape"), record.get("dtype")
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                            for s in shape)):
        return None
    if record.get("kind") == "permuted":
        if not shape:
            return None
        rows, n = perm.row_shape(shape)
        return rows * n * schemes.index_width(n)
    if not isinstance(dtype, str) or dtype not in container.DTYPE_SIZES:
        return None
    return math.prod(shape) * container.DTYPE_SIZES[dtype]


def permuted_truth(record: dict, rng: random.Random):
    """(payload, sha256 of the decoded tensor) for a small permuted record with a valid init, else None.

    The payload moves each row to a random permutation of its initial values.
    """
    import torch

    try:
        init = codec.init_of(record)
        rows, n = perm.row_shape(init.shape)
        if rows * n > 4096 or n > 4096:
            return None
        initial = codec.initial_rows(init)
    except Exception:  # noqa: BLE001 - the decoder judges this record; the generator only skips it
        return None
    generator = torch.Generator().manual_seed(rng.randrange(2**63))
    final = torch.argsort(torch.rand(rows, n, generator=generator), dim=1)
    codes = indexcode.zigzag((final - initial.ranks).reshape(-1).numpy())
    payload = indexcode.to_byte_planes(codes, schemes.index_width(n))
    tensor = initial.rows.gather(1, initial.order.gather(1, final)).reshape(init.shape)
    return payload, codec.sha256_of(tensor)


def raw_payload(dtype: str, size: int, rng: random.Random) -> bytes:
    """Element bytes for a raw record: random when small, a repeated pattern when big (bool: mostly 0/1)."""
    if dtype == "bool":
        values = [0, 1] if rng.random() < 0.9 else [0, 1, 2, 255]
        return bytes(rng.choice(values) for _ in range(size)) if size <= 4096 else bytes(size)
    if size <= 4096:
        return rng.randbytes(size)
    pattern = rng.randbytes(rng.choice([1, 8]))
    return (pattern * (size // len(pattern) + 1))[:size]


def arrangement_section(record: dict, rng: random.Random):
    """(section, sha256 or None, how it was made) for scheme exact or multiset: a real encoding of a random
    permutation (its lanes written into the record), damaged or not, or random words."""
    import torch

    how = rng.choice(ARRANGEMENT_DAMAGE)
    section = None
    try:
        init = codec.init_of(record)
        rows, n = perm.row_shape(init.shape)
        if rows * n <= 4096 and n <= 4096 and how != "random":
            initial = codec.initial_rows(init)
            generator = torch.Generator().manual_seed(rng.randrange(2**63))
            order = torch.argsort(torch.rand(rows, n, generator=generator), dim=1)
            trained = initial.rows.gather(1, order)
            _, params, section = schemes.encode_best(perm.SortedRows.of(trained), initial,
                                                     schemes.LEVELS["fast"], record["scheme"])
            record["scheme_params"] = params
            truth = codec.sha256_of(trained.reshape(init.shape))
    except Exception:  # noqa: BLE001 - the decoder judges this record; the generator only skips it
        section = None
    if section is None:
        lanes = rng.randint(1, 3)
        lengths = [rng.choice([0, 1, 2, 3, 5]) for _ in range(lanes)]
        words = rng.randbytes(4 * sum(lengths) + rng.choice([0, 0, 1, 4]))
        return struct.pack(f"<{lanes}I", *lengths) + words, None, "random"
    if how == "flip":
        at = rng.randrange(len(section))
        return section[:at] + bytes([section[at] ^ (1 << rng.randrange(8))]) + section[at + 1:], None, how
    if how == "truncate":
        return section[:rng.randrange(len(section))], None, how
    return section, truth, "valid"


def section_for(record: dict, frame_kind: str, rng: random.Random):
    """(section, sha256 of the tensor a valid section decodes to or None, frame kind used)."""
    if record.get("kind") == "permuted" and record.get("scheme") in ("exact", "multiset"):
        return arrangement_section(record, rng)
    size, truth, payload = payload_size(record), None, None
    if size is not None and record.get("kind") == "permuted" and size <= 4 << 20:
        made = permuted_truth(record, rng)
        payload, truth = made if made else (bytes(size), None)
    elif size is not None and size <= 8 << 20:
        payload = raw_payload(record["dtype"], size, rng)
        truth = hashlib.sha256(payload).digest()
        payload = indexcode.shuffle_bytes(payload, container.DTYPE_SIZES[record["dtype"]])
    if payload is None:
        section = compress(rng.randbytes(rng.choice([0, 4, 16]))) if rng.random() < 0.5 else rng.randbytes(8)
        return section, None, "unknown-size"
    return frame_for(frame_kind, payload, rng), truth, frame_kind


@st.composite
def hostile_files(draw, verify=None):
    """A hostile .pc file, its CRCs valid unless a fault says otherwise, as a Case."""
    count = draw(st.integers(0, 4))
    big_at = draw(st.integers(0, 199)) - 196  # a big tensor in about one file out of a hundred
    made = [draw(tensor_records(i, i == big_at)) for i in range(count)]
    records = with_layout([m[0] for m in made], [m[1] for m in made])
    for record, (*_, layout_fault, _) in zip(records, made):
        if layout_fault:
            key, value = layout_fault
            record[key] = max(0, record[key] + int(value)) if value in ("+1", "-1") else value
    header = {"format": "permcodec", "version": 1, "tensors": records, "metadata": draw(METADATA)}
    fault = draw(FILE_FAULTS)
    value = draw(FILE_FAULT_VALUES[fault]) if fault in FILE_FAULT_VALUES else None
    rng = random.Random(draw(SEEDS))
    header_bytes, data_area, preamble = file_with_fault(header, b"".join(m[1] for m in made), fault, value, rng)
    verify = draw(st.integers(0, 7)) > 0 if verify is None else verify
    shas = [m[2] if m[2] is not None else (r.get("sha256") if verify else None) for m, r in zip(made, records)]
    rejected = [f"tensor {i}'s section is a {m[4]!r} zstd frame" for i, m in enumerate(made) if m[4] in REJECTED_FRAMES]
    return Case("hostile", assemble(header_bytes, data_area, **preamble), claims(records, shas), verify,
                "; ".join(rejected) or None)


def file_with_fault(header: dict, data_area: bytes, fault, value, rng: random.Random):
    """(header bytes, data area, preamble overrides) of a file broken the way ``fault`` says."""
    tensors, preamble = header["tensors"], {}
    if fault == "drop_top_key":
        header.pop(rng.choice(sorted(header)))
    elif fault == "extra_top_key":
        header[value[0]] = value[1]
    elif fault in ("format", "version", "metadata", "tensors"):
        header[fault] = value
    elif fault == "preamble_version":
        preamble["version"] = value
    elif fault == "preamble_flags":
        preamble["flags"] = value
    elif fault == "header_crc":
        preamble["header_crc"] = rng.randrange(2**32)
    elif fault == "trailing_bytes":
        data_area += value
    elif fault == "truncated_data" and data_area:
        data_area = data_area[:rng.randrange(len(data_area))]
    if fault == "duplicate_top_key":
        key = rng.choice(sorted(header))
        header_bytes = pack_value(Pairs([*header.items(), (key, header[key])]))
    elif fault == "duplicate_record_key" and tensors:
        key = rng.choice(sorted(tensors[0], key=repr))
        twice = Pairs([*tensors[0].items(), (key, tensors[0][key] if rng.random() < 0.5 else None)])
        header_bytes = pack_value({**header, "tensors": [twice, *tensors[1:]]})
    elif fault == "bad_utf8":
        header_bytes = pack_value({**header, "metadata": {"k": BadUtf8(b"\xc3\x28")}})
    elif fault == "deep_nesting":
        header_bytes = pack_value({**header, "metadata": Deep(value)})
    elif fault == "trailing_object":
        header_bytes = pack_value(header) + value
    elif fault == "cut_header":
        header_bytes = pack_value(header)[:-1]
    else:
        header_bytes = pack_value(header)
    if fault == "header_length":
        preamble["header_length"] = min(max(len(header_bytes) + value, 0), 2**32 - 1)
    return header_bytes, data_area, preamble


# ---------------------------------------------------------------- running one case

class CaseTimeout(BaseException):
    """A case ran past the hang limit (raised by SIGALRM inside the worker)."""


@dataclasses.dataclass
class Outcome:
    outcome: str              # "decoded OK" or the exception's class name
    seconds: float
    problem: str | None       # None, "crash", "hang", "silent corruption", "accepted invalid file"
    detail: str = ""
    signature: str = ""       # groups failures that share a cause


def describe(tensors) -> tuple:
    return tuple((name, codec.DTYPE_NAMES.get(t.dtype), tuple(t.shape), hashlib.sha256(codec.tensor_bytes(t)).digest())
                 for name, t in tensors.items())


def silent_corruption(expect: tuple, got: tuple) -> str | None:
    """Why ``got`` (decoded tensors) is not what the case expects, or None if it is."""
    if len(got) != len(expect):
        return f"decoded {len(got)} tensors, expected {len(expect)}"
    for (name, dtype, shape, sha), (got_name, got_dtype, got_shape, got_sha) in zip(expect, got):
        if (name, dtype, shape) != (got_name, got_dtype, got_shape):
            return f"tensor {got_name!r}: decoded {got_dtype} {got_shape}, expected {name!r} {dtype} {shape}"
        if sha is not None and sha != got_sha:
            return f"tensor {name!r}: decoded bits differ from the expected SHA-256"
    return None


def failure_signature(err: BaseException) -> str:
    """Exception class and the innermost frame inside permcodec (or the innermost frame at all)."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "permcodec" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(err).__name__} at {where}"


def run_case(case: Case, limits: Limits = FUZZ_LIMITS, hang_limit: float = 0.0) -> Outcome:
    """Decode ``case.data`` and judge the result; never raises (except KeyboardInterrupt)."""
    if hang_limit:
        signal.setitimer(signal.ITIMER_REAL, hang_limit)
    start = time.perf_counter()
    try:
        tensors = permcodec.decode(case.data, verify=case.verify, limits=limits)
        seconds = time.perf_counter() - start
    except permcodec.PermcodecError as err:
        return Outcome(type(err).__name__, time.perf_counter() - start, None)
    except CaseTimeout:
        return Outcome("hang", time.perf_counter() - start, "hang", f"still running after {hang_limit} s",
                       "hang")
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - anything but a PermcodecError is the finding
        return Outcome(type(err).__name__, time.perf_counter() - start, "crash",
                       "".join(traceback.format_exception(err)), failure_signature(err))
    finally:
        if hang_limit:
            signal.setitimer(signal.ITIMER_REAL, 0)
    wrong = silent_corruption(case.expect, describe(tensors))
    if wrong:
        return Outcome("decoded OK", seconds, "silent corruption", wrong, f"silent corruption ({case.generator})")
    if case.must_fail:
        return Outcome("decoded OK", seconds, "accepted invalid file", case.must_fail,
                       case.must_fail.split("; ")[0].split(" is ")[-1])
    return Outcome("decoded OK", seconds, None)


def hypothesis_cases(count: int, batch_seed: int, on_case) -> None:
    """Draw ``count`` hostile files from hypothesis and hand each to ``on_case``."""

    @hypothesis_seed(batch_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(hostile_files())
    def draw(case):
        on_case(case)

    draw()


# ---------------------------------------------------------------- workers

PROBLEMS_NOT_PERMCODEC = ("crash", "hang", "worker died")


@dataclasses.dataclass
class Tally:
    """What one worker saw; tallies add up."""

    cases: int = 0
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    generators: dict = dataclasses.field(default_factory=dict)   # generator -> Counter(cases, ok, failures)
    failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (problem, signature)
    examples: dict = dataclasses.field(default_factory=dict)    # (problem, signature) -> [reproducer path]
    slowest: tuple = (0.0, "", b"")                              # seconds, generator, case bytes
    over_time: int = 0
    peak_rss: int = 0                                            # bytes
    baseline_rss: int = 0                                        # bytes, after warm-up
    lost: int = 0                                                # cases lost with a killed worker

    def add(self, other: "Tally") -> None:
        self.cases += other.cases
        self.outcomes.update(other.outcomes)
        for name, counts in other.generators.items():
            self.generators.setdefault(name, collections.Counter()).update(counts)
        self.failures.update(other.failures)
        for key, paths in other.examples.items():
            mine = self.examples.setdefault(key, [])
            mine.extend([path for path in paths if path not in mine][:REPRODUCERS_PER_SIGNATURE - len(mine)])
        self.slowest = max(self.slowest, other.slowest, key=lambda s: s[0])
        self.over_time += other.over_time
        self.peak_rss = max(self.peak_rss, other.peak_rss)
        self.baseline_rss = max(self.baseline_rss, other.baseline_rss)
        self.lost += other.lost

    def count(self, problems) -> int:
        return sum(n for (problem, _), n in self.failures.items() if problem in problems)


def save_case(out: Path, label: str, data: bytes, detail: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{label}-{hashlib.sha256(data).hexdigest()[:12]}"
    (out / f"{stem}.pc").write_bytes(data)
    (out / f"{stem}.txt").write_text(detail + "\n")
    return str((out / f"{stem}.pc").relative_to(ROOT) if out.is_relative_to(ROOT) else out / f"{stem}.pc")


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text).split())[:60]


class Judge:
    """Runs cases and keeps the tally; saves a few reproducers per kind of failure."""

    def __init__(self, out: Path, time_limit: float, hang_limit: float = 0.0, memory_goal: int = 0,
                 inflight=None):
        self.out, self.time_limit, self.hang_limit = out, time_limit, hang_limit
        self.memory_goal, self.inflight = memory_goal, inflight
        self.tally = Tally()
        self.memory_flagged = False

    def __call__(self, case: Case) -> Outcome:
        if self.inflight is not None:
            self.inflight.hold(case)
        result = run_case(case, hang_limit=self.hang_limit)
        if self.inflight is not None:
            self.inflight.clear()
        tally = self.tally
        tally.cases += 1
        tally.outcomes[result.outcome] += 1
        counts = tally.generators.setdefault(case.generator, collections.Counter())
        counts["cases"] += 1
        counts["decoded OK"] += result.outcome == "decoded OK"
        if result.seconds > tally.slowest[0]:
            tally.slowest = (result.seconds, case.generator, case.data)
        problems = [(result.problem, result.signature, result.detail)] if result.problem else []
        if result.seconds > self.time_limit:
            tally.over_time += 1
            problems.append(("slow", f"over {self.time_limit:g} s ({case.generator})",
                             f"{result.seconds:.3f} s, outcome {result.outcome}"))
        if self.memory_goal and not self.memory_flagged and rss_bytes() > self.memory_goal:
            self.memory_flagged = True
            problems.append(("memory", f"worker peak memory over the goal ({case.generator})",
                             f"worker RSS reached {rss_bytes() >> 20} MiB, goal {self.memory_goal >> 20} MiB"))
        for problem, signature, detail in problems:
            counts["failures"] += 1
            self.record_failure(problem, signature, case, detail)
        return result

    def record_failure(self, problem: str, signature: str, case: Case, detail: str) -> None:
        key = (problem, signature)
        self.tally.failures[key] += 1
        paths = self.tally.examples.setdefault(key, [])
        if len(paths) < REPRODUCERS_PER_SIGNATURE:
            text = f"{problem}: {signature}\ngenerator: {case.generator}\nverify: {case.verify}\n\n{detail}"
            path = save_case(self.out, slug(f"{problem} {signature}"), case.data, text)
            if path not in paths:
                paths.append(path)

    def take(self) -> Tally:
        """The tally so far, with the process's peak memory; the next one starts empty."""
        tally, self.tally = self.tally, Tally()
        tally.peak_rss = rss_bytes()
        return tally


class Inflight:
    """Shared memory holding the case a worker is running, so the parent can save it if the worker hangs or dies."""

    def __init__(self, ctx):
        self.buffer = ctx.Array(ctypes.c_ubyte, MAX_CASE_BYTES, lock=False)
        self.length = ctx.Value(ctypes.c_int64, 0, lock=False)
        self.started = ctx.Value(ctypes.c_double, 0.0, lock=False)
        self.label = ctx.Array(ctypes.c_char, 64, lock=False)

    def hold(self, case: Case) -> None:
        data = case.data[:MAX_CASE_BYTES]
        ctypes.memmove(self.buffer, data, len(data))
        self.length.value = len(data)
        self.label.value = case.generator.encode()[:63]
        self.started.value = time.monotonic()

    def clear(self) -> None:
        self.started.value = 0.0

    def case(self) -> tuple[str, bytes]:
        return self.label.value.decode(), bytes(self.buffer[:self.length.value])


def warm_up(fixtures: list[Fixture]) -> None:
    """Decode every golden file once, and a tensor of each scheme big enough for the parallel kernels,
    so that the baseline memory holds torch's start-up and numba's compiled kernels (compiling one
    costs a few hundred MB once; that is start-up, not decoding)."""
    from torch import nn

    for fixture in fixtures:
        permcodec.decode(fixture.data, limits=FUZZ_LIMITS)
    for dist, options in (("he_uniform", {}), ("sparse", {"density": 0.3})):
        layer = nn.Linear(640, 512, bias=False)
        permcodec.init_(layer, 1, dist=dist, **options)
        for scheme in ("exact", "multiset"):
            permcodec.decode(permcodec.encode(layer, scheme=scheme, level="fast"), limits=FUZZ_LIMITS)


def cap_data_segment(ceiling: int) -> None:
    """Limit this process's data segment (RLIMIT_DATA) to its current size plus ``ceiling``."""
    status = Path("/proc/self/status").read_text()
    data_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmData:")))
    resource.setrlimit(resource.RLIMIT_DATA, (data_kib * 1024 + ceiling, resource.getrlimit(resource.RLIMIT_DATA)[1]))


def raise_timeout(signum, frame):
    raise CaseTimeout()


def plan(cases: int, hostile_share: float, batch: int) -> list[tuple[str, int, int]]:
    """Work units (family, first case index or batch number, count), the two families interleaved."""
    hostile = round(cases * hostile_share)
    damage = cases - hostile
    damage_units = [("damage", i, min(batch, damage - i)) for i in range(0, damage, batch)]
    hostile_units = [("hostile", b, min(batch, hostile - b * batch)) for b in range(math.ceil(hostile / batch))]
    units = []
    for i in range(max(len(damage_units), len(hostile_units))):
        units += damage_units[i:i + 1] + hostile_units[i:i + 1]
    return units


def run_unit(judge: Judge, unit, seed: int, fixtures: list[Fixture]) -> None:
    family, start, count = unit
    if family == "damage":
        for index in range(start, start + count):
            judge(damage_case(seed, index, fixtures))
        return
    try:
        hypothesis_cases(count, seed * 1_000_003 + start, judge)
    except Exception as err:  # noqa: BLE001 - a generator bug must not pass for a decoder bug
        judge.tally.failures[("fuzzer error", failure_signature(err))] += 1


def worker(units, next_unit, results, inflight: Inflight, seed: int, out: str, time_limit: float,
           hang_limit: float) -> None:
    """Take work units until none are left; send one Tally per unit, then None."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, raise_timeout)
    fixtures = load_fixtures()
    warm_up(fixtures)
    baseline = rss_bytes()
    cap_data_segment(DATA_CEILING)
    judge = Judge(Path(out), time_limit, hang_limit,
                  baseline + BYTES_PER_ALLOWED_ELEMENT * FUZZ_LIMITS.max_total_elements, inflight)
    while True:
        with next_unit.get_lock():
            index = next_unit.value
            next_unit.value += 1
        if index >= len(units):
            break
        run_unit(judge, units[index], seed, fixtures)
        tally = judge.take()
        tally.baseline_rss = baseline
        results.put((units[index][2], tally))
    results.put(None)


# ---------------------------------------------------------------- parent: watchdog and report

def run(args) -> Tally:
    """Run every unit on ``args.jobs`` workers; kill and replace a worker whose case hangs."""
    ctx = multiprocessing.get_context("spawn")
    units = plan(args.cases, args.hostile_share, args.batch)
    next_unit, results = ctx.Value(ctypes.c_int64, 0), ctx.Queue()
    hang_limit = max(10.0, 5 * args.time_limit)
    out = Path(args.out)
    slots = [Inflight(ctx) for _ in range(args.jobs)]

    def start(slot):
        process = ctx.Process(target=worker, daemon=True, args=(units, next_unit, results, slot, args.seed, str(out),
                                                                args.time_limit, hang_limit))
        process.start()
        return process

    processes = [start(slot) for slot in slots]
    total, running, done, began = Tally(), len(processes), 0, time.monotonic()
    while running:
        try:
            message = results.get(timeout=0.5)
        except queue.Empty:
            message = ()
        if message is None:
            running -= 1
        elif message:
            total.add(message[1])
            done += message[0]
            if args.progress:
                print(f"\r{done:,}/{args.cases:,} cases, {time.monotonic() - began:.0f} s", end="", file=sys.stderr)
        for index, (process, slot) in enumerate(zip(processes, slots)):
            started = slot.started.value
            hung = process.is_alive() and started and time.monotonic() - started > hang_limit + 5
            died = not process.is_alive() and process.exitcode not in (0, None)
            if hung or died:
                if hung:
                    process.kill()
                    process.join()
                label, data = slot.case()
                problem = "hang" if hung else "worker died"
                key = (problem, f"exit code {process.exitcode} ({label})")
                total.failures[key] += 1
                total.examples.setdefault(key, []).append(save_case(out, slug(f"{problem} {label}"), data, str(key)))
                total.lost += args.batch
                slot.clear()
                processes[index] = start(slot)
    if args.progress:
        print(file=sys.stderr)
    return total


def table(rows, header) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def memory_goal(total: Tally) -> int:
    return total.baseline_rss + BYTES_PER_ALLOWED_ELEMENT * FUZZ_LIMITS.max_total_elements


def report(total: Tally, args, seconds: float) -> str:
    limits = FUZZ_LIMITS
    caps = (f"header ≤ {limits.max_header_bytes >> 10} KiB, ≤ {limits.max_tensors} tensors, ≤ {limits.max_dims} "
            f"dims, dim ≤ 2^{limits.max_dim.bit_length() - 1}, ≤ 2^{limits.max_tensor_elements.bit_length() - 1} "
            f"elements per tensor, ≤ 2^{limits.max_total_elements.bit_length() - 1} per file")
    crash_kinds = [key for key in total.failures if key[0] in PROBLEMS_NOT_PERMCODEC]
    summary = [
        ("cases run", f"{total.cases:,}" + (f" (≤ {total.lost} lost with killed workers)" if total.lost else ""),
         f"{args.cases:,}"),
        ("failures that are not a PermcodecError", f"{total.count(PROBLEMS_NOT_PERMCODEC):,} "
         f"({len(crash_kinds)} distinct)", "0"),
        ("silent corruptions (decoded, wrong tensors)", f"{total.count(('silent corruption',)):,}", "0"),
        ("invalid files accepted (spec says reject)", f"{total.count(('accepted invalid file',)):,}", "0"),
        (f"cases over {args.time_limit:g} s", f"{total.over_time:,}", "0"),
        ("slowest case", f"{total.slowest[0]:.3f} s ({total.slowest[1]})", f"≤ {args.time_limit:g} s"),
        ("peak worker memory (ru_maxrss)", f"{total.peak_rss / 2**20:.0f} MiB (after warm-up "
         f"{total.baseline_rss / 2**20:.0f} MiB)", f"≤ {memory_goal(total) / 2**20:.0f} MiB"),
        ("caps in force", caps, f"memory goal: warm-up + {BYTES_PER_ALLOWED_ELEMENT} B per element per file"),
        ("fuzzer errors", f"{total.count(('fuzzer error',))}", "0"),
        ("run", f"{seconds:.0f} s, {args.jobs} worker(s), seed {args.seed}", ""),
    ]
    outcomes = sorted(total.outcomes.items(), key=lambda kv: -kv[1])
    generators = sorted((name, f"{c['cases']:,}", f"{c['decoded OK']:,}", c["failures"])
                        for name, c in total.generators.items())
    parts = [table(summary, ["goal", "result", "target"]), "",
             table([(name, f"{n:,}") for name, n in outcomes], ["outcome", "cases"]), "",
             table(generators, ["generator", "cases", "decoded OK", "failures"])]
    if total.failures:
        rows = [(problem, signature, f"{n:,}", "<br>".join(total.examples.get((problem, signature), [])))
                for (problem, signature), n in sorted(total.failures.items(), key=lambda kv: -kv[1])]
        parts += ["", table(rows, ["failure", "where", "cases", "reproducers"])]
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases to run (default 100,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both case families (default 0)")
    parser.add_argument("--time-limit", type=float, default=2.0, help="seconds a case may take (default 2)")
    parser.add_argument("--jobs", type=int, default=min(2, multiprocessing.cpu_count()), help="worker processes")
    parser.add_argument("--hostile-share", type=float, default=0.4, help="share of hypothesis-built cases")
    parser.add_argument("--batch", type=int, default=500, help="cases per work unit")
    parser.add_argument("--out", default=str(FAILURES), help="folder for reproducers (default runs/fuzz-failures)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    began = time.monotonic()
    total = run(args)
    if total.slowest[2]:
        save_case(Path(args.out), "slowest", total.slowest[2], f"{total.slowest[0]:.3f} s ({total.slowest[1]})")
    print(report(total, args, time.monotonic() - began))
    passed = not total.failures and total.peak_rss <= memory_goal(total) and total.cases >= args.cases
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
