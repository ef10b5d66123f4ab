"""decode_all's fast lanes for small tensors: the batch kernel (``small_tensors``) and the plain loop over small
raw tensors (``decoder.decode_small_raw``) give the bits and the errors of one tensor at a time."""

import hashlib
import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import msgpack
import numpy as np
import pytest
import safetensors.numpy
import torch
from torch import nn

import permcodec
from permcodec import IntegrityError, decoder, parallel, raw_decoding, scheduler, small_tensors
from permcodec.format import _rans_numba, _small_numba, container
from permcodec.format.schemes.shuffle_zstd import SHUFFLE_ZSTD
from permcodec.init.distributions import make_params
from permcodec.init.initspec import InitSpec, TensorInit

THREADS = 8


class SmallConvs(nn.Module):
    """Many small tensors of every kind the batch takes or leaves: 3x3 convolutions of the uniform family, one
    with several rANS lanes, a normal-pool one, rows of one element, a single row, BatchNorm buffers."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, bias=False) for c in (4, 8, 16, 16, 32))
        self.wide = nn.Linear(64, 1024)  # 2^16 weights; several lanes
        self.normal = nn.Conv2d(8, 8, 3)
        self.column = nn.Linear(1, 16)  # rows of one element: nothing coded, left to the one-tensor path
        self.bn = nn.BatchNorm2d(16)
        self.scalar_bias = nn.Linear(8, 1)


DISTS = {"convs.0.weight": ("uniform", {"low": -0.5, "high": 2.0}), "convs.1.weight": ("glorot_uniform", {}),
         "normal.weight": ("he_normal", {})}


def small_model_bytes(seed: int = 3, scheme: str = "exact") -> bytes:
    """SmallConvs with the pools of DISTS (else he_uniform), every row of each weight in a new order; its raw
    tensors in records of their own, as files before group records hold them (the lane of decode_small_raw)."""
    model = SmallConvs()
    spec = permcodec.init_(model, seed)
    records = []
    for record in spec:
        dist, user = DISTS.get(record.name, (record.dist, None))
        if user is not None:
            record = TensorInit(record.name, record.shape, record.seed, record.stream, dist,
                                make_params(dist, record.shape, **user))
        records.append(record)
    spec = InitSpec(records)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    for record in spec:
        rows = record.regenerate().reshape(record.shape[0], -1)
        state[record.name] = torch.gather(rows, 1, torch.argsort(torch.rand(rows.shape, generator=generator), 1)
                                          ).reshape(record.shape)
    state["bn.running_mean"] = torch.rand(16, generator=generator)
    return permcodec.encode(state, spec, scheme=scheme, raw_groups=False)


@pytest.fixture(scope="module", params=["exact", "delta"])
def data(request) -> bytes:
    permcodec.decode(small_model_bytes(1))  # numba loaded: the batch kernel serves from now on
    return small_model_bytes(scheme=request.param)


def one_at_a_time(data: bytes) -> dict:
    f = permcodec.PCFile(data)
    return {name: f.get_tensor(name) for name in f.keys()}


def bits(tensors: dict) -> dict:
    """name -> (dtype, shape, SHA-256 of the bytes) of torch tensors or numpy arrays alike: bits, not values."""
    arrays = {name: t.contiguous().numpy() if isinstance(t, torch.Tensor) else t for name, t in tensors.items()}
    return {name: (a.dtype.name, a.shape, hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
            for name, a in arrays.items()}


def test_the_model_holds_what_the_batch_takes_and_what_it_leaves(data):
    f = permcodec.PCFile(data)
    taken = [name for name in f.keys() if f._batchable(name)]
    assert taken == ["convs.0.weight", "convs.1.weight", "convs.2.weight", "convs.3.weight", "convs.4.weight",
                     "wide.weight", "scalar_bias.weight"]
    assert f.record("wide.weight")["scheme_params"].get("lanes", 2) > 1  # exact: several lanes
    assert not f._batchable("normal.weight") and not f._batchable("column.weight")
    assert [name for name in f.keys() if f._small_raw(name)] == [
        "wide.bias", "normal.bias", "column.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked", "scalar_bias.bias"]


def one_at_a_time_calls(monkeypatch) -> list:
    """The names ``get_tensor`` and ``get_array`` are called with from now on (a tensor the fast lanes decoded
    is not one of them, unless it failed a check there)."""
    called = []
    for method in ("get_tensor", "get_array"):
        real = getattr(permcodec.PCFile, method)
        monkeypatch.setattr(permcodec.PCFile, method,
                            lambda self, name, real=real: called.append(name) or real(self, name))
    return called


def test_decode_all_gives_the_bits_of_one_tensor_at_a_time(data, monkeypatch):
    expected = bits(one_at_a_time(data))
    calls, called = small_tensors.batch_calls(), one_at_a_time_calls(monkeypatch)
    decoded = permcodec.decode(data)
    assert small_tensors.batch_calls() == calls + 1
    assert sorted(called) == ["column.weight", "normal.weight"]  # the rest took the fast lanes and passed
    assert list(decoded) == list(permcodec.PCFile(data).keys())
    assert bits(decoded) == expected


def test_decode_all_arrays_gives_the_bits_and_dtypes_of_get_array(data, monkeypatch):
    f = permcodec.PCFile(data)
    called = one_at_a_time_calls(monkeypatch)
    arrays = scheduler.decode_all_arrays(permcodec.PCFile(data))
    assert sorted(called) == ["column.weight", "normal.weight"]
    for name, array in arrays.items():
        one = f.get_array(name)
        assert array.dtype == one.dtype and array.shape == one.shape and array.tobytes() == one.tobytes()


def test_batched_tensors_are_tensors_of_their_own(data, tmp_path):
    """Views of shared buffers, without overlap: writing one leaves the others, and safetensors saves them all."""
    decoded = permcodec.decode(data)
    before = bits(decoded)
    decoded["convs.0.weight"].fill_(7.0)
    after = bits(decoded)
    assert [name for name in before if before[name] != after[name]] == ["convs.0.weight"]
    arrays = scheduler.decode_all_arrays(permcodec.PCFile(data))
    safetensors.numpy.save_file(arrays, tmp_path / "m.safetensors")
    loaded = safetensors.numpy.load_file(tmp_path / "m.safetensors")
    assert all(loaded[name].tobytes() == array.tobytes() for name, array in arrays.items())


def test_the_numpy_backend_takes_no_batch(data, monkeypatch):
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    calls = small_tensors.batch_calls()
    assert bits(permcodec.decode(data)) == bits(one_at_a_time(data))
    assert small_tensors.batch_calls() == calls


def test_every_split_between_pool_and_caller_gives_the_same_bits(data, monkeypatch):
    expected = bits(one_at_a_time(data))
    for share in (0.0, 0.3, 1.0):
        monkeypatch.setattr(small_tensors, "POOL_SHARE", share)
        assert bits(permcodec.decode(data)) == expected


def rewritten(data: bytes, name: str, change) -> bytes:
    """``data`` with tensor ``name``'s section bytes passed through ``change`` (its CRC kept true) or, for a
    ``change`` of a record, its header record edited; every CRC recomputed."""
    length = container.PREAMBLE.unpack(data[:container.PREAMBLE_SIZE])[3]
    header = msgpack.unpackb(data[container.PREAMBLE_SIZE:container.PREAMBLE_SIZE + length])
    body = bytearray(data[container.PREAMBLE_SIZE + length:])
    record = next(r for r in header["tensors"] if r["name"] == name)
    start, end = record["offset"], record["offset"] + record["length"]
    section = change(bytes(body[start:end]), record)
    if section is not None:
        assert len(section) == end - start
        body[start:end] = section
        record["crc32"] = container.crc32(section)
    raw = msgpack.packb(header, use_bin_type=True)
    return container.PREAMBLE.pack(container.MAGIC, 1, 0, len(raw), container.crc32(raw)) + raw + bytes(body)


def last_word_flipped(section: bytes, record: dict) -> bytes:
    return section[:-4] + bytes(b ^ 0xFF for b in section[-4:])


def stored_hash_zeroed(section: bytes, record: dict) -> None:
    record["sha256"] = bytes(32)


def crc_broken(section: bytes, record: dict) -> None:
    record["crc32"] ^= 1


def outcome(decode) -> tuple:
    """What ``decode()`` gives: its error's class and message, or the bits of every tensor."""
    try:
        return ("bits", bits(decode()))
    except permcodec.PermcodecError as err:
        return (type(err).__name__, str(err))


def one_at_a_time_outcome(data: bytes, verify: bool) -> tuple:
    return outcome(lambda: {name: f.get_tensor(name) for f in [permcodec.PCFile(data, verify=verify)]
                            for name in f.keys()})


@pytest.mark.parametrize("name", ["convs.2.weight", "wide.weight", "scalar_bias.weight", "bn.running_mean"])
@pytest.mark.parametrize("damage", [last_word_flipped, stored_hash_zeroed, crc_broken])
# every batched tensor decoded by the caller, by the pool, or split (at 0.5 the pool decodes wide, the caller convs.*)
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("verify", [True, False])
def test_a_damaged_small_tensor_raises_what_get_tensor_raises(data, monkeypatch, name, damage, share, verify):
    monkeypatch.setattr(small_tensors, "POOL_SHARE", share)
    bad = rewritten(data, name, damage)
    alone = one_at_a_time_outcome(bad, verify)
    calls = small_tensors.batch_calls()
    assert outcome(lambda: permcodec.decode(bad, verify=verify)) == alone
    assert outcome(lambda: scheduler.decode_all_arrays(permcodec.PCFile(bad, verify=verify))) == alone
    assert small_tensors.batch_calls() == calls + 2
    if verify or damage is crc_broken:  # the damage is seen, and named (without the hash, it may not be)
        assert alone[0] != "bits" and alone[1].startswith(f"tensor {name!r}")


@pytest.mark.parametrize("share", [0.0, 0.6, 1.0])
def test_random_byte_flips_in_small_sections_give_one_at_a_time_outcomes(data, monkeypatch, share):
    """Flips anywhere in the batched and small raw sections (their CRCs kept true, so the damage reaches the
    decoders), with and without the hash check."""
    monkeypatch.setattr(small_tensors, "POOL_SHARE", share)
    rng = np.random.default_rng(int(share * 10))
    f = permcodec.PCFile(data)
    names = [name for name in f.keys() if f._batchable(name) or f._small_raw(name)]
    seen = set()
    for case in range(24):
        name = names[rng.integers(len(names))]
        flips = rng.integers(1, 4)

        def flipped(section: bytes, record: dict) -> bytes:
            damaged = bytearray(section)
            for at in rng.integers(len(section), size=flips):
                damaged[at] ^= 1 << int(rng.integers(8))
            return bytes(damaged)

        bad, verify = rewritten(data, name, flipped), bool(case % 2)
        alone = one_at_a_time_outcome(bad, verify)
        assert outcome(lambda: permcodec.decode(bad, verify=verify)) == alone, (name, case)
        seen.add(alone[0])
    assert {"FormatError", "bits"} <= seen


def test_the_first_damaged_tensor_in_file_order_is_raised(data):
    """The batch decodes convs.4 before the one-tensor path meets normal.weight, and the small raw loop meets
    bn.running_mean first of all: the error raised is still the one first in file order."""
    bad = data
    for name in ("bn.running_mean", "normal.weight", "convs.4.weight"):
        bad = rewritten(bad, name, stored_hash_zeroed)
    with pytest.raises(IntegrityError, match=r"^tensor 'convs\.4\.weight': decoded bits do not match"):
        permcodec.decode(bad)


def test_threads_decoding_at_once_see_single_threaded_bits(data, monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 2)
    expected = bits(one_at_a_time(data))
    start = threading.Barrier(THREADS)

    def worker(_):
        start.wait()
        return [bits(permcodec.decode(data)) == expected for _ in range(20)]

    with ThreadPoolExecutor(THREADS) as pool:
        assert all(all(results) for results in pool.map(worker, range(THREADS)))


def started_batch(data: bytes, share: float):
    f = permcodec.PCFile(data)
    names = [name for name in f.keys() if f._batchable(name)]
    batch = small_tensors.Batch([(f.record(n), f.read_section(n), f._tensor_init(n)) for n in names], verify=True)
    return f, names, batch.start(share)


def test_the_pool_takes_its_share_of_the_values_largest_first(data):
    _, names, batch = started_batch(data, 0.5)
    assert all(array is not None for array in batch.finish())
    pool, caller = batch.pool_pack.members, batch.caller_pack.members
    # wide.weight holds 65,536 of the 80,088 values: the pool takes it, the caller all the others, largest first
    assert [names[slot] for slot in pool] == ["wide.weight"]
    assert [names[slot] for slot in caller] == [
        "convs.4.weight", "convs.2.weight", "convs.3.weight", "convs.1.weight", "convs.0.weight", "scalar_bias.weight"]


def test_the_pool_decodes_its_share_while_the_caller_packs_its_own(data, monkeypatch):
    """The pool's pack is built and handed to the pool first; the caller's is built after, while the pool runs."""
    events = []
    real_start, real_pack = parallel.start_over, small_tensors.Pack.__init__
    monkeypatch.setattr(parallel, "start_over", lambda *args: events.append("pool started") or real_start(*args))

    def pack(self, items, slots):
        events.append(f"pack of {len(slots)}")
        real_pack(self, items, slots)

    monkeypatch.setattr(small_tensors.Pack, "__init__", pack)
    _, _, batch = started_batch(data, 0.5)
    assert events == ["pack of 1", "pool started"]  # wide.weight
    assert all(array is not None for array in batch.finish())
    assert events == ["pack of 1", "pool started", "pack of 6"]


@pytest.mark.parametrize(("share", "order", "split"), [
    (0.0, [2, 1, 0, 3], 0), (0.3, [1, 0, 2, 3], 2), (0.5, [2, 1, 0, 3], 1), (0.9, [2, 1, 3, 0], 3),
    (1.0, [2, 1, 0, 3], 4)])
def test_each_tensor_goes_where_its_middle_value_falls_largest_first(share, order, split):
    # counts 10, 20, 60, 10: at 0.3 the 60 goes to the caller (its middle, 30, is past 0.3 * 60), the 20 to the
    # pool (10 <= 0.3 * 80), the first 10 too (25 <= 27), the other 10 to the caller (35 > 30)
    assert small_tensors.pool_first([10, 20, 60, 10], share) == (order, split)


@pytest.mark.parametrize(("shape", "taken"), [((511, 513), True), ((512, 512), False), ((1, 2), True), ((2, 1), False)])
def test_a_batch_takes_what_the_one_tensor_path_would_decode_on_one_thread(shape, taken):
    """Below PARALLEL_MIN elements ``run_over`` runs a tensor's kernels on one thread: the batch takes those."""
    init = TensorInit("w", shape, 1, 0, "he_uniform", make_params("he_uniform", shape))
    assert small_tensors.batchable({"scheme": "exact", "shape": list(shape)}, init) is taken
    assert small_tensors.TENSOR_LIMIT == parallel.PARALLEL_MIN == 512 * 512


def test_a_batch_of_nothing_decodes_nothing():
    batch = small_tensors.Batch([], verify=True).start(0.5)
    assert batch.finish() == []


def test_the_batch_kernel_matches_the_one_tensor_kernels_on_edge_bounds(monkeypatch):
    """Tiny and huge bounds and a lopsided uniform: the batch draws them with the one-tensor path's very
    functions, so the same bits."""
    model = nn.Sequential(*(nn.Linear(16, 8, bias=False) for _ in range(3)))
    permcodec.init_(model, 9, dist="uniform", low=-1e-30, high=3e-30)
    data = permcodec.encode(model, scheme="exact")
    permcodec.decode(data)
    calls = small_tensors.batch_calls()
    assert bits(permcodec.decode(data)) == bits(one_at_a_time(data))
    assert small_tensors.batch_calls() == calls + 1
    values = np.concatenate([t.numpy().ravel() for t in permcodec.decode(data).values()])
    assert values.min() >= -1e-30 and values.max() < 3e-30


@pytest.mark.parametrize(("lengths", "rows", "width", "order", "groups"), [
    # rows of 72 (streams 0-5, 7: most rows first, then as given), of 144 (6, 8), one of 9 alone: groups of up to 4
    ([72, 72, 72, 72, 72, 72, 144, 72, 144, 9], [5, 13, 13, 12, 3, 16, 4, 13, 4, 2], 4,
     [9, 5, 1, 2, 7, 3, 0, 4, 6, 8], [(0, 1), (1, 4), (5, 3), (8, 2)]),
    ([72, 72, 72, 72, 72, 72, 144, 72, 144, 9], [5, 13, 13, 12, 3, 16, 4, 13, 4, 2], 2,
     [9, 5, 1, 2, 7, 3, 0, 4, 6, 8], [(0, 1), (1, 2), (3, 2), (5, 2), (7, 1), (8, 2)]),
    ([], [], 4, [], []),
])
def test_lanes_of_one_row_length_go_side_by_side_most_rows_first(lengths, rows, width, order, groups):
    """The kernel decodes a group's lanes side by side: rows of one length, each lane stopping where its rows end,
    so the lanes with most rows come first."""
    got_order, got_groups = _small_numba.side_by_side(np.array(lengths, dtype=np.int64),
                                                      np.array(rows, dtype=np.int64), width)
    assert got_order.tolist() == order and [tuple(group) for group in got_groups.tolist()] == groups


def mixed_lanes_bytes() -> bytes:
    """Linear layers of one row length (72) with 5 to 64 rows, at level fast: one lane each, but five for the
    64-row one (13, 13, 13, 13 and 12 rows), so a group mixes tensors and lanes of different row counts."""
    model = nn.Sequential(*(nn.Linear(72, rows, bias=False) for rows in (5, 9, 16, 64, 3)))
    permcodec.init_(model, 4)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in model:
            rows = layer.weight
            rows.copy_(torch.gather(rows, 1, torch.argsort(torch.rand(rows.shape, generator=generator), 1)))
    return permcodec.encode(model, scheme="exact", level="fast")


def test_lanes_of_different_tensors_decode_side_by_side():
    data = mixed_lanes_bytes()
    f = permcodec.PCFile(data)
    assert [f.record(name)["scheme_params"]["lanes"] for name in f.keys()] == [1, 1, 1, 5, 1]
    names = list(f.keys())
    batch = small_tensors.Batch([(f.record(n), f.read_section(n), f._tensor_init(n)) for n in names], verify=True)
    batch.start(0.0)  # every tensor to the caller
    arrays = batch.finish()
    streams, stream_tensor, order, groups = (batch.caller_pack.kernel_args[i] for i in (3, 4, 5, 6))
    tensor_names = [names[batch.caller_pack.members[int(tensor)]] for tensor in stream_tensor]
    rows_of = streams[:, _rans_numba.COUNT]
    grouped = [[int(s) for s in order[at:at + width]] for at, width in groups]
    assert [[(tensor_names[s], int(rows_of[s])) for s in group] for group in grouped] == [
        [("2.weight", 16), ("3.weight", 13), ("3.weight", 13), ("3.weight", 13)],
        [("3.weight", 13), ("3.weight", 12), ("1.weight", 9), ("0.weight", 5)],
        [("4.weight", 3)]]
    assert all(np.array_equal(array.view(np.int32), f.get_array(name).view(np.int32))
               for name, array in zip(names, arrays))


@pytest.mark.parametrize("width", [1, 3, 8, 64])
def test_groups_of_any_width_decode_the_same_bits(width, monkeypatch):
    """The kernel sizes its scratch by the group it is given: a width other than the one it was compiled beside
    (a stale numba cache of another module holds the old code) decodes the same bits, not past its arrays."""
    data = mixed_lanes_bytes()
    monkeypatch.setattr(_rans_numba, "SIDE_BY_SIDE", width)
    f = permcodec.PCFile(data)
    names = list(f.keys())
    batch = small_tensors.Batch([(f.record(n), f.read_section(n), f._tensor_init(n)) for n in names], verify=True)
    arrays = batch.start(0.0).finish()
    assert max(batch.caller_pack.kernel_args[6][:, 1]) == min(width, 9)  # 9 lanes of rows of 72: four of 1, one of 5
    assert all(np.array_equal(array.view(np.int32), f.get_array(name).view(np.int32))
               for name, array in zip(names, arrays))


def test_a_wide_group_stays_within_the_kernels_arrays(bounds_checked):
    """Out-of-bounds writes need not show in the bits: with numba's bounds checks, a batch decodes nine lanes in one
    group; a scratch sized by the width the kernel was compiled with (4) raised IndexError there."""
    stdout = bounds_checked("""
import permcodec
from permcodec import small_tensors
from permcodec.format import _rans_numba
from test_small_tensors import mixed_lanes_bytes
f = permcodec.PCFile(mixed_lanes_bytes())
_rans_numba.SIDE_BY_SIDE = 64
batch = small_tensors.Batch([(f.record(n), f.read_section(n), f._tensor_init(n)) for n in f.keys()], True).start(0.0)
batch.decode_rest()
print(batch.caller_pack.kernel_args[6].tolist(), batch.caller_pack.kernel_args[-1].all())
""", PERMCODEC_BACKEND="numba")
    assert stdout.split() == ["[[0,", "9]]", "True"]


@pytest.mark.parametrize("damaged", ["0.weight", "2.weight", "3.weight"])
def test_a_damaged_lane_fails_only_its_own_tensor_in_a_group(damaged, monkeypatch):
    """The other tensors of its lane group pass in the batch (get_tensor is not called for them) with their bits."""
    data = mixed_lanes_bytes()
    bad = rewritten(data, damaged, last_word_flipped)
    expected = one_at_a_time_outcome(bad, True)
    assert expected[0] == "FormatError" and expected[1].startswith(f"tensor {damaged!r}")
    gets = one_at_a_time_calls(monkeypatch)
    assert outcome(lambda: permcodec.decode(bad)) == expected
    assert gets == [damaged]


def test_one_worker_decodes_the_batch_in_the_caller(data, monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 1)
    threads, real = set(), small_tensors.Batch._decode

    def recorded(self, pack):
        threads.add(threading.current_thread())
        return real(self, pack)

    monkeypatch.setattr(small_tensors.Batch, "_decode", recorded)
    assert bits(permcodec.decode(data)) == bits(one_at_a_time(data))
    assert threads == {threading.main_thread()}


@pytest.mark.parametrize("failing", ["caller", "pool"])
@pytest.mark.parametrize("error", [MemoryError("Allocation failed (probably too large)."), SystemError("numba")])
def test_a_failing_batch_kernel_leaves_its_tensors_to_one_at_a_time(data, monkeypatch, failing, error):
    """The kernel's allocations may fail in either thread (or the kernel itself, in a way nothing here foresees):
    that thread's tensors (the caller's), or all of the batch (the pool's), are then decoded one at a time, whose
    error (a MemoryLimitError naming the tensor) is the one a caller would see; here the second try succeeds."""
    expected = bits(one_at_a_time(data))
    real, calls = _small_numba.decode_uniform, []

    def short_of_memory(*args):
        in_caller = threading.current_thread() is threading.main_thread()
        calls.append(in_caller)
        if in_caller == (failing == "caller"):
            raise error
        return real(*args)

    monkeypatch.setattr(parallel, "WORKERS", 2)
    monkeypatch.setattr(small_tensors, "POOL_SHARE", 0.5)  # the pool decodes wide.weight, the caller the others
    monkeypatch.setattr(_small_numba, "decode_uniform", short_of_memory)
    gets = one_at_a_time_calls(monkeypatch)
    assert bits(permcodec.decode(data)) == expected
    assert sorted(set(calls)) == [False, True]  # both threads took part
    callers = ["convs.0.weight", "convs.1.weight", "convs.2.weight", "convs.3.weight", "convs.4.weight",
               "scalar_bias.weight"]
    again = callers if failing == "caller" else [*callers, "wide.weight"]
    assert sorted(gets) == sorted(["column.weight", "normal.weight", *again])


def test_the_raw_codec_decodes_many_sections_as_it_decodes_one():
    """``decode_many``: the bytes ``decode`` gives, each in writeable memory of its own; None for each section
    ``decode`` rejects (truncated, a byte too many, another size), the others unharmed."""
    rng = np.random.default_rng(5)
    wanted = [(itemsize, count) for itemsize in (1, 2, 4, 8) for count in (0, 1, 3, 64) for _ in range(2)]
    raw = [rng.integers(0, 256, itemsize * count, dtype=np.uint8).tobytes() for itemsize, count in wanted]
    sections = [(SHUFFLE_ZSTD.encode(data, itemsize, 3), itemsize, count, f"tensor {index}")
                for index, (data, (itemsize, count)) in enumerate(zip(raw, wanted))]
    bad = {5: sections[5][0][:-1], 9: sections[9][0] + b"\0", 30: SHUFFLE_ZSTD.encode(raw[30] + bytes(8), 8, 3)}
    sections = [(bad.get(index, section), *rest) for index, (section, *rest) in enumerate(sections)]
    decoded = SHUFFLE_ZSTD.decode_many(sections)
    for index, (section, itemsize, count, what) in enumerate(sections):
        if index in bad:
            assert decoded[index] is None
            with pytest.raises(permcodec.FormatError, match=f"^{what}: "):
                SHUFFLE_ZSTD.decode(section, itemsize, count, what)
        else:
            assert decoded[index].dtype == np.uint8 and decoded[index].tobytes() == raw[index] == \
                bytes(SHUFFLE_ZSTD.decode(section, itemsize, count, what))
    kept = [array for array in decoded if array is not None]
    for mark, array in enumerate(kept):
        array[...] = mark
    assert all(array.flags.writeable and set(array.tobytes()) <= {mark} for mark, array in enumerate(kept))
    assert not any(np.shares_memory(a, b) for i, a in enumerate(kept) for b in kept[i + 1:])


def raw_only_bytes() -> bytes:
    """A 5,000-float tensor, decoded alone, before two of 16 floats, the small raw loop's (records of their own)."""
    generator = torch.Generator().manual_seed(0)
    state = {"big": torch.randn(5000, generator=generator), "bn.running_mean": torch.randn(16, generator=generator),
             "bn.running_var": torch.rand(16, generator=generator)}
    return permcodec.encode(state, InitSpec([]), raw_groups=False)


def short_of_memory_for(real, name: str, left: list[int]):
    """``real(record, section)``, raising MemoryError instead for tensor ``name`` while ``left[0]`` (counted down)
    lasts."""
    def short_of_memory(record, section):
        if record["name"] == name and left[0]:
            left[0] -= 1
            raise MemoryError
        return real(record, section)

    return short_of_memory


def test_running_out_of_memory_checking_a_raw_loop_crc_leaves_the_tensor_to_get_tensor(monkeypatch):
    """As in its codec call or its hash: the tensor is decoded alone, and the file decodes."""
    data = raw_only_bytes()
    expected = bits(one_at_a_time(data))
    monkeypatch.setattr(container, "check_section", short_of_memory_for(container.check_section, "bn.running_var", [1]))
    gets = one_at_a_time_calls(monkeypatch)
    assert bits(permcodec.decode(data)) == expected
    assert "bn.running_var" in gets and "bn.running_mean" not in gets


def test_a_memory_error_in_the_raw_loop_does_not_hide_an_earlier_error(monkeypatch):
    """The first error in file order is raised: big's broken CRC, not the raw loop's MemoryError."""
    bad = rewritten(raw_only_bytes(), "big", crc_broken)
    message = r"^tensor 'big': section CRC-32 mismatch"
    with pytest.raises(permcodec.IntegrityError, match=message):
        one_at_a_time(bad)
    monkeypatch.setattr(container, "check_section", short_of_memory_for(container.check_section, "bn.running_var", [1]))
    with pytest.raises(permcodec.IntegrityError, match=message):
        permcodec.decode(bad)


def as_bool(section: bytes, record: dict) -> None:
    record["dtype"] = "bool"  # a uint8 tensor's section and hash, read as bool


@pytest.mark.parametrize("elements", [3, raw_decoding.SMALL_RAW_MAX + 1])  # the raw loop's, and a tensor alone
def test_a_bool_tensor_holding_other_bytes_is_refused(elements):
    model = nn.Linear(4, 2)
    spec = permcodec.init_(model, 0)
    state = {**model.state_dict(), "flags": torch.arange(elements, dtype=torch.uint8) % 3}
    data = rewritten(permcodec.encode(state, spec), "flags", as_bool)
    f = permcodec.PCFile(data)
    assert f.record("flags")["dtype"] == "bool" and f._small_raw("flags") == (elements <= raw_decoding.SMALL_RAW_MAX)
    message = r"^tensor 'flags': bool tensor holds bytes other than 0 and 1$"
    for decode in (permcodec.decode, lambda data: f.get_tensor("flags"), lambda data: f.get_array("flags")):
        with pytest.raises(permcodec.FormatError, match=message):
            decode(data)


@pytest.mark.parametrize("failures", [1, 2])
def test_running_out_of_memory_in_the_raw_loop_leaves_the_tensor_to_get_tensor(data, monkeypatch, failures):
    """Once (the raw loop's codec call, which holds bn.running_var): its tensors are decoded alone and the file
    decodes. Again (bn.running_var decoded alone): the error names it."""
    expected = bits(one_at_a_time(data))
    real_many, left = SHUFFLE_ZSTD.decode_many, [failures]

    def many_short_of_memory(sections):
        if any(what == "tensor 'bn.running_var'" for *_, what in sections) and left[0] == failures:
            left[0] -= 1
            raise MemoryError
        return real_many(sections)

    monkeypatch.setattr(SHUFFLE_ZSTD, "decode_many", many_short_of_memory)
    monkeypatch.setattr(decoder, "decode_raw", short_of_memory_for(decoder.decode_raw, "bn.running_var", left))
    gets = one_at_a_time_calls(monkeypatch)
    if failures == 1:
        assert bits(permcodec.decode(data)) == expected
    else:
        with pytest.raises(permcodec.MemoryLimitError, match=r"^tensor 'bn\.running_var': not enough memory"):
            permcodec.decode(data)
    assert "bn.running_var" in gets and left == [0]


@pytest.mark.parametrize("unreadable", [("column.weight", "bn.running_var"), ("convs.2.weight", "normal.weight")])
def test_a_section_that_cannot_be_read_fails_in_file_order(data, unreadable):
    """An I/O error reading a section of the raw loop's or the batch's tensors: those tensors fall back to one
    at a time, so the error raised is the first in file order (the raw loop is the caller's first job)."""
    f = permcodec.PCFile(data)
    data_start = len(data) - sum(f.record(name)["length"] for name in f.keys())
    failing = {data_start + f.record(name)["offset"]: name for name in unreadable}

    class FlakyStream(io.BytesIO):
        def read(self, size=-1):
            if self.tell() in failing:
                raise OSError(5, f"cannot read the section of {failing[self.tell()]}")
            return super().read(size)

    with pytest.raises(OSError, match=f"cannot read the section of {re.escape(unreadable[0])}$"):
        scheduler.decode_all(permcodec.PCFile(FlakyStream(data)))


@pytest.mark.parametrize("failures", [1, 2])
def test_a_section_read_that_runs_out_of_memory_is_named_in_file_order(data, monkeypatch, failures):
    """Copying bn.running_var's section fails once (in the raw loop: the file then decodes, the tensor alone) or
    twice (then get_tensor's MemoryLimitError names it, as one tensor at a time does)."""
    expected = bits(one_at_a_time(data))
    real, left = permcodec.PCFile.read_section, [failures]

    def short_of_memory(self, name):
        if name == "bn.running_var" and left[0]:
            left[0] -= 1
            raise MemoryError
        return real(self, name)

    monkeypatch.setattr(permcodec.PCFile, "read_section", short_of_memory)
    if failures == 1:
        assert bits(permcodec.decode(data)) == expected
    else:
        with pytest.raises(permcodec.MemoryLimitError, match=r"^tensor 'bn\.running_var': not enough memory"):
            permcodec.decode(data)
    assert left == [0]


class NoThreads(ThreadPoolExecutor):
    """An executor that can start no thread, as at interpreter shutdown or under a thread limit."""

    def submit(self, *args, **kwargs):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")


def test_without_threads_to_be_had_the_caller_decodes_every_tensor(data, monkeypatch):
    expected = bits(one_at_a_time(data))
    monkeypatch.setattr(parallel, "WORKERS", 2)
    monkeypatch.setattr(parallel, "shared_pool", lambda: NoThreads(1))  # the batch's pool piece cannot start
    monkeypatch.setattr(scheduler, "ThreadPoolExecutor", NoThreads)  # nor can a helper for wide.weight then
    assert bits(permcodec.decode(data)) == expected


def test_an_unknown_backend_is_raised_by_the_first_tensor_that_consults_it(data, monkeypatch):
    """The batch asks for the backend before any tensor is decoded; an earlier tensor's damage comes first."""
    bad = rewritten(data, "convs.0.weight", crc_broken)
    monkeypatch.setenv("PERMCODEC_BACKEND", "fortran")
    alone = one_at_a_time_outcome(bad, True)
    assert alone[0] == "IntegrityError" and outcome(lambda: permcodec.decode(bad)) == alone
    assert outcome(lambda: permcodec.decode(data)) == one_at_a_time_outcome(data, True)
    assert one_at_a_time_outcome(data, True)[0] == "SpecError"


def test_a_hash_that_runs_out_of_memory_in_the_raw_loop_leaves_the_tensor_to_get_tensor(data, monkeypatch):
    import hashlib as real_hashlib

    expected, hashed = bits(one_at_a_time(data)), []

    class ShortOfMemoryOnce:
        @staticmethod
        def sha256(data):
            hashed.append(len(data))
            if len(hashed) == 1:  # the raw loop's first tensor, wide.bias
                raise MemoryError
            return real_hashlib.sha256(data)

    monkeypatch.setattr(raw_decoding, "hashlib", ShortOfMemoryOnce)
    gets = one_at_a_time_calls(monkeypatch)
    assert bits(permcodec.decode(data)) == expected
    assert "wide.bias" in gets and hashed[0] == 1024 * 4


@pytest.mark.parametrize("workers", [1, 2])
def test_running_out_of_memory_packing_the_callers_share_leaves_only_it_to_one_at_a_time(data, monkeypatch,
                                                                                         workers):
    """The caller's pack is built in decode_rest, after the pool started: should it fail, only the caller's
    tensors go one at a time, and the pool's still come from the batch."""
    expected = bits(one_at_a_time(data))
    real, built = small_tensors.Pack.__init__, []

    def pack(self, items, slots):
        built.append(len(slots))
        if len(built) == 2:  # the caller's
            raise MemoryError("Allocation failed (probably too large).")
        real(self, items, slots)

    monkeypatch.setattr(parallel, "WORKERS", workers)
    monkeypatch.setattr(small_tensors, "POOL_SHARE", 0.5)  # the pool decodes wide.weight, the caller the others
    monkeypatch.setattr(small_tensors.Pack, "__init__", pack)
    gets = one_at_a_time_calls(monkeypatch)
    assert bits(permcodec.decode(data)) == expected
    assert built == [1, 6]
    callers = ["convs.0.weight", "convs.1.weight", "convs.2.weight", "convs.3.weight", "convs.4.weight",
               "scalar_bias.weight"]
    assert sorted(gets) == sorted(["column.weight", "normal.weight", *callers])


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_start_decode_rest_and_finish_may_be_called_again(data, share):
    f, names, batch = started_batch(data, share)
    expected = [f.get_array(name).view(np.uint8).tobytes() for name in names]
    pool_pack = batch.pool_pack
    assert batch.start(share).pool_pack is pool_pack  # started once
    batch.decode_rest()
    caller_pack = batch.caller_pack
    batch.decode_rest()
    assert batch.caller_pack is caller_pack  # packed and decoded once
    for _ in range(2):
        assert [array.view(np.uint8).tobytes() for array in batch.finish()] == expected


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 0.6, 1.0])
def test_the_two_packs_share_no_tensor_and_miss_none(data, share):
    _, names, batch = started_batch(data, share)
    batch.finish()
    pool, caller = set(batch.pool_pack.members), set(batch.caller_pack.members)
    assert not pool & caller and pool | caller == set(range(len(names)))


def test_running_out_of_memory_making_the_views_falls_back_to_one_at_a_time(data, monkeypatch):
    """Like every other failure of the batch: the tensors are decoded alone, which names the one that fails."""
    expected = bits(one_at_a_time(data))

    def arrays(self, items):
        raise MemoryError("Allocation failed (probably too large).")
        yield  # a generator, as Pack.arrays is

    monkeypatch.setattr(small_tensors.Pack, "arrays", arrays)
    assert bits(permcodec.decode(data)) == expected
