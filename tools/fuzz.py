"""Fuzz the .pc readers: a damaged or hostile file must fail with a PermcodecError, fast, in bounded memory.

    python tools/fuzz.py                                 # 200,000 cases on 2 workers, then a report
    python tools/fuzz.py --cases 2000 --seed 3 --jobs 1  # a short run: the throughput in cases/s
    python tools/fuzz.py --cases 5000 --time-limit 2 --batch 250 --out /tmp/fuzz-failures

A case is one generated file, written once to a temp file (in a per-worker
folder on /dev/shm where there is one) and run in the worker's process
through the four entry points, in this order:

- ``permcodec.load(path)``;
- ``permcodec.safe_open(path)`` and ``get_tensor`` of each of its tensors;
- ``permcodec info PATH`` and ``permcodec info --json PATH``, as
  ``permcodec.cli.main([...])`` with stdout and stderr captured;
- ``permcodec verify PATH``, the same way.

Half the cases run under FUZZ_LIMITS (caps far below the defaults), half
under the default limits. load and safe_open get ``limits=FUZZ_LIMITS``; the
CLI has no limits option, so for a lowered case the worker sets
``permcodec.format.limits.DEFAULT_LIMITS = FUZZ_LIMITS`` and restores it after:
permcodec's public functions take ``limits=None`` to mean "read
caps.DEFAULT_LIMITS at call time". A permcodec that still binds the
default at import ignores this; the worker notices (``cli_shares_limits``),
and then skips the CLI for lowered cases that load refuses with a
LimitError (the CLI would read them under the default limits) and says so
in the report.

Cases come from two families, mixed, in both halves:

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
  nesting. In the default half, about one file in four also holds an empty
  tensor of shape [0, 2^31 - 1] or [2^31 - 1, 0] of every kind and scheme
  (raw, delta, exact, multiset). Since format revision 1.4 also block records
  (``block`` and ``parts``, every layout, block sizes that divide the row or
  not, of 1 and of the row or more, parts of each scheme, coded truthfully
  part by part or damaged, with bad block maps, parts counts, part keys,
  schemes, lanes and lengths, and sections that lie about their blocks; about
  one file in eight holds an empty one with the longest rows or most rows the
  half's limits allow), and ``levels`` init records (derived or arbitrary
  stored values; unsorted, repeated, -0.0, non-f32, empty, and lists of up to
  2^17 values, around the cap of 65,536).

A valid file may declare billions of elements at the default limits, so the
default half's generators keep the elements a file declares at most 2^22
(a draw over that is drawn again). Every case then runs under budgets that
scale with the elements its header declares (the product of each record's
shape, summed; 0 where the header cannot be read; counted up to 2^22):

- address space (RLIMIT_AS, set before the case and lifted after): the
  worker's VmSize after warm-up (or at the case's start, if it has grown
  since), plus AS_HEADROOM (128 MiB), plus 64 B per element. Warm-up runs
  every golden file and tensors big enough for the parallel kernels through
  all four entry points first, so that numba's kernels, the thread pool and
  torch's start-up are in the baseline; workers run with one malloc arena
  and blocks of 32 MiB or more mapped apart (WORKER_ENVIRONMENT), so that
  their size follows what they hold, give or take the heap's free space
  (the report shows the largest size at a case's start). An allocation
  past the cap (MemoryError, torch's "can't allocate memory", ENOMEM,
  "can't start new thread", and permcodec's MemoryLimitError, which names
  one) is reported as "over address-space cap", and the worker carries on;
- time: BASE_SECONDS (--time-limit, 2 s) plus 1 s per 2^22 elements for the
  whole case (all entry points); a case still running after 5 times that
  (at least 10 s) is interrupted, and a worker stuck in native code is killed
  by the parent and replaced.

A case passes when:

- load and safe_open each raise a PermcodecError or return exactly the
  tensors the case expects (the golden tensors for damage, the header's
  claims for hostile files; SHA-256 compared with tests/fixtures/fixtures.json);
- info (both forms) and verify return 0, or return non-zero having printed
  one line ``permcodec CMD: error: ...`` for a PermcodecError (the fuzzer
  wraps the CLI's run functions to see what ``main`` caught: an OSError or
  anything else is a failure; see TracedCLI, which also builds main's
  argparse parser once instead of per call);
- the entry points agree: load and safe_open give the same outcome; info
  and info --json too; verify succeeds exactly when load (with verify=True)
  does; a file that loads is also described by info;
- it stays within its time and address-space budgets.

Anything else is a failure, saved with its bytes under runs/fuzz-failures/.
A worker that dies (or is killed) is replaced; its unit resumes after the
case that killed it.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import ctypes
import dataclasses
import errno
import gc
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import queue
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import msgpack
import zstandard
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import permcodec
from permcodec import cli, codec, decoder, encoder, perm
from permcodec.dtypes import DTYPE_NAMES
from permcodec.format import container, indexcode, rans, schemes
from permcodec.format import limits as caps
from permcodec.format.container import Limits
from permcodec.format.schemes import shuffle_zstd
from permcodec.init import distributions
from permcodec.init.distparams import FLOAT32_MAX, MAX_LEVELS
from permcodec.rows import BLOCK_LAYOUTS, MAX_BLOCK_SIZE, BlockLayout

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAILURES = ROOT / "runs" / "fuzz-failures"

# Caps of the lowered half: a 2^20-element tensor, 2^22 elements per file, a 1 MiB header.
FUZZ_LIMITS = Limits(max_header_bytes=1 << 20, max_tensors=1024, max_dims=8, max_dim=2**20,
                     max_tensor_elements=2**20, max_total_elements=2**22)
HALVES = ("lowered", "default")  # which limits a case runs under: FUZZ_LIMITS or permcodec's defaults
# The default half's generators keep a file's declared elements at most this (a valid file at the default
# limits may declare billions that compress to a few bytes); budgets count declared elements up to it.
MAX_DECLARED = 2**22
# Budgets of one case (all its entry points together), from the elements its header declares:
BASE_SECONDS = 2.0                    # seconds for any case (--time-limit) ...
SECONDS_PER_ELEMENT = 1.0 / 2**22     # ... plus 1 s per 2^22 declared elements
BYTES_PER_DECLARED_ELEMENT = 64       # address space above the warmed worker's size, per declared element,
AS_HEADROOM = 128 << 20               # plus this for any case: zstd contexts, pymalloc arenas, and the heap's
                                      # fragmentation (blocks under 32 MiB come from it, see WORKER_ENVIRONMENT)
HANG_FACTOR, HANG_MIN = 5, 10.0       # a case still running after max(HANG_MIN, HANG_FACTOR x its time) hangs
# glibc settings of the workers, so that their address space follows what is allocated: one malloc arena (each
# thread's own would reserve 64-128 MiB at a time), blocks of 32 MiB or more mapped apart and returned when freed,
# and the heap's free top returned past 1 MiB. (Mapping every block of 64 KiB or more apart tracks memory more
# closely but makes a 2^21-element decode 2.5x slower, all in page faults: its time would not be the decoder's.)
WORKER_ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                      "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}
# Largest case a worker can hand to the watchdog (a hung or killed worker's case is saved from it).
MAX_CASE_BYTES = 4 << 20
REPRODUCERS_PER_SIGNATURE = 3
PROGRESS_SECONDS = 1.0                # a worker reports its tally at least this often (and after a failure)

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
    ``half`` says which limits the case runs under (one of HALVES).
    """

    generator: str
    data: bytes
    expect: tuple
    verify: bool = True
    must_fail: str | None = None
    half: str = "lowered"


@dataclasses.dataclass(frozen=True)
class Fixture:
    name: str
    data: bytes
    header: dict
    sections: list
    expect: tuple  # the golden tensors in file order: (name, dtype, shape, sha256)
    record_shas: list  # per record the golden sha256, or for a group record the list of its members'


def load_fixtures() -> list[Fixture]:
    digests = json.loads((FIXTURES / "fixtures.json").read_text())
    fixtures = []
    for path in sorted(FIXTURES.glob("*.pc")):
        data = path.read_bytes()
        header_length = container.PREAMBLE.unpack(data[:container.PREAMBLE_SIZE])[3]
        start = container.PREAMBLE_SIZE + header_length
        header = msgpack.unpackb(data[container.PREAMBLE_SIZE:start], raw=False)
        sections = [data[start + r["offset"]:start + r["offset"] + r["length"]] for r in header["tensors"]]
        golden = {name: bytes.fromhex(digest) for name, digest in digests[path.stem].items()}
        record_shas = [[golden[name] for name in r["names"]] if r["kind"] == "group" else golden[r["name"]]
                       for r in header["tensors"]]
        fixtures.append(Fixture(path.stem, data, header, sections, claims(header["tensors"], record_shas),
                                record_shas))
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
    """What a successful decode must return for these records, in the file's tensor order (specs/format.md
    6.4: group members at their positions, the other records in the slots left): each tensor's name, dtype,
    shape and a sha256. ``shas`` aligns with ``records``: a sha256 or None each, for a group record the list of
    its members' (or None)."""
    shas = shas or [None] * len(records)
    plain, members = [], []
    for record, sha in zip(records, shas):
        if not group_record(record):
            shape = record.get("shape") if isinstance(record, dict) else None
            plain.append((record.get("name"), record.get("dtype"), as_tuple(shape), sha)
                         if isinstance(record, dict) else (None, None, None, None))
            continue
        member_shas = sha if isinstance(sha, list) else [None] * len(record["names"])
        members += [(position, (name, record.get("dtype"), as_tuple(shape), member_sha)) for name, shape, position,
                    member_sha in zip(record["names"], record["shapes"], record["positions"], member_shas)]
    return tuple(in_tensor_order(plain, members))


def as_tuple(shape):
    return tuple(shape) if isinstance(shape, list) else shape


def group_record(record) -> bool:
    """Whether ``record`` is a group record with names, shapes and positions of one length (any other decodes
    to nothing: the decoder must refuse it)."""
    return isinstance(record, dict) and record.get("kind") == "group" and all(
        isinstance(record.get(key), list) for key in ("names", "shapes", "positions")) and \
        len(record["names"]) == len(record["shapes"]) == len(record["positions"])


def in_tensor_order(plain: list, members: list) -> list:
    """The claims of the plain records and of the group members (position, claim) in the file's tensor order;
    where the positions cannot be an order (the decoder must refuse the file), plain then members."""
    count = len(plain) + len(members)
    slots = [None] * count
    for position, claim in members:
        if type(position) is not int or not 0 <= position < count or slots[position] is not None:
            return plain + [claim for _, claim in members]
        slots[position] = claim
    rest = iter(plain)
    return [slot if slot is not None else next(rest) for slot in slots]


def header_records(data: bytes) -> list:
    """The tensor records of a file's header as msgpack reads them, or [] if it cannot be read."""
    try:
        header_length = container.PREAMBLE.unpack_from(data)[3]
        start = container.PREAMBLE_SIZE
        records = msgpack.unpackb(data[start:start + header_length], raw=False, strict_map_key=False)["tensors"]
    except Exception:  # noqa: BLE001 - the decoder refuses such a header before sizing anything by it
        return []
    return records if isinstance(records, list) else []


def declared_elements(data: bytes) -> int:
    """Elements the file's header declares: the product of each record's shape, summed (a record whose shape
    is not a list of non-negative integers counts 0; a header that cannot be read, 0)."""
    total = 0
    for record in header_records(data):
        shapes = record.get("shapes") if group_record(record) else [record.get("shape")] \
            if isinstance(record, dict) else []
        for shape in shapes:
            if isinstance(shape, list) and all(type(size) is int and size >= 0 for size in shape):
                total += math.prod(shape)
    return total


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
    golden = fixture.record_shas
    if not verify or len(records) != len(golden):
        return claims(records)
    return claims(records, [(sha if same_member_bytes(record, original) else None) if group_record(record) else
                            (None if isinstance(sha, list) else sha)
                            for record, original, sha in zip(records, fixture.header["tensors"], golden)])


def same_member_bytes(edited: dict, original: dict) -> bool:
    """Whether each member of the edited group record holds the bytes it held in the golden file: a group's
    hash covers the bytes of all its members at once, so a header that moves the boundaries between them
    (other shapes, or another element size) still passes it."""
    dtype = edited.get("dtype")
    return group_record(original) and edited["shapes"] == original["shapes"] and isinstance(dtype, str) and \
        container.DTYPE_SIZES.get(dtype) == container.DTYPE_SIZES[original["dtype"]]


EDIT_VALUES = [None, True, 0, 1, -1, 2**20 + 1, 2**31 - 1, 2**32, 2**64 - 1, 1.0, float("nan"), "", "x", "delta",
               "raw", "permuted", "float32", "int32", "bool", "uint8", "float64", "philox4x32-10", "shuffle-zstd",
               "sparse", "shared", "uniform", b"", b"\0" * 32, [], [0], [1], [2, 3], [3, 2], [0, 2**20, 2**20],
               [2**20], [1] * 9, [0, 2**31 - 1], [2**31 - 1, 0], [0, 2**31], [2**31, 0], {}, {"a": 1},
               {"bound": 1.0}, {"bound": 0.1}, {"std": -1.0}, {"low": 1.0, "high": 0.0}, msgpack.ExtType(1, b"x"),
               msgpack.Timestamp(0)]


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
    pairs = list(zip(fixture.header["tensors"], fixture.sections, fixture.record_shas))
    action = rng.randrange(4)
    if action == 0:
        rng.shuffle(pairs)
    elif action == 1 and len(pairs) > 1:
        del pairs[rng.randrange(len(pairs))]
    elif action == 2:
        copies = rng.choice([2, 8, 64])
        pairs = [(renamed(record, k), section, sha) for k in range(copies) for record, section, sha in pairs[:2]]
    else:  # record i gets section j
        i, j = rng.randrange(len(pairs)), rng.randrange(len(pairs))
        pairs[i] = (pairs[i][0], pairs[j][1], pairs[i][2])
    records = with_layout([p[0] for p in pairs], [p[1] for p in pairs])
    shas = [p[2] for p in pairs] if verify else None
    name = ["shuffle", "drop", "replicate", "crosswire"][action]
    return Case(f"crc-fixed:{name}_records", assemble(pack_header(records), b"".join(p[1] for p in pairs)),
                claims(records, shas), verify)


def renamed(record: dict, copy: int) -> dict:
    """A record's copy with its tensor names, or its members', made its own."""
    if record["kind"] == "group":
        return {**record, "names": [f"{name}#{copy}" for name in record["names"]]}
    return {**record, "name": f"{record['name']}#{copy}"}


def damage_case(seed: int, index: int, fixtures: list[Fixture], half: str = "lowered") -> Case:
    """Case ``index`` of the damage family in ``half``: the same (seed, index, half) always gives the same bytes.

    In the default half a draw whose header declares more than MAX_DECLARED elements is drawn again.
    """
    if half == "lowered":
        return damage_draw(random.Random(f"{seed}/{index}"), fixtures)
    for attempt in itertools.count():
        case = damage_draw(random.Random(f"{seed}/{half}/{index}/{attempt}"), fixtures)
        if declared_elements(case.data) <= MAX_DECLARED:
            return dataclasses.replace(case, half=half)
    raise AssertionError("unreachable")


def damage_draw(rng: random.Random, fixtures: list[Fixture]) -> Case:
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
        head = bytes([0x80 | len(pairs)]) if len(pairs) < 16 else b"\xde" + struct.pack(">H", len(pairs)) \
            if len(pairs) < 65536 else b"\xdf" + struct.pack(">I", len(pairs))
        return head + b"".join(pack_value(k) + pack_value(v) for k, v in pairs)
    if isinstance(obj, list):
        head = bytes([0x90 | len(obj)]) if len(obj) < 16 else b"\xdc" + struct.pack(">H", len(obj)) \
            if len(obj) < 65536 else b"\xdd" + struct.pack(">I", len(obj))  # a levels list may be longer
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
KINDS = st.sampled_from(["permuted", "permuted", "raw", "block"])  # block: a permuted record with blocks
DTYPES = st.sampled_from(sorted(container.DTYPE_SIZES))
SMALL_SHAPES = st.lists(st.integers(0, 5), min_size=1, max_size=3)
# Hypothesis draws the first item of a sampled_from (and 0 from integers) far more often than the others,
# so the common choice comes first: here the cheap-to-reject shape, in the fault lists "no fault".
BIG_SHAPES = {
    "lowered": st.sampled_from([[2**20 + 1], [1, 2**20], [2**10, 2**10], [2**20], [2**19, 2], [2**10, 2**10 + 1],
                                [2**20, 0], [0, 2**20], [0, 2**20, 2**20], [0, 2**20, 2**7], [1] * 9,
                                [2**31 - 1], [2**32], [2**64 - 1]]),
    # At most 2^22 - 512 elements (with three small records a file stays within MAX_DECLARED), or none:
    # past the lowered caps, and empty shapes at and one past the default limits.
    "default": st.sampled_from([[2**21 + 1], [1, 2**21], [2**11, 2**10], [2**21], [2**20, 3], [2**12, 2**10 - 1],
                                [2**22 - 512], [0, 2**31], [2**31, 0], [0, 2**32 - 1], [0, 2**20, 2**20],
                                [2**31 - 1, 0, 2**31 - 1], [1] * 9]),
}
# Empty tensors with the longest rows, or the most rows, the default limits allow, with every kind and scheme:
# one of the 10 pairs by a small integer plus the record's seed (hypothesis draws either alone as 0 too often
# for all 10 to come up in a few hundred files).
EMPTY_LONG_SHAPES = ([0, 2**31 - 1], [2**31 - 1, 0])
ARRANGEMENT_SCHEMES = ("exact", "multiset", "sparse")  # the rANS schemes (format.md Section 9)
EMPTY_LONG_KINDS = (("raw", None), ("permuted", "delta")) + tuple(("permuted", s) for s in ARRANGEMENT_SCHEMES)
DISTS = st.sampled_from(distributions.DISTRIBUTIONS)
FRAMES = st.sampled_from(FRAME_KINDS)
INDEX_SCHEMES = st.sampled_from(["delta", "delta", *ARRANGEMENT_SCHEMES])
ARRANGEMENT_DAMAGE = ("valid", "valid", "flip", "truncate", "random")
SHA_KINDS = st.sampled_from(["truth"] * 17 + ["random", "short", "junk"])
# Block records (format rev 1.4): a layout and a block size picked against the row length n (see block_size);
# shapes whose rows are long enough for two runs of blocks, and empty ones with the longest rows or the most
# rows the half's limits allow (a zero dimension counts as 1).
BLOCK_LAYOUT_NAMES = st.sampled_from(BLOCK_LAYOUTS)
BLOCK_SIZES = st.sampled_from(["splits", "divides", "1", "n", "over_n", "2", "max"])
LONG_ROWS = st.sampled_from([[3, 27], [2, 10], [4, 7], [1, 64], [2, 33], [2, 3, 3], [5, 1], [1, 1]])
BLOCK_SHAPES = st.one_of(LONG_ROWS, LONG_ROWS, SMALL_SHAPES)
# Picked like EMPTY_LONG_KINDS, by a small draw plus the record's seed: hypothesis alone repeats one too often.
EMPTY_BLOCK_SHAPES = {"lowered": ([0, 2**20], [2**20, 0], [0, 2**10, 2**10]),
                      "default": ([0, 2**31 - 1], [2**31 - 1, 0], [0, 2**16, 2**15 - 1])}
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
                            st.one_of(st.sampled_from(INTERESTING_INTS + ["philox4x32-20", "he_unifrom", "",
                                                                          "levels"]), JUNK)),
    "params_value": st.one_of(st.sampled_from([1.0, 0.5, -1.0, 0.0, -0.0, 3.4028234663852886e38, 1e39, 0.1,
                                               float("inf"), float("nan"), 2.0**-149, 1, 2**64 - 1, True, 2**31]),
                              st.floats(width=32), st.floats()),
    "params_key": st.sampled_from(["extra", "mean", "std", "low", "high", "bound", "density", "keep_below"]),
    "params_junk": JUNK,
    "density": st.sampled_from([1.0, 0.30000001192092896, 2.0**-32, 2.0**-33, 1e-10, 0.0, 1.5, -0.5]),
    "sparse_base": st.one_of(st.sampled_from([
        {"dist": "normal"}, {"dist": "uniform", "params": {"low": 1.0, "high": 0.0}},
        {"dist": "sparse", "params": {"density": 0.5, "keep_below": 2**31}},
        {"dist": "levels", "params": {"values": [0.5]}}]), JUNK),
}
# Faults of a block record, drawn where RECORD_FAULTS drew none; applied once its section is made, so that
# what the record then says about its parts (lanes, lengths, the layout itself) may lie about the section.
BLOCK_FAULTS = st.sampled_from([None] * 16 + [
    "block_value", "block_lie", "stream_lie", "parts_count", "part_key", "part_scheme", "part_params",
    "part_length", "scheme_keys", "init_block"])


def or_junk(named):
    """``named``, or one time in four or less JUNK (one_of would flatten JUNK's many branches beside it)."""
    return st.tuples(st.integers(0, 3), named, JUNK).map(lambda drawn: drawn[2] if drawn[0] == 3 else drawn[1])


BLOCK_FAULT_VALUES = {
    "block_value": or_junk(st.one_of(
        st.builds(lambda size: {"layout": "strided", "size": size},
                  st.sampled_from([0, -1, 2**31, 2**31 - 1, 1, True, 2.0, "2", None, [2], 2**64 - 1])),
        st.builds(lambda layout: {"layout": layout, "size": 2},
                  st.sampled_from(["Shuffled", "", "random", "contiguous ", b"strided", None, 1, ["strided"]])),
        st.sampled_from([{"layout": "shuffled"}, {"size": 2}, {}, {"layout": "strided", "size": 2, "extra": 1},
                         {b"layout": "strided", "size": 2}, {"layout": "strided", b"size": 2},
                         {"layout": "strided", "size": 2, b"size": 2}, ["strided", 2], "strided", 2, None]))),
    "parts_count": or_junk(st.sampled_from(["drop", "repeat", "append", "empty", "three"])),
    "part_key": st.sampled_from(["drop", "extra", "bytes_key", "not_map", "lanes_beside", "block_inside"]),
    "part_scheme": or_junk(st.sampled_from([*ARRANGEMENT_SCHEMES, "delta", "delta2", "", "DELTA", "shuffle-zstd"])),
    "part_params": or_junk(st.sampled_from(["over", "zero", "at_most", "huge", "negative", "bool", "float",
                                            "missing", "extra", "delta_lanes", "bytes_key", "empty"])),
    "part_length": st.one_of(st.sampled_from(["shift", "swap", "plus_one", "minus_one", "all_in_one", "zero"]),
                             st.sampled_from(INTERESTING_INTS + [True, 1.0, "12", None])),
    "scheme_keys": st.sampled_from(["both", "no_parts", "no_block", "raw_kind"]),
}
# Faults of a levels record's stored values (specs/rng.md section 7: 1 to 65,536 finite f32 values, strictly
# ascending, none -0.0), drawn for each levels record; "huge" is a list around that cap (see level_values).
LEVEL_FAULTS = st.sampled_from([None] * 12 + [
    "unsorted", "repeated", "negative_zero", "not_f32", "non_finite", "empty", "not_list", "junk_item", "bools",
    "ints", "huge"])
LEVEL_COUNTS = (MAX_LEVELS, MAX_LEVELS - 1, MAX_LEVELS + 1, MAX_LEVELS + 2, 2**17)
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


LEVEL_BASES = ("he_uniform", "glorot_uniform", "he_normal", "glorot_normal")  # need no parameter of their own
# Stored values a levels record may hold: the f32 extremes, zero, the smallest subnormal and normal.
LEVEL_EDGES = (-FLOAT32_MAX, -1.0, -(2.0**-149), 0.0, 2.0**-149, 2.0**-126, 0.5, 1.0, 3.0, FLOAT32_MAX)


def init_record(dist: str, rng: random.Random) -> dict:
    """A valid init record for ``dist`` (params as the reference encoder derives them; for ``levels``, half
    the time any valid list of stored values instead, see level_values)."""
    extra = {}
    if dist in distributions.MASKED:
        extra["density"] = rng.choice([0.5, 0.1, 1.0, 0.9])
    if dist == "shared":
        extra["value"] = rng.choice([0.5, -0.25, 3.0])
    if dist == "sparse":
        extra["base"] = rng.choice(distributions.DENSE)
    if dist == "levels":
        extra.update(num_levels=rng.choice([1, 2, 3, 4, 5, 8, 16, 64]), base=rng.choice(LEVEL_BASES))
    params = distributions.make_params(dist, (4, 4), **extra)
    if dist == "levels" and rng.random() < 0.5:
        params = {"values": level_values(rng)}
    return {"rng": "philox4x32-10", "seed": rng.randrange(2**64), "stream": rng.randrange(2**32), "dist": dist,
            "params": params}


def level_values(rng: random.Random, count: int | None = None) -> list:
    """Valid stored values of a levels record (specs/rng.md section 7): ``count`` evenly spaced exact f32
    values, or else a few of LEVEL_EDGES and random finite f32 values, ascending."""
    if count is not None:
        return [(k - count // 2) * 2.0**-17 for k in range(count)]  # |k| <= 2^16: exact in f32; 0 is +0.0
    pool = set(LEVEL_EDGES)
    while len(pool) < 16:
        value = struct.unpack("<f", rng.randbytes(4))[0]
        if math.isfinite(value) and value != 0.0:
            pool.add(value)
    return sorted(rng.sample(sorted(pool), rng.choice([1, 2, 3, 7, 16])))


def broken_levels(values: list, fault: str, rng: random.Random):
    """``values`` (a valid levels list) broken the way ``fault`` says; "ints" and "huge" are sometimes valid."""
    values = list(values) if len(values) >= 2 else [-0.5, 0.5]
    at = rng.randrange(len(values))
    if fault == "unsorted":
        values[at - 1], values[at] = values[at], values[at - 1]
    elif fault == "repeated":
        values.insert(at, values[at])
    elif fault == "negative_zero":
        values = rng.choice([[-0.0], [-0.0, 0.0], [v for v in values if v < 0] + [-0.0] + [v for v in values if v > 0]])
    elif fault == "not_f32":
        bisect.insort(values, rng.choice([0.1, 1e39, -1e39, 2.0**-150, 1 + 2.0**-30, 3.4028235677973366e38]))
    elif fault == "non_finite":
        values = rng.choice([values + [math.inf], [-math.inf] + values, values[:at] + [math.nan] + values[at:]])
    elif fault == "empty":
        values = []
    elif fault == "not_list":
        values = rng.choice([0.5, "0.5", None, {"0": 0.5}, b"\0\0\0?", True, {"values": values}])
    elif fault == "junk_item":
        values.insert(at, rng.choice([None, "1", [0.5], {}, b"", True, msgpack.ExtType(1, b"x")]))
    elif fault == "bools":
        values = rng.choice([[False, True], [True], [False]])
    elif fault == "ints":  # integers are numbers: exact f32 ones are valid; 2^24 + 1 is not
        values = rng.choice([[-2, 0, 1], [0, 1, 2**24], [0, 2**24 + 1], [-(2**63), 0], [1, 2**31 - 1], [0, 2.5, 3]])
    elif fault == "huge":  # near and over the cap of 65,536; some break only at their end
        values = level_values(rng, rng.choice(LEVEL_COUNTS))
        if rng.random() < 0.25:
            values[-1] = rng.choice([values[-2], -0.0, 0.1])
    return values


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


def block_size(kind: str, n: int, rng: random.Random) -> int:
    """A block size for rows of ``n``: one that leaves a shorter block ("splits"), one that divides n, 1, n
    itself, more than n, 2, or the largest a record may hold."""
    small = range(2, min(n, 64))
    if kind == "splits":
        options = [size for size in small if n % size]
    elif kind == "divides":
        options = [size for size in small if n % size == 0]
    else:
        options = [{"1": 1, "n": max(n, 1), "over_n": n + rng.choice([1, 2, 1000]), "2": 2,
                    "max": MAX_BLOCK_SIZE}[kind]]
    return min(rng.choice(options or [2, 3]), MAX_BLOCK_SIZE)


def block_parts(shape: list, block: dict, part_schemes: list, rng: random.Random) -> list:
    """The parts of a block record, one per run of equal blocks (lengths 0 until its section is made; lanes
    within [1, R * c_g], which the encoder replaces where it codes a part)."""
    rows, n = perm.row_shape(shape)
    return [{"scheme": scheme, "scheme_params": {} if scheme == "delta" else
             {"lanes": min(rng.choice([1, 1, 1, 2, 3]), max(rows * count, 1))}, "length": 0}
            for (count, _), scheme in zip(BlockLayout.from_dict(block).groups(n), part_schemes)]


def apply_block_fault(record: dict, fault: str, value, rng: random.Random) -> None:
    """Break block record ``record`` (in place; its section is made and its parts hold their true lanes and
    lengths) the way ``fault`` says, with ``value`` drawn for it."""
    parts = record["parts"]
    g = rng.randrange(len(parts))
    part = parts[g]
    try:
        rows, n = perm.row_shape(record["shape"])
        runs = BlockLayout.from_dict(record["block"]).groups(n)
    except Exception:  # noqa: BLE001 - a shape or block the generator cannot read (the decoder will not either)
        rows, n, runs = 1, 1, ((1, 1),) * len(parts)
    if fault == "block_value":
        record["block"] = value
    elif fault == "block_lie":  # another valid block; strided and shuffled always give the same runs
        size = record["block"]["size"] if rng.random() < 0.5 else \
            block_size(rng.choice(["splits", "divides", "1", "n", "over_n", "2"]), n, rng)
        record["block"] = {"layout": rng.choice(BLOCK_LAYOUTS), "size": size}
    elif fault == "stream_lie":  # another (seed, stream): other initial values, and shuffled blocks elsewhere
        key = rng.choice(["seed", "stream"])
        record["init"][key] = (record["init"][key] + rng.choice([1, -1])) % 2 ** (64 if key == "seed" else 32)
    elif fault == "parts_count":
        if value in ("drop", "repeat", "append", "three"):
            extra = [{**part, "length": 0}, {"scheme": "delta", "scheme_params": {}, "length": 0}]
            record["parts"] = parts[:-1] if value == "drop" else parts + extra[:1] if value == "repeat" else \
                parts + extra[1:] if value == "append" else parts + extra[:3 - len(parts)]
        else:
            record["parts"] = [] if value == "empty" else value
    elif fault == "part_key":
        if value == "drop":
            part.pop(rng.choice(sorted(part)))
        elif value == "extra":
            part[rng.choice(["extra", "offset", "crc32", "codec"])] = 1
        elif value == "bytes_key":
            key = rng.choice(sorted(part))
            part[key.encode()] = part.pop(key)
        elif value == "not_map":
            parts[g] = rng.choice([None, [], part["scheme"], part["length"], list(part.values())])
        elif value == "lanes_beside":
            part["lanes"] = 1
        else:
            part["block"] = record["block"]
    elif fault == "part_scheme":
        part["scheme"] = value
    elif fault == "part_params":  # lanes must be in [1, max(R * c_g, 1)] per part
        cap = max(rows * runs[min(g, len(runs) - 1)][0], 1)
        lanes = {"zero": 0, "over": cap + 1, "at_most": cap, "huge": rng.choice([2**31, 2**32, 2**63 - 1, 2**64 - 1]),
                 "negative": -1, "bool": True, "float": 1.0, "delta_lanes": 1}
        if isinstance(value, str) and value in lanes:
            value = {"lanes": lanes[value]}
        elif value in ("missing", "empty", "extra", "bytes_key"):
            value = {"extra": {**part["scheme_params"], "extra": 1}, "bytes_key": {b"lanes": 1}}.get(value, {})
        part["scheme_params"] = value
    elif fault == "part_length":
        other = parts[1 - g] if len(parts) == 2 else None
        if value == "shift" and other is not None:  # the lengths still add up: the parts' bytes lie
            moved = min(part["length"], rng.choice([1, 4, part["length"]]))
            part["length"], other["length"] = part["length"] - moved, other["length"] + moved
        elif value == "swap" and other is not None:
            part["length"], other["length"] = other["length"], part["length"]
        elif value == "all_in_one":
            total = sum(p["length"] for p in parts)
            for p in parts:
                p["length"] = 0
            part["length"] = total
        elif value in ("plus_one", "minus_one", "zero", "shift", "swap"):
            part["length"] = 0 if value in ("zero", "shift", "swap") else \
                max(0, part["length"] + (1 if value == "plus_one" else -1))
        else:
            part["length"] = value
    elif fault == "scheme_keys":
        if value == "both":
            record.update(scheme=part["scheme"], scheme_params=part["scheme_params"])
        elif value == "raw_kind":
            record["kind"] = "raw"
        else:
            record.pop("parts" if value == "no_parts" else "block")
    elif fault == "init_block":  # block belongs in the record, not in init (specs/rng.md's block is the spec's)
        record["init"]["block"] = record["block"]
        if rng.random() < 0.5:
            record.pop("block")


@st.composite
def tensor_records(draw, index: int, size: str = "small", half: str = "lowered"):
    """(record, section, sha256 of what the section decodes to or None, layout fault, frame kind).

    ``size``: "small" (at most 128 elements), "big" (from BIG_SHAPES[half]), "empty_long" (EMPTY_LONG_SHAPES)
    or "empty_block" (a block record of EMPTY_BLOCK_SHAPES[half]).
    """
    kind, scheme = draw(KINDS), draw(INDEX_SCHEMES)
    seed = draw(SEEDS)
    rng = random.Random(seed)
    if size == "empty_long":
        kinds = len(EMPTY_LONG_KINDS)
        pick = (draw(st.integers(0, 2 * kinds - 1)) + seed) % (2 * kinds)
        kind, scheme = EMPTY_LONG_KINDS[pick % kinds]
        shape = list(EMPTY_LONG_SHAPES[pick // kinds])
    elif size == "empty_block":
        shapes = EMPTY_BLOCK_SHAPES[half]
        kind, shape = "block", list(shapes[(draw(st.integers(0, len(shapes) - 1)) + seed) % len(shapes)])
    else:
        shape = draw(BIG_SHAPES[half]) if size == "big" else draw(BLOCK_SHAPES) if kind == "block" \
            else draw(SMALL_SHAPES)
    record = {"name": f"t{index}", "kind": "permuted" if kind == "block" else kind,
              "dtype": "float32" if kind != "raw" else draw(DTYPES), "shape": shape}
    if kind == "permuted":
        record.update(init=init_record(draw(DISTS), rng), scheme=scheme, scheme_params={})
        if record["scheme"] != "delta":
            lanes = rng.choice([1, 1, 1, 2, 3]) if size == "empty_long" else rng.randint(1, 3)
            record["scheme_params"] = {"lanes": lanes}
    elif kind == "block":  # a permuted record with block and parts instead of scheme and scheme_params
        record["init"] = init_record(draw(DISTS), rng)
        record["block"] = {"layout": draw(BLOCK_LAYOUT_NAMES),
                           "size": block_size(draw(BLOCK_SIZES), perm.row_shape(shape)[1], rng)}
        record["parts"] = block_parts(shape, record["block"], [scheme, draw(INDEX_SCHEMES)], rng)
    else:
        record["codec"] = "shuffle-zstd"
    if kind != "raw" and record["init"]["dist"] == "levels":
        level_fault = draw(LEVEL_FAULTS)
        if level_fault is not None:
            params = record["init"]["params"]
            params["values"] = broken_levels(params["values"], level_fault, rng)
    fault = draw(RECORD_FAULTS)
    if fault is not None and fault != "layout":
        apply_record_fault(record, fault, draw(RECORD_FAULT_VALUES[fault]) if fault in RECORD_FAULT_VALUES
                           else None, rng)
    block_fault = draw(BLOCK_FAULTS) if kind == "block" and fault is None else None
    section, truth, frame_kind = section_for(record, draw(FRAMES), rng)
    sha_kind = draw(SHA_KINDS)
    record["sha256"] = draw(JUNK) if sha_kind == "junk" else rng.randbytes(31) if sha_kind == "short" \
        else truth if sha_kind == "truth" and truth else rng.randbytes(32)
    if block_fault is not None:  # after the sha256: a record that now lies still claims the section's tensor
        apply_block_fault(record, block_fault, draw(BLOCK_FAULT_VALUES[block_fault])
                          if block_fault in BLOCK_FAULT_VALUES else None, rng)
        truth, frame_kind = None, f"lie:{block_fault}"
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
    try:
        init = decoder.tensor_init(record)
        rows, n = perm.row_shape(init.shape)
        if rows * n > 4096 or n > 4096:
            return None
        initial = encoder.initial_rows(init)
    except Exception:  # noqa: BLE001 - the decoder judges this record; the generator only skips it
        return None
    final, trained = random_arrangement(initial, rng)
    return delta_payload(final, initial), codec.sha256_of(trained.reshape(init.shape))


def random_arrangement(initial: perm.SortedRows, rng: random.Random):
    """(final ranks, trained rows): each row of ``initial`` moved to a random permutation of its values."""
    import torch

    rows, n = initial.rows.shape
    generator = torch.Generator().manual_seed(rng.randrange(2**63))
    final = torch.argsort(torch.rand(rows, n, generator=generator), dim=1)
    return final, initial.rows.gather(1, initial.order.gather(1, final))


def delta_payload(final, initial: perm.SortedRows) -> bytes:
    """The delta scheme's payload (before zstd) of rows moved from ``initial`` to the ranks ``final``."""
    codes = indexcode.zigzag((final - initial.ranks).reshape(-1).numpy())
    return indexcode.to_byte_planes(codes, schemes.index_width(initial.rows.shape[1]))


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
    """(section, sha256 or None, how it was made) for scheme exact, multiset or sparse: a real encoding of a random
    permutation (its lanes written into the record), damaged or not, or random words."""
    import torch

    how = rng.choice(ARRANGEMENT_DAMAGE)
    section = None
    try:
        init = decoder.tensor_init(record)
        rows, n = perm.row_shape(init.shape)
        if rows * n <= 4096 and n <= 4096 and how != "random":
            initial = encoder.initial_rows(init)
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
        return random_lanes(rng), None, "random"
    if how in ("flip", "truncate"):
        return damaged_lanes(section, how, rng), None, how
    return section, truth, "valid"


def random_lanes(rng: random.Random) -> bytes:
    """A rANS section of 1-3 lanes of random words, their counts right or a few bytes off."""
    lanes = rng.randint(1, 3)
    lengths = [rng.choice([0, 1, 2, 3, 5]) for _ in range(lanes)]
    words = rng.randbytes(4 * sum(lengths) + rng.choice([0, 0, 1, 4]))
    return struct.pack(f"<{lanes}I", *lengths) + words


def damaged_lanes(section: bytes, how: str, rng: random.Random) -> bytes:
    """A rANS section with one bit flipped ("flip") or cut short ("truncate")."""
    if how == "flip":
        at = rng.randrange(len(section))
        return section[:at] + bytes([section[at] ^ (1 << rng.randrange(8))]) + section[at + 1:]
    return section[:rng.randrange(len(section))]


def block_section(record: dict, frame_kind: str, rng: random.Random):
    """(section, sha256 or None, how it was made) of a block record: its parts back to back, each written into
    the record (lanes, length). Each part codes the block view (permcodec's BlockView) of a random block-local
    arrangement of the regenerated initial rows: a delta part by hand, as permuted_truth does, an exact or
    multiset part by the encoder. One part, drawn, is made the way ``frame_kind`` says (delta) or damaged
    as ARRANGEMENT_DAMAGE says; the others are valid. A block record without elements gets empty parts
    (built without the encoder, as empty_section does); one too big to encode, zero codes in its delta
    parts (a real decode) and random rANS words; one that the generator cannot read, random bytes."""
    parts = record["parts"]
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        section = compress(rng.randbytes(rng.choice([0, 4, 16]))) if rng.random() < 0.5 else rng.randbytes(8)
        return section, None, "unknown-size"
    damaged = rng.randrange(len(parts)) if parts else -1
    damage = rng.choice(ARRANGEMENT_DAMAGE)
    try:
        rows, n = perm.row_shape(record["shape"])
        runs = BlockLayout.from_dict(record.get("block")).groups(n)
        assert len(runs) == len(parts) and all(part.get("scheme") in schemes.INDEX_SCHEMES for part in parts)
        if rows * n == 0:
            made = empty_parts(parts, damaged, frame_kind, damage, rng)
        elif rows * n <= 4096 and n <= 4096:
            made = coded_parts(record, damaged, frame_kind, damage, rng)
        elif sum(rows * count * size * schemes.index_width(size) for count, size in runs) <= 16 << 20:
            made = [(frame_for(frame_kind if g == damaged else "valid", bytes(rows * count * size *
                                                                              schemes.index_width(size)), rng)
                     if part["scheme"] == "delta" else random_lanes(rng), {})
                    for g, (part, (count, size)) in enumerate(zip(parts, runs))]
            made = (made, None, frame_kind if parts[damaged]["scheme"] == "delta" else "random")
        else:
            raise ValueError("too big to make a payload of")
    except Exception:  # noqa: BLE001 - the decoder judges this record; the generator only fills its parts
        sections = [compress(rng.randbytes(rng.choice([0, 4, 16]))) if rng.random() < 0.5 else rng.randbytes(8)
                    for _ in parts]
        made = ([(section, {}) for section in sections], None, "unknown-size")
    sections, truth, how = made
    for part, (section, params) in zip(parts, sections):
        if params:
            part["scheme_params"] = params
        part["length"] = len(section)
    return b"".join(section for section, _ in sections), truth, how


def coded_parts(record: dict, damaged: int, frame_kind: str, damage: str, rng: random.Random):
    """([(section, scheme_params or {})] per part, sha256 or None, how the drawn part was made) of a small
    block record: see block_section."""
    init = decoder.tensor_init(record)
    view = perm.BlockView.of(init)
    initial_parts = view.split(init.regenerate().reshape(perm.row_shape(init.shape)))
    made, trained_parts, how = [], [], "valid"
    for g, (part, initial_part) in enumerate(zip(record["parts"], initial_parts)):
        initial = perm.SortedRows.of(initial_part)
        final, trained = random_arrangement(initial, rng)
        trained_parts.append(trained)
        if part["scheme"] == "delta":
            kind = frame_kind if g == damaged else "valid"
            made.append((frame_for(kind, delta_payload(final, initial), rng), {}))
        else:
            _, params, section = schemes.encode_best(perm.SortedRows.of(trained), initial, schemes.LEVELS["fast"],
                                                     part["scheme"])
            kind = damage if g == damaged else "valid"
            made.append((damaged_lanes(section, kind, rng) if kind in ("flip", "truncate") else
                         random_lanes(rng) if kind == "random" else section, params))
        how = kind if g == damaged else how
    truth = codec.sha256_of(view.join(trained_parts).reshape(init.shape))
    return made, truth, how


def empty_parts(parts: list, damaged: int, frame_kind: str, damage: str, rng: random.Random):
    """([(section, {})] per part, sha256 of nothing or None, how the drawn part was made) of a block record
    without elements: empty zstd frames and lanes that code nothing (their lanes as the record says)."""
    made, how = [], "valid"
    for g, part in enumerate(parts):
        if part["scheme"] == "delta":
            kind = frame_kind if g == damaged else "valid"
            made.append((frame_for(kind, b"", rng), {}))
        else:
            lanes = part["scheme_params"].get("lanes") if isinstance(part["scheme_params"], dict) else None
            section = rans.nothing_coded_section(lanes if isinstance(lanes, int) and 1 <= lanes <= 64 else 1)
            kind = damage if g == damaged else "valid"
            made.append((damaged_lanes(section, kind, rng) if kind in ("flip", "truncate") else
                         rng.randbytes(rng.choice([0, 4, 12, 16])) if kind == "random" else section, {}))
        how = kind if g == damaged else how
    return made, hashlib.sha256(b"").digest(), how


def section_for(record: dict, frame_kind: str, rng: random.Random):
    """(section, sha256 of the tensor a valid section decodes to or None, frame kind used)."""
    if "parts" in record:
        return block_section(record, frame_kind, rng)
    size = payload_size(record)
    if size == 0:
        return empty_section(record, frame_kind, rng)
    if record.get("kind") == "permuted" and record.get("scheme") in ARRANGEMENT_SCHEMES:
        return arrangement_section(record, rng)
    truth, payload = None, None
    if size is not None and record.get("kind") == "permuted" and size <= 16 << 20:  # up to 2^22 3-byte codes
        made = permuted_truth(record, rng)
        payload, truth = made if made else (bytes(size), None)
    elif size is not None and record.get("kind") != "permuted" and size <= 32 << 20:
        payload = raw_payload(record["dtype"], size, rng)
        truth = hashlib.sha256(payload).digest()
        payload = shuffle_zstd.shuffle_bytes(payload, container.DTYPE_SIZES[record["dtype"]])
    if payload is None:
        section = compress(rng.randbytes(rng.choice([0, 4, 16]))) if rng.random() < 0.5 else rng.randbytes(8)
        return section, None, "unknown-size"
    return frame_for(frame_kind, payload, rng), truth, frame_kind


def empty_section(record: dict, frame_kind: str, rng: random.Random):
    """(section, sha256 or None, how it was made) of a record with no elements, built without the encoder
    (whose arrays for [2^31 - 1, 0] would have a row each): the empty zstd frame in ``frame_kind``, or for
    the rANS schemes the lanes that code nothing, valid or damaged."""
    empty = hashlib.sha256(b"").digest()
    if not (record.get("kind") == "permuted" and record.get("scheme") in ARRANGEMENT_SCHEMES):
        return frame_for(frame_kind, b"", rng), empty, frame_kind
    params = record.get("scheme_params")
    lanes = params.get("lanes") if isinstance(params, dict) else None
    lanes = lanes if isinstance(lanes, int) and 1 <= lanes <= 64 else 1
    section = rans.nothing_coded_section(lanes)
    how = rng.choice(ARRANGEMENT_DAMAGE)
    if how == "flip":
        at = rng.randrange(len(section))
        return section[:at] + bytes([section[at] ^ (1 << rng.randrange(8))]) + section[at + 1:], None, how
    if how == "truncate":
        return section[:rng.randrange(len(section))], None, how
    if how == "random":
        return rng.randbytes(rng.choice([0, 4, 12, 16])), None, how
    return section, empty, "valid"


@st.composite
def hostile_files(draw, verify=None, half: str = "lowered"):
    """A hostile .pc file in ``half``, its CRCs valid unless a fault says otherwise, as a Case."""
    count = draw(st.integers(0, 4))
    big_at = draw(st.integers(0, 199)) - 196  # a big tensor in about one file out of a hundred
    empty_long_at = draw(st.integers(0, 7)) if half == "default" else -1  # in about one file out of four
    empty_block_at = draw(st.integers(0, 15))  # in about one file out of eight
    sizes = ["big" if i == big_at else "empty_long" if i == empty_long_at else
             "empty_block" if i == empty_block_at else "small" for i in range(count)]
    made = [draw(tensor_records(i, size, half)) for i, size in enumerate(sizes)]
    records = with_layout([m[0] for m in made], [m[1] for m in made])
    for record, (*_, layout_fault, _) in zip(records, made):
        if layout_fault:
            key, value = layout_fault
            record[key] = max(0, record[key] + int(value)) if value in ("+1", "-1") else value
    grouped = as_group(draw, records) if draw(st.integers(0, 3)) == 0 else None  # in about one file of four
    header = {"format": "permcodec", "version": 1, "tensors": records, "metadata": draw(METADATA)}
    fault = draw(FILE_FAULTS)
    value = draw(FILE_FAULT_VALUES[fault]) if fault in FILE_FAULT_VALUES else None
    rng = random.Random(draw(SEEDS))
    header_bytes, data_area, preamble = file_with_fault(header, b"".join(m[1] for m in made), fault, value, rng)
    verify = draw(st.integers(0, 7)) > 0 if verify is None else verify
    shas = [None if group_record(r) else m[2] if m[2] is not None else (r.get("sha256") if verify else None)
            for m, r in zip(made, records)]  # a group's members: the bytes of each are not known here
    expect = claims(records, shas)
    rejected = [f"tensor {i}'s section is a {m[4]!r} zstd frame" for i, m in enumerate(made) if m[4] in REJECTED_FRAMES]
    rejected += [f"a group member's position is {grouped}"] if grouped else []
    if fault == "tensors":  # the records were replaced: a decode may only return what the new list claims
        expect, rejected = (claims(value) if isinstance(value, list) else ()), []
    data = assemble(header_bytes, data_area, **preamble)
    if half == "default":
        assume(declared_elements(data) <= MAX_DECLARED)
    tags = set(sizes) | {tag for (record, *_), size in zip(made, sizes) if size != "empty_block"
                         for tag in record_tags(record)}
    tags |= {"group"} if grouped is not None else set()
    generator = "hostile" + "".join(f":{tag}" for tag in ("big", "empty_long", "empty_block", "block", "levels",
                                                          "group") if tag in tags)
    return Case(generator, data, expect, verify, "; ".join(rejected) or None, half)


POSITION_FAULTS = [None, None, None, "duplicate", "past_end", "negative", "float", "bool"]


def as_group(draw, records: list) -> str | None:
    """One raw record of ``records`` turned, in place, into a group record of two members that split its
    elements (its section unchanged), at drawn positions among the file's tensors: "" where they are valid, the
    fault that makes them invalid, or None where no record could be turned."""
    raw = [i for i, r in enumerate(records) if r.get("kind") == "raw" and isinstance(r.get("shape"), list)
           and all(type(size) is int and size >= 0 for size in r["shape"])]
    if not raw:
        return None
    index = raw[draw(st.integers(0, len(raw) - 1))]
    record = records[index]
    elements = math.prod(record["shape"])
    first = draw(st.integers(0, elements)) if elements < 2**31 else 0
    count = len(records) + 1
    positions = draw(st.lists(st.integers(0, count - 1), min_size=2, max_size=2, unique=True))
    fault = draw(st.sampled_from(POSITION_FAULTS))
    if fault == "duplicate":
        positions[1] = positions[0]
    elif fault is not None:
        positions[1] = {"past_end": count, "negative": -1, "float": float(positions[1]), "bool": True}[fault]
    name = record.get("name")
    records[index] = {"kind": "group", "dtype": record.get("dtype"), "names": [f"{name}.a", f"{name}.b"],
                      "shapes": [[first], [elements - first]], "positions": positions,
                      **{key: record[key] for key in ("codec", "offset", "length", "crc32", "sha256") if key in record}}
    return fault or ""


def record_tags(record: dict) -> set:
    """What a generated record holds that the report counts apart: "block" (block or parts), "levels"."""
    init = record.get("init")
    return ({"block"} if "block" in record or "parts" in record else set()) | \
        ({"levels"} if isinstance(init, dict) and init.get("dist") == "levels" else set())


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


# ---------------------------------------------------------------- one case through the entry points

ENTRY_POINTS = ("load", "safe_open", "info", "info --json", "verify")
CLI_ENTRY_POINTS = {"info": ["info"], "info --json": ["info", "--json"], "verify": ["verify"]}
# What an allocation refused by RLIMIT_AS looks like when it is not a MemoryError (torch, threads, C++).
ALLOCATION_FAILURES = ("can't allocate memory", "can't start new thread", "bad_alloc", "out of memory",
                       "Cannot allocate memory")


class CaseTimeout(BaseException):
    """A case ran past its hang limit (raised by SIGALRM inside the worker)."""


def raise_timeout(signum, frame):
    raise CaseTimeout()


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one case may spend, from the elements its header declares (counted up to MAX_DECLARED)."""

    declared: int       # elements the header declares (declared_elements)
    seconds: float      # time limit of the whole case: every entry point
    extra_bytes: int    # address space above the warmed worker's size

    @classmethod
    def of(cls, data: bytes, base_seconds: float = BASE_SECONDS) -> "Budget":
        declared = declared_elements(data)
        counted = min(declared, MAX_DECLARED)
        return cls(declared, base_seconds + SECONDS_PER_ELEMENT * counted,
                   AS_HEADROOM + BYTES_PER_DECLARED_ELEMENT * counted)

    @property
    def hang_seconds(self) -> float:
        return max(HANG_MIN, HANG_FACTOR * self.seconds)


@dataclasses.dataclass
class Ran:
    """What one entry point did with a case."""

    status: str                      # "OK", a PermcodecError's class name, "crash", "over cap", "hang" or "skipped"
    error: BaseException | None = None
    got: tuple | None = None         # load and safe_open: describe() of the tensors they returned
    note: str = ""                   # the CLI: what is wrong with what it printed, if anything

    @property
    def settled(self) -> bool:
        """Whether it ended as the API allows (OK or a PermcodecError), so that it can be compared."""
        return self.status not in ("crash", "over cap", "hang", "skipped")

    def text(self) -> str:
        if self.error is None:
            return self.status + (f" ({self.note})" if self.note else "")
        first = (str(self.error).strip().splitlines() or [""])[0]
        return f"{type(self.error).__name__}: {first[:300]}"


@dataclasses.dataclass
class Outcome:
    """A judged case."""

    outcome: str        # what load did: "decoded OK" or its exception's class name
    seconds: float      # wall time of all entry points
    cpu_seconds: float  # CPU time of this process (every thread) in that time
    budget: Budget
    ran: dict           # entry point -> Ran
    problems: list      # (problem, signature, detail); empty when the case passes

    @property
    def problem(self) -> str | None:
        return self.problems[0][0] if self.problems else None

    @property
    def detail(self) -> str:
        return "\n\n".join(f"{problem}: {signature}\n{detail}" for problem, signature, detail in self.problems)


def describe(tensors) -> tuple:
    return tuple((name, DTYPE_NAMES.get(t.dtype), tuple(t.shape), hashlib.sha256(codec.tensor_bytes(t)).digest())
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
    """Exception class and the innermost frame inside permcodec (or the innermost frame at all); for a
    MemoryLimitError, also those of the allocation failure it replaced."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "permcodec" in f.filename and "/tools/" not in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    inner = err.__context__
    if isinstance(err, permcodec.PermcodecError) and isinstance(inner, BaseException) and allocation_failure(inner):
        return f"{type(err).__name__} at {where} ({failure_signature(inner)})"
    return f"{type(err).__name__} at {where}"


def allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is an allocation refused (under RLIMIT_AS: past the case's cap). permcodec names one as
    a MemoryLimitError, which is a MemoryError too."""
    if isinstance(err, MemoryError) or isinstance(err, OSError) and err.errno == errno.ENOMEM:
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in ALLOCATION_FAILURES)


def status_of(err: BaseException, capped: bool) -> str:
    """How an entry point ended. Under a cap an allocation failure is "over cap", even as a PermcodecError:
    the cap is the memory the case may use, so running out of it is the finding."""
    if capped and allocation_failure(err):
        return "over cap"
    if isinstance(err, permcodec.PermcodecError):
        return type(err).__name__
    if isinstance(err, CaseTimeout):
        return "hang"
    return "crash"


def clear_frames(err: BaseException) -> None:
    """Drop the locals of the frames ``err`` and the exceptions behind it went through (a failed decode's
    arrays), keeping what a traceback prints."""
    seen = set()
    while isinstance(err, BaseException) and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


# ---------------------------------------------------------------- process state around a case

def vm_size() -> int:
    """This process's address-space size (VmSize in /proc/self/status), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def address_space_cap(limit: int | None):
    """RLIMIT_AS's soft limit at ``limit`` bytes inside the block (no cap for None), as before after it."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def decoder_limits(half: str):
    """For a lowered case, ``permcodec.format.limits.DEFAULT_LIMITS = FUZZ_LIMITS`` inside the block.

    The CLI has no limits option: it reaches the decoder with ``limits=None``,
    which permcodec reads as caps.DEFAULT_LIMITS at call time. This is
    the only way info and verify run under the lowered caps.
    """
    if half != "lowered":
        yield
        return
    saved = caps.DEFAULT_LIMITS
    caps.DEFAULT_LIMITS = FUZZ_LIMITS
    try:
        yield
    finally:
        caps.DEFAULT_LIMITS = saved


def cli_shares_limits(path) -> bool:
    """Whether load and safe_open without ``limits`` read caps.DEFAULT_LIMITS at call time (see
    decoder_limits); a permcodec that binds the default at import does not, and its CLI ignores FUZZ_LIMITS."""
    saved = caps.DEFAULT_LIMITS
    caps.DEFAULT_LIMITS = Limits(max_tensors=0)
    try:
        for open_file in (lambda: codec.load(path), lambda: codec.safe_open(path).close()):
            try:
                open_file()
            except permcodec.LimitError:
                continue
            except Exception:  # noqa: BLE001 - whatever else goes wrong, the limits did not reach it
                return False
            return False
        return True
    finally:
        caps.DEFAULT_LIMITS = saved


class TracedCLI:
    """``permcodec.cli.main`` as the fuzzer calls it: main prints a PermcodecError and an OSError alike, so the
    commands' run functions are wrapped to record what main caught.

    main builds its argparse parser anew on every call (2.5 ms, most of a
    small case's time); while ``run`` calls main, ``cli.parser`` returns one
    parser built once, with the wrapped run functions in its defaults.
    Nothing else of permcodec.cli is changed, and nothing outside ``run``.
    """

    def __init__(self):
        self.caught: list[BaseException] = []
        saved = cli.run_info, cli.run_verify
        cli.run_info, cli.run_verify = self.traced(cli.run_info), self.traced(cli.run_verify)
        try:
            self.parser = cli.parser()
        finally:
            cli.run_info, cli.run_verify = saved

    def traced(self, run):
        def wrapper(args):
            try:
                return run(args)
            except BaseException as err:
                clear_frames(err)  # the decoder's locals go now, not at the next gc
                self.caught.append(err)
                raise
        return wrapper

    def run(self, argv: list[str]) -> tuple[int, str, str, BaseException | None]:
        """main(argv) with stdout and stderr captured: (exit code, stdout, stderr, what main caught or None)."""
        self.caught.clear()
        saved, cli.parser = cli.parser, lambda: self.parser
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(argv)
        finally:
            cli.parser = saved
        return code, out.getvalue(), err.getvalue(), self.caught[-1] if self.caught else None


_traced_cli: TracedCLI | None = None


def run_cli(argv: list[str]) -> tuple[int, str, str, BaseException | None]:
    """``permcodec.cli.main(argv)`` in this process (see TracedCLI)."""
    global _traced_cli
    _traced_cli = _traced_cli or TracedCLI()
    return _traced_cli.run(argv)


def cli_ran(entry: str, code: int, out: str, err: str, caught, capped: bool) -> Ran:
    """Judge one CLI run: 0, or non-zero with one line ``permcodec CMD: error: ...`` for a PermcodecError."""
    if code == 0:
        if entry == "info --json":
            try:
                json.loads(out)
            except ValueError as error:
                return Ran("crash", error, note=f"info --json printed no valid JSON: {out[:200]!r}")
        return Ran("OK")
    if isinstance(caught, permcodec.PermcodecError) and not (capped and allocation_failure(caught)):
        prefix = f"permcodec {entry.split()[0]}: error: "
        lines = err.splitlines()
        note = "" if len(lines) == 1 and lines[0].startswith(prefix) else \
            f"printed {err[:300]!r}, expected one line {prefix!r}..."
        return Ran(type(caught).__name__, caught, note=note)
    if caught is None:
        return Ran("crash", note=f"exit code {code} with no exception caught; stderr {err[:300]!r}")
    return Ran(status_of(caught, capped), caught)


# ---------------------------------------------------------------- running and judging a case

class Runner:
    """Runs cases in this process through ENTRY_POINTS: each written once to one temp file, run under its
    budgets (address-space cap and alarm, each optional), then judged."""

    def __init__(self, workdir, base_seconds: float = BASE_SECONDS, cap: bool = True, alarm: bool = True):
        self.path = Path(workdir) / "case.pc"
        self.base_seconds, self.cap, self.alarm = base_seconds, cap, alarm
        self.warm_size = 0           # VmSize after warm-up (settle)
        self.largest_size = 0        # largest VmSize at the start of a case (the cap's base if over warm_size)
        self.shares_limits = True    # whether the CLI runs under FUZZ_LIMITS in the lowered half (settle)

    def settle(self, probe: Path = FIXTURES / "tiny_linear.pc") -> None:
        """After warm-up: see whether the CLI can get FUZZ_LIMITS, and take the worker's size."""
        self.shares_limits = cli_shares_limits(probe)
        gc.collect()
        self.warm_size = vm_size()

    def __call__(self, case: Case, budget: Budget | None = None, capped: bool = True) -> Outcome:
        budget = budget or Budget.of(case.data, self.base_seconds)
        self.path.write_bytes(case.data)
        capped = capped and self.cap
        self.largest_size = max(self.largest_size, size := vm_size())
        limit = max(self.warm_size, size) + budget.extra_bytes if capped else None
        ran = {}
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            with decoder_limits(case.half), address_space_cap(limit):
                try:
                    if self.alarm:
                        signal.setitimer(signal.ITIMER_REAL, budget.hang_seconds)
                    self.entry_points(case, ran, capped)
                finally:  # before the cap is lifted: a late alarm must not interrupt that
                    if self.alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
        except CaseTimeout:  # between two entry points
            pass
        ran.update({entry: Ran("hang") for entry in ENTRY_POINTS if entry not in ran})
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        problems = case_problems(case, ran, budget)
        for result in ran.values():  # each traceback holds the frame that holds ``ran``: a cycle for the gc
            if result.error is not None:
                result.error.__traceback__ = result.error.__context__ = result.error.__cause__ = None
        if seconds > budget.seconds:  # CPU time in the detail: far below the wall time, the machine was busy
            problems.append(("slow", f"over its time limit ({case.generator}, {case.half})",
                             f"{seconds:.3f} s ({cpu_seconds:.3f} s CPU), limit {budget.seconds:g} s, "
                             f"{budget.declared:,} elements declared"))
        load = ran["load"].status
        return Outcome("decoded OK" if load == "OK" else load, seconds, cpu_seconds, budget, ran, problems)

    def entry_points(self, case: Case, ran: dict, capped: bool) -> None:
        path = str(self.path)
        limits = {"limits": FUZZ_LIMITS} if case.half == "lowered" else {}

        def load():
            return describe(permcodec.load(path, verify=case.verify, **limits))

        def opened():
            with permcodec.safe_open(path, verify=case.verify, **limits) as f:
                return describe({name: f.get_tensor(name) for name in f.keys()})

        steps = {"load": load, "safe_open": opened}
        for entry in ENTRY_POINTS:
            if entry in CLI_ENTRY_POINTS and self.skips_cli(case, ran):
                ran[entry] = Ran("skipped")
                continue
            try:
                if entry in steps:
                    ran[entry] = Ran("OK", got=steps[entry]())
                else:
                    ran[entry] = cli_ran(entry, *run_cli([*CLI_ENTRY_POINTS[entry], path]), capped)
            except KeyboardInterrupt:
                raise
            except BaseException as err:  # noqa: BLE001 - anything but a PermcodecError is the finding
                clear_frames(err)  # free what the failed call held before the next entry point runs
                ran[entry] = Ran(status_of(err, capped), err)
            if ran[entry].status == "hang":
                ran.update({rest: Ran("skipped") for rest in ENTRY_POINTS if rest not in ran})
                return

    def skips_cli(self, case: Case, ran: dict) -> bool:
        """A lowered case that load refuses by FUZZ_LIMITS, where the CLI cannot get them (it would read the file
        under the default limits, which may mean billions of elements)."""
        return case.half == "lowered" and not self.shares_limits and ran["load"].status == "LimitError"


def error_text(err: BaseException) -> str:
    """The traceback of ``err``, with that of the exception it replaced even where ``from None`` hides it."""
    text = "".join(traceback.format_exception(err))
    inner = err.__context__
    if err.__suppress_context__ and isinstance(inner, BaseException):
        text = "".join(traceback.format_exception(inner)) + "\nwhich was replaced by\n\n" + text
    return text


def case_problems(case: Case, ran: dict, budget: Budget) -> list:
    """(problem, signature, detail) of everything wrong with what the entry points did with ``case``."""
    problems = []
    for entry, result in ran.items():
        if result.status in ("crash", "over cap"):
            where = failure_signature(result.error) if result.error is not None else result.note
            detail = error_text(result.error) if result.error is not None else ""
            problem = "crash" if result.status == "crash" else "over address-space cap"
            problems.append((problem, f"{entry}: {where}", (result.note + "\n" + detail).strip()))
        elif result.status == "hang":
            problems.append(("hang", f"{entry}: still running after {budget.hang_seconds:g} s ({case.generator})",
                             f"{budget.declared:,} elements declared"))
        elif result.note:
            problems.append(("bad CLI error line", f"{entry}: {result.status}", result.note))
    for entry in ("load", "safe_open"):
        result = ran.get(entry)
        if result is None or result.status != "OK":
            continue
        wrong = silent_corruption(case.expect, result.got)
        if wrong:
            problems.append(("silent corruption", f"{entry} ({case.generator}, {case.half})", wrong))
        elif case.must_fail:
            problems.append(("accepted invalid file", f"{entry}: {case.must_fail.split('; ')[0].split(' is ')[-1]}",
                             case.must_fail))
    return problems + disagreements(case, ran)


def disagreements(case: Case, ran: dict) -> list:
    """The entry points read the same validated header: they must agree on whether the file is good.

    load and safe_open: the same outcome and bits; info and info --json: the
    same outcome; verify (always with the SHA-256 check) succeeds exactly when
    load does, except that load with verify=False may pass a file whose hashes
    do not match; a file that loads is also described by info.
    """
    found = []

    def compare(a: str, b: str, agree) -> None:
        if a in ran and b in ran and ran[a].settled and ran[b].settled and not agree(ran[a], ran[b]):
            found.append(("entry points disagree", f"{a} {ran[a].status}, {b} {ran[b].status}",
                          f"{a}: {ran[a].text()}\n{b}: {ran[b].text()}\ngenerator {case.generator}, {case.half} "
                          f"limits, verify={case.verify}"))

    compare("load", "safe_open", lambda a, b: (a.status, a.got) == (b.status, b.got))
    compare("info", "info --json", lambda a, b: a.status == b.status)
    compare("load", "verify", lambda a, b: (a.status == "OK") == (b.status == "OK")
            or a.status == "OK" and not case.verify and b.status == "IntegrityError")
    compare("load", "info", lambda a, b: a.status != "OK" or b.status == "OK")
    return found


def hypothesis_cases(count: int, batch_seed: int, on_case, half: str = "lowered") -> None:
    """Draw ``count`` hostile files for ``half`` from hypothesis and hand each to ``on_case``."""
    if count <= 0:
        return

    @hypothesis_seed(batch_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(hostile_files(half=half))
    def draw(case):
        on_case(case)

    draw()


# ---------------------------------------------------------------- tallies

PROBLEMS_NOT_PERMCODEC = ("crash", "hang", "worker died")


@dataclasses.dataclass
class Tally:
    """What one worker saw; tallies add up."""

    cases: int = 0
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # load's outcome
    entries: collections.Counter = dataclasses.field(default_factory=collections.Counter)   # (entry, status)
    halves: dict = dataclasses.field(default_factory=dict)       # half -> Counter(cases, decoded OK, failures)
    generators: dict = dataclasses.field(default_factory=dict)   # generator -> Counter(cases, decoded OK, failures)
    failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (problem, signature)
    examples: dict = dataclasses.field(default_factory=dict)     # (problem, signature) -> [reproducer path]
    slowest: tuple = (0.0, 0.0, "", "", 0, b"", 0.0)  # seconds, limit, generator, half, declared, bytes, CPU s
    over_time: int = 0
    over_cap: int = 0                             # cases with an entry point over its address-space cap
    cli_skipped: int = 0                          # lowered cases whose CLI runs were skipped (see Runner.skips_cli)
    peak_rss: int = 0                             # bytes
    warm_size: int = 0                            # bytes of address space after warm-up (largest worker)
    largest_size: int = 0                         # bytes of address space at a case's start (largest seen)
    shares_limits: bool = True
    lost: int = 0                                 # cases given up with a unit that kept killing workers
    restarts: int = 0

    def add(self, other: "Tally") -> None:
        self.cases += other.cases
        self.outcomes.update(other.outcomes)
        self.entries.update(other.entries)
        for mine, theirs in ((self.halves, other.halves), (self.generators, other.generators)):
            for name, counts in theirs.items():
                mine.setdefault(name, collections.Counter()).update(counts)
        self.failures.update(other.failures)
        for key, paths in other.examples.items():
            kept = self.examples.setdefault(key, [])
            kept.extend([path for path in paths if path not in kept][:REPRODUCERS_PER_SIGNATURE - len(kept)])
        self.slowest = max(self.slowest, other.slowest, key=lambda s: s[0])
        self.over_time += other.over_time
        self.over_cap += other.over_cap
        self.cli_skipped += other.cli_skipped
        self.peak_rss = max(self.peak_rss, other.peak_rss)
        self.warm_size = max(self.warm_size, other.warm_size)
        self.largest_size = max(self.largest_size, other.largest_size)
        self.shares_limits = self.shares_limits and other.shares_limits
        self.lost += other.lost
        self.restarts += other.restarts

    def count(self, problems) -> int:
        return sum(n for (problem, _), n in self.failures.items() if problem in problems)

    def record(self, case: Case, outcome: Outcome) -> None:
        self.cases += 1
        self.outcomes[outcome.outcome] += 1
        self.entries.update((entry, result.status) for entry, result in outcome.ran.items())
        for counts in (self.halves.setdefault(case.half, collections.Counter()),
                       self.generators.setdefault(case.generator, collections.Counter())):
            counts["cases"] += 1
            counts["decoded OK"] += outcome.outcome == "decoded OK"
            counts["failures"] += bool(outcome.problems)
        if outcome.seconds > self.slowest[0]:
            self.slowest = (outcome.seconds, outcome.budget.seconds, case.generator, case.half,
                            outcome.budget.declared, case.data, outcome.cpu_seconds)
        self.over_time += outcome.seconds > outcome.budget.seconds
        self.over_cap += any(result.status == "over cap" for result in outcome.ran.values())
        self.cli_skipped += outcome.ran["verify"].status == "skipped" and outcome.ran["load"].status == "LimitError"


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
    """Runs cases with a Runner and keeps the tally; saves a few reproducers per kind of failure."""

    def __init__(self, out: Path, runner: Runner, inflight=None):
        self.out, self.runner, self.inflight = out, runner, inflight
        self.tally = Tally()

    def __call__(self, case: Case, position: int = 0) -> Outcome:
        budget = Budget.of(case.data, self.runner.base_seconds)
        if self.inflight is not None:
            self.inflight.hold(case, position, budget.hang_seconds)
        outcome = self.runner(case, budget)
        if self.inflight is not None:
            self.inflight.clear()
        self.tally.record(case, outcome)
        for problem, signature, detail in outcome.problems:
            self.record_failure(problem, signature, case, f"{detail}\n\n{budget.declared:,} elements declared, "
                                                        f"{outcome.seconds:.3f} s of {budget.seconds:g} s")
        return outcome

    def record_failure(self, problem: str, signature: str, case: Case, detail: str) -> None:
        key = (problem, signature)
        self.tally.failures[key] += 1
        paths = self.tally.examples.setdefault(key, [])
        if len(paths) < REPRODUCERS_PER_SIGNATURE:
            text = (f"{problem}: {signature}\ngenerator: {case.generator}\nlimits: {case.half}\n"
                    f"verify: {case.verify}\n\n{detail}")
            path = save_case(self.out, slug(f"{problem} {signature}"), case.data, text)
            if path not in paths:
                paths.append(path)

    def take(self) -> Tally:
        """The tally so far, with the process's peak memory; the next one starts empty."""
        tally, self.tally = self.tally, Tally()
        tally.peak_rss = rss_bytes()
        tally.warm_size = self.runner.warm_size
        tally.largest_size = self.runner.largest_size
        tally.shares_limits = self.runner.shares_limits
        return tally


# ---------------------------------------------------------------- workers

class Inflight:
    """Shared memory holding the case a worker is running, so the parent can save it if the worker hangs or dies."""

    def __init__(self, ctx):
        self.buffer = ctx.Array(ctypes.c_ubyte, MAX_CASE_BYTES, lock=False)
        self.length = ctx.Value(ctypes.c_int64, 0, lock=False)
        self.position = ctx.Value(ctypes.c_int64, 0, lock=False)
        self.started = ctx.Value(ctypes.c_double, 0.0, lock=False)
        self.hang_seconds = ctx.Value(ctypes.c_double, 0.0, lock=False)
        self.generator = ctx.Array(ctypes.c_char, 64, lock=False)
        self.half = ctx.Array(ctypes.c_char, 16, lock=False)

    def hold(self, case: Case, position: int, hang_seconds: float) -> None:
        data = case.data[:MAX_CASE_BYTES]
        ctypes.memmove(self.buffer, data, len(data))
        self.length.value = len(data)
        self.position.value = position
        self.hang_seconds.value = hang_seconds
        self.generator.value = case.generator.encode()[:63]
        self.half.value = case.half.encode()[:15]
        self.started.value = time.monotonic()

    def clear(self) -> None:
        self.started.value = 0.0

    def case(self) -> tuple[str, str, bytes]:
        """(generator, half, bytes) of the case held."""
        return self.generator.value.decode(), self.half.value.decode(), bytes(self.buffer[:self.length.value])


def warm_up(fixtures: list[Fixture], runner: Runner) -> None:
    """Run, uncapped, what allocates big long-lived things the first time, so that the worker's size after it
    holds them: every golden file through every entry point in both halves; a tensor of each scheme and of two
    distributions big enough (327,680 elements, over the 2^18 where decoding splits across threads) for the
    parallel kernels, so that numba loads its kernels, the thread pool starts and each thread gets its malloc
    arena; and a few cases of each family (hypothesis's caches, the error paths' imports)."""
    from torch import nn

    cases = [Case("warm-up", f.data, f.expect, half=half) for f in fixtures for half in HALVES]
    for dist, options in (("he_uniform", {}), ("sparse", {"density": 0.3})):
        layer = nn.Linear(640, 512, bias=False)
        permcodec.init_(layer, 1, dist=dist, **options)
        expect = (("weight", "float32", (512, 640), codec.sha256_of(layer.weight)),)
        for scheme in schemes.SCHEMES:
            data = permcodec.encode(layer, scheme=scheme, level="fast")
            cases += [Case("warm-up", data, expect, half=half) for half in HALVES]
    for half in HALVES:
        cases += [damage_case(0, index, fixtures, half) for index in range(20)]
        hypothesis_cases(20, 0, cases.append, half)
    alarm, runner.alarm = runner.alarm, False  # a cold numba cache compiles for longer than a hang limit
    try:
        for case in cases:
            runner(case, capped=False)
    finally:
        runner.alarm = alarm


@dataclasses.dataclass(frozen=True)
class Unit:
    """A batch of cases a worker runs: ``count`` cases of one family in one half, from ``start``.

    After a worker dies inside the unit it resumes at ``resume``, skipping the
    positions in ``skip`` (the cases that killed a worker).
    """

    family: str         # "damage" or "hostile"
    half: str
    start: int          # damage: index of the first case; hostile: batch number
    count: int
    resume: int = 0
    skip: frozenset = frozenset()

    def wants(self, position: int) -> bool:
        return position >= self.resume and position not in self.skip

    def remaining(self) -> int:
        return sum(self.wants(position) for position in range(self.resume, self.count))

    def hypothesis_seed(self, seed: int) -> int:
        return seed * 1_000_003 + 2 * self.start + (self.half == "default")


def plan(cases: int, hostile_share: float, batch: int) -> list[Unit]:
    """Work units: half the cases in each half, each half's families split by ``hostile_share``; interleaved."""
    lists = []
    for half, count in zip(HALVES, (cases - cases // 2, cases // 2)):
        hostile = round(count * hostile_share)
        damage = count - hostile
        lists.append([Unit("damage", half, i, min(batch, damage - i)) for i in range(0, damage, batch)])
        lists.append([Unit("hostile", half, b, min(batch, hostile - b * batch))
                      for b in range(math.ceil(hostile / batch))])
    return [unit for group in itertools.zip_longest(*lists) for unit in group if unit is not None]


def run_unit(judge: Judge, unit: Unit, seed: int, fixtures: list[Fixture], progress) -> None:
    """Run the cases of ``unit`` that it still wants; ``progress(position, failed)`` after each."""
    def one(case: Case, position: int) -> None:
        progress(position, bool(judge(case, position).problems))

    try:
        if unit.family == "damage":
            for position in range(unit.resume, unit.count):
                if unit.wants(position):
                    one(damage_case(seed, unit.start + position, fixtures, unit.half), position)
            return
        drawn = itertools.count()

        def on_case(case: Case) -> None:
            position = next(drawn)
            if unit.wants(position):
                one(case, position)

        hypothesis_cases(unit.count, unit.hypothesis_seed(seed), on_case, unit.half)
    except Exception as err:  # noqa: BLE001 - a generator bug must not pass for a decoder bug
        judge.record_failure("fuzzer error", failure_signature(err), Case(f"{unit.family} unit", b"", (),
                             half=unit.half), "".join(traceback.format_exception(err)))


def worker(index: int, generation: int, tasks, results, inflight: Inflight, seed: int, out: str,
           base_seconds: float, workdir: str) -> None:
    """Warm up, then take units from ``tasks`` until None; report tallies on ``results``."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, raise_timeout)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    fixtures = load_fixtures()
    runner = Runner(workdir, base_seconds)
    warm_up(fixtures, runner)
    runner.settle()
    results.put(("ready", index, generation, runner.warm_size))
    judge = Judge(Path(out), runner, inflight)
    while (task := tasks.get()) is not None:
        unit_id, unit = task
        last = time.monotonic()

        def progress(position: int, failed: bool) -> None:
            nonlocal last
            if failed or time.monotonic() - last > PROGRESS_SECONDS:
                results.put(("progress", index, generation, unit_id, position + 1, judge.take()))
                last = time.monotonic()

        run_unit(judge, unit, seed, fixtures, progress)
        results.put(("done", index, generation, unit_id, unit.count, judge.take()))


# ---------------------------------------------------------------- parent: hand-out, watchdog and report

@dataclasses.dataclass
class Slot:
    """One worker process as the parent sees it."""

    index: int
    inflight: Inflight
    process: object = None
    tasks: object = None
    generation: int = 0
    ready: bool = False
    unit_id: int | None = None
    done_through: int = 0       # positions of the held unit before this one are in the tally
    stopped: bool = False


@contextlib.contextmanager
def environment(values: dict):
    """os.environ with ``values`` set inside the block (for the processes started there)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shared_memory_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class Pool:
    """Hands units to workers one at a time; replaces a worker that dies or hangs and requeues the rest of its
    unit after the case that killed it."""

    MAX_WARM_UP_DEATHS = 3
    MAX_STALLS = 3   # deaths outside any case without progress before a unit is given up

    def __init__(self, args):
        self.args = args
        self.ctx = multiprocessing.get_context("spawn")
        self.units = dict(enumerate(plan(args.cases, args.hostile_share, args.batch)))
        self.pending = collections.deque(self.units)
        self.results = self.ctx.Queue()
        self.scratch = Path(tempfile.mkdtemp(prefix="permcodec-fuzz-", dir=shared_memory_dir()))
        self.slots = [Slot(i, Inflight(self.ctx)) for i in range(args.jobs)]
        self.total = Tally()
        self.stalls = collections.Counter()
        self.warm_up_deaths = 0

    def start(self, slot: Slot) -> None:
        slot.generation += 1
        slot.tasks, slot.ready, slot.unit_id = self.ctx.Queue(), False, None
        slot.process = self.ctx.Process(
            target=worker, daemon=True,
            args=(slot.index, slot.generation, slot.tasks, self.results, slot.inflight, self.args.seed,
                  str(self.args.out), self.args.time_limit, str(self.scratch / f"worker-{slot.index}")))
        with environment(WORKER_ENVIRONMENT):
            slot.process.start()

    def hand_out(self, slot: Slot) -> None:
        if slot.unit_id is None and self.pending and not slot.stopped:
            unit_id = self.pending.popleft()
            slot.unit_id, slot.done_through = unit_id, self.units[unit_id].resume
            slot.tasks.put((unit_id, self.units[unit_id]))

    def receive(self, message) -> None:
        kind, index, generation, *rest = message
        slot = self.slots[index]
        if generation != slot.generation:
            return  # from a worker already replaced; its unit was requeued from what had arrived
        if kind == "ready":
            slot.ready = True
            self.total.warm_size = max(self.total.warm_size, rest[0])
        elif kind == "progress" and rest[0] == slot.unit_id:
            slot.done_through = rest[1]
            self.total.add(rest[2])
        elif kind == "done" and rest[0] == slot.unit_id:
            slot.unit_id = None
            self.total.add(rest[2])

    def drain(self) -> None:
        while True:
            try:
                self.receive(self.results.get_nowait())
            except queue.Empty:
                return

    def watch(self, slot: Slot) -> None:
        """Replace the worker of ``slot`` if it died or hangs in a case."""
        started = slot.inflight.started.value
        hung = slot.process.is_alive() and started and \
            time.monotonic() - started > slot.inflight.hang_seconds.value + 5
        if not hung and (slot.process.is_alive() or slot.stopped):
            return
        if hung:
            slot.process.kill()
        slot.process.join()
        self.drain()
        problem = "hang" if hung else "worker died"
        if started:
            generator, half, data = slot.inflight.case()
            key = (problem, f"exit code {slot.process.exitcode} ({generator}, {half})")
            self.total.cases += 1
            for counts in (self.total.halves.setdefault(half, collections.Counter()),
                           self.total.generators.setdefault(generator, collections.Counter())):
                counts.update(cases=1, failures=1)
            self.total.failures[key] += 1
            examples = self.total.examples.setdefault(key, [])
            if len(examples) < REPRODUCERS_PER_SIGNATURE:
                examples.append(save_case(Path(self.args.out), slug(f"{problem} {generator} {half}"), data,
                                          f"{problem}: {key[1]}\nlimits: {half}"))
        else:
            self.total.failures[("worker died", f"exit code {slot.process.exitcode} outside a case")] += 1
        if not slot.ready:
            self.warm_up_deaths += 1
            if self.warm_up_deaths >= self.MAX_WARM_UP_DEATHS:
                raise SystemExit(f"fuzz: workers keep dying before their first case (exit code "
                                 f"{slot.process.exitcode}); run one in the foreground to see why")
        self.requeue(slot, slot.inflight.position.value if started else None)
        slot.inflight.clear()
        self.total.restarts += 1
        self.start(slot)

    def requeue(self, slot: Slot, killer: int | None) -> None:
        if slot.unit_id is None:
            return
        unit = self.units[slot.unit_id]
        if killer is None and slot.done_through == unit.resume:
            self.stalls[slot.unit_id] += 1
        skip = unit.skip | ({killer} if killer is not None else set())
        rest = dataclasses.replace(unit, resume=slot.done_through, skip=frozenset(skip))
        if self.stalls[slot.unit_id] >= self.MAX_STALLS:
            self.total.lost += rest.remaining()
            return
        self.units[slot.unit_id] = rest
        self.pending.appendleft(slot.unit_id)

    def run(self) -> Tally:
        began = time.monotonic()
        for slot in self.slots:
            self.start(slot)
        try:
            while self.pending or any(slot.unit_id is not None for slot in self.slots):
                for slot in self.slots:
                    self.hand_out(slot)
                try:
                    self.receive(self.results.get(timeout=0.5))
                except queue.Empty:
                    pass
                for slot in self.slots:
                    self.watch(slot)
                if self.args.progress:
                    print(f"\r{self.total.cases:,}/{self.args.cases:,} cases, {time.monotonic() - began:.0f} s",
                          end="", file=sys.stderr)
            for slot in self.slots:
                slot.stopped = True
                slot.tasks.put(None)
            for slot in self.slots:
                slot.process.join(timeout=30)
        finally:
            for slot in self.slots:
                if slot.process is not None and slot.process.is_alive():
                    slot.process.kill()
            shutil.rmtree(self.scratch, ignore_errors=True)
        if self.args.progress:
            print(file=sys.stderr)
        return self.total


def run(args) -> Tally:
    """Run ``args.cases`` cases on ``args.jobs`` workers (see Pool)."""
    return Pool(args).run()


def table(rows, header) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def entry_rows(total: Tally) -> list:
    rows = []
    for entry in ENTRY_POINTS:
        statuses = {status: n for (name, status), n in total.entries.items() if name == entry}
        errors = sum(n for status, n in statuses.items() if status not in ("OK", "crash", "over cap", "hang",
                                                                          "skipped"))
        rows.append((entry, f"{sum(statuses.values()) - statuses.get('skipped', 0):,}", f"{statuses.get('OK', 0):,}",
                     f"{errors:,}", f"{statuses.get('crash', 0):,}", f"{statuses.get('over cap', 0):,}",
                     f"{statuses.get('hang', 0):,}", f"{statuses.get('skipped', 0):,}"))
    return rows


def report(total: Tally, args, seconds: float) -> str:
    limits = FUZZ_LIMITS
    caps = (f"header ≤ {limits.max_header_bytes >> 10} KiB, ≤ {limits.max_tensors} tensors, ≤ {limits.max_dims} "
            f"dims, dim ≤ 2^{limits.max_dim.bit_length() - 1}, ≤ 2^{limits.max_tensor_elements.bit_length() - 1} "
            f"elements per tensor, ≤ 2^{limits.max_total_elements.bit_length() - 1} per file")
    crash_kinds = [key for key in total.failures if key[0] in PROBLEMS_NOT_PERMCODEC]
    halves = {half: total.halves.get(half, collections.Counter())["cases"] for half in HALVES}
    runs = ", ".join(f"{entry} {sum(n for (name, s), n in total.entries.items() if name == entry and s != 'skipped'):,}"
                     for entry in ENTRY_POINTS)
    slow_s, slow_limit, slow_generator, slow_half, slow_declared, _, slow_cpu = total.slowest
    shared = "yes" if total.shares_limits else \
        (f"no: permcodec binds DEFAULT_LIMITS at import, so the CLI read lowered cases under the default limits; "
         f"it was skipped for the {total.cli_skipped:,} that load refused with a LimitError")
    summary = [
        ("cases run", f"{total.cases:,} (lowered caps {halves['lowered']:,}, default limits {halves['default']:,})"
         + (f", {total.lost:,} given up" if total.lost else ""), f"{args.cases:,}"),
        ("entry-point runs", runs, "each case through each"),
        ("failures that are not a PermcodecError", f"{total.count(PROBLEMS_NOT_PERMCODEC):,} "
         f"({len(crash_kinds)} distinct)", "0"),
        ("silent corruptions (decoded, wrong tensors)", f"{total.count(('silent corruption',)):,}", "0"),
        ("invalid files accepted (spec says reject)", f"{total.count(('accepted invalid file',)):,}", "0"),
        ("entry points disagree", f"{total.count(('entry points disagree',)):,}", "0"),
        ("CLI errors not printed as one line", f"{total.count(('bad CLI error line',)):,}", "0"),
        ("cases over their address-space cap", f"{total.over_cap:,}", "0"),
        ("cases over their time limit", f"{total.over_time:,}", "0"),
        ("slowest case", f"{slow_s:.3f} s ({slow_cpu:.3f} s CPU), limit {slow_limit:g} s ({slow_generator}, "
         f"{slow_half} limits, {slow_declared:,} elements declared)", "≤ its limit"),
        ("throughput", f"{total.cases / seconds:.1f} cases/s ({seconds:.0f} s, {args.jobs} worker(s), seed "
         f"{args.seed}, {total.restarts} restart(s))", ""),
        ("budgets per case", f"time {args.time_limit:g} s + 1 s per 2^22 declared elements; address space "
         f"{total.warm_size / 2**20:,.0f} MiB (warmed worker) + {AS_HEADROOM >> 20} MiB + "
         f"{BYTES_PER_DECLARED_ELEMENT} B per declared element", "declared ≤ 2^22 in the default half"),
        ("caps of the lowered half", caps, ""),
        ("CLI under the lowered caps", shared, "yes"),
        ("worker memory", f"peak RSS {total.peak_rss / 2**20:,.0f} MiB; address space at a case's start up to "
         f"{total.largest_size / 2**20:,.0f} MiB (after warm-up {total.warm_size / 2**20:,.0f} MiB)", ""),
        ("fuzzer errors", f"{total.count(('fuzzer error',))}", "0"),
    ]
    outcomes = sorted(total.outcomes.items(), key=lambda kv: -kv[1])
    generators = sorted((name, f"{c['cases']:,}", f"{c['decoded OK']:,}", c["failures"])
                        for name, c in total.generators.items())
    half_rows = [(half, f"{c['cases']:,}", f"{c['decoded OK']:,}", f"{c['failures']:,}")
                 for half, c in sorted(total.halves.items())]
    parts = [table(summary, ["goal", "result", "target"]), "",
             table(entry_rows(total), ["entry point", "runs", "OK", "PermcodecError", "other exception",
                                       "over cap", "hang", "skipped"]), "",
             table(half_rows, ["limits", "cases", "load decoded OK", "cases failing"]), "",
             table([(name, f"{n:,}") for name, n in outcomes], ["outcome of load", "cases"]), "",
             table(generators, ["generator", "cases", "decoded OK", "cases failing"])]
    if total.failures:
        rows = [(problem, signature, f"{n:,}", "<br>".join(total.examples.get((problem, signature), [])))
                for (problem, signature), n in sorted(total.failures.items(), key=lambda kv: -kv[1])]
        parts += ["", table(rows, ["failure", "signature", "cases", "reproducers"])]
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=200_000, help="cases to run, half per limits (default 200,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both case families (default 0)")
    parser.add_argument("--time-limit", type=float, default=BASE_SECONDS,
                        help="seconds a case may take, plus 1 s per 2^22 declared elements (default 2)")
    parser.add_argument("--jobs", type=int, default=min(2, multiprocessing.cpu_count()), help="worker processes")
    parser.add_argument("--hostile-share", type=float, default=0.4, help="share of hypothesis-built cases")
    parser.add_argument("--batch", type=int, default=500, help="cases per work unit")
    parser.add_argument("--out", default=str(FAILURES), help="folder for reproducers (default runs/fuzz-failures)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    began = time.monotonic()
    total = run(args)
    seconds = time.monotonic() - began
    if total.slowest[5]:
        save_case(Path(args.out), "slowest", total.slowest[5],
                  f"{total.slowest[0]:.3f} s ({total.slowest[2]}, {total.slowest[3]} limits)")
    print(report(total, args, seconds))
    return 0 if not total.failures and total.cases >= args.cases else 1


if __name__ == "__main__":
    sys.exit(main())
