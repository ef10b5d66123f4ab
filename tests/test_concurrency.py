"""Readers and writers under threads: every public entry point, hammered at once, gives single-threaded bits.

Each file holds tensors of 2^18 elements, the size at which the compiled kernels
split their work across the shared pool (``parallel.PARALLEL_MIN``), so the
parallel path runs under contention too; the test asserts that it did.
"""

import hashlib
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import permcodec
from permcodec import decoder, parallel, perm, scheduler
from permcodec.format import rans

THREADS = 8
CALLS_PER_THREAD = 200
SIDE = 512  # Linear(512, 512): 2^18 weights
# case -> (scheme, dist, init_ arguments); block-local and level-pool files take part like the others
CASES = {"exact": ("exact", "he_uniform", {}), "multiset": ("multiset", "sparse", {"density": 0.3}),
         "sparse": ("sparse", "sparse", {"density": 0.3}), "delta": ("delta", "he_uniform", {}),
         "exact-blocks": ("exact", "he_uniform", {"block": 16}),
         "multiset-levels": ("multiset", "levels", {"num_levels": 8}),
         "delta-levels-blocks": ("delta", "levels", {"num_levels": 4, "block": 64, "block_layout": "strided"})}


def digest(tensors: dict) -> dict:
    """name -> SHA-256 of the tensor's bytes: bits, not values."""
    return {name: hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, t in tensors.items()}


def model_for(case: str) -> nn.Module:
    """A permuted weight of the case's pool (each row or block in a random order) and a raw tensor,
    2^18 elements each."""
    _, dist, params = CASES[case]
    model = nn.Sequential(nn.Linear(SIDE, SIDE, bias=False), nn.Linear(SIDE, SIDE, bias=False))
    spec = permcodec.init_(model[0], seed=11, dist=dist, **params)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        weight = model[0].weight
        weight.copy_(perm.pools_of(spec["weight"]).sync(torch.rand(weight.shape, generator=generator)))
        model[1].weight.copy_(torch.randn(SIDE, SIDE, generator=generator))
    state = {"weight": model[0].weight.detach().clone(), "raw": model[1].weight.detach().clone()}
    return state, spec


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("threads")
    made = {}
    for case, (scheme, _, _) in CASES.items():
        state, spec = model_for(case)
        data = permcodec.encode(state, init=spec, scheme=scheme, level="fast")
        path = folder / f"{case}.pc"
        path.write_bytes(data)
        made[case] = {"path": path, "state": state, "spec": spec, "data": data, "scheme": scheme,
                      "digest": digest(permcodec.load(path))}
        assert made[case]["digest"] == digest(state)
    return made


def hammer(files, calls_per_thread: int) -> list[str]:
    """Mixed load / shared-handle get_tensor / own-handle get_tensor / encode from THREADS threads."""
    shared = {scheme: permcodec.safe_open(f["path"]) for scheme, f in files.items()}
    errors = []
    start = threading.Barrier(THREADS)

    def worker(index: int) -> None:
        rng = random.Random(index)
        start.wait()
        for _ in range(calls_per_thread):
            scheme = rng.choice(list(files))
            f = files[scheme]
            action = rng.choice(["load", "shared", "own", "encode"])
            try:
                if action == "load":
                    got = digest(permcodec.load(f["path"]))
                    ok = got == f["digest"]
                elif action in ("shared", "own"):
                    name = rng.choice(list(f["digest"]))
                    if action == "shared":
                        tensor = shared[scheme].get_tensor(name)
                    else:
                        with permcodec.safe_open(f["path"]) as own:
                            tensor = own.get_tensor(name)
                    ok = digest({name: tensor}) == {name: f["digest"][name]}
                else:
                    ok = permcodec.encode(f["state"], init=f["spec"], scheme=f["scheme"], level="fast") == f["data"]
                if not ok:
                    errors.append(f"{action} {scheme}: bits differ from the single-threaded result")
            except Exception as err:  # noqa: BLE001 - every failure is collected and reported
                errors.append(f"{action} {scheme}: {type(err).__name__}: {err}")

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(worker, range(THREADS)))
    finally:
        for handle in shared.values():
            handle.close()
    return errors


@pytest.mark.parametrize("backend", rans.BACKENDS)
def test_threads_hammering_every_entry_point_see_single_threaded_bits(files, monkeypatch, backend):
    monkeypatch.setenv("PERMCODEC_BACKEND", backend)
    splits_before = parallel.split_calls()
    errors = hammer(files, CALLS_PER_THREAD if backend == "numba" else CALLS_PER_THREAD // 4)  # numpy: ~30x slower
    assert errors == []
    if backend == "numba" and parallel.WORKERS > 1:
        assert parallel.split_calls() > splits_before, "the kernels never split their work across the pool"


def test_the_pool_splits_work_from_2_18_elements():
    assert parallel.PARALLEL_MIN == SIDE * SIDE
    assert parallel.pieces(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert parallel.pieces(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert parallel.pieces(0, 4) == []


@pytest.mark.parametrize("failing", [0, 5])
def test_a_failing_piece_raises_in_the_caller_once_no_piece_runs(monkeypatch, failing):
    """Whichever thread runs the failing piece, the caller raises its error, and only once every piece that
    started has ended (pieces not started yet may be skipped: the results are not used)."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    running, ended, lock = [], [], threading.Lock()

    def kernel(lo, hi):
        with lock:
            running.append(lo)
        time.sleep(0.01)
        with lock:
            ended.append(lo)
        if lo == failing:
            raise ValueError(f"piece {lo} failed")

    with pytest.raises(ValueError, match=f"piece {failing} failed"):
        parallel.run_over(kernel, 8, work=parallel.PARALLEL_MIN)
    with lock:
        assert sorted(ended) == sorted(running) and failing in ended


def test_each_thread_claims_pieces_until_none_is_left(monkeypatch):
    """A pool busy with other work (here: until the call returns) leaves every piece to the caller, which
    neither waits for it to start nor leaves it a piece. The pool is the test's own, of 2 threads: the shared
    one has a thread per core, more than 2 blockers can hold on a larger machine."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    busy = ThreadPoolExecutor(2, thread_name_prefix="permcodec-busy")
    monkeypatch.setattr(parallel, "_pool", busy)
    release = threading.Event()
    blockers = [busy.submit(release.wait, 30) for _ in range(2)]
    ran_by = []

    def kernel(lo, hi):
        ran_by.append(threading.current_thread().name)

    splits_before = parallel.split_calls()
    try:
        parallel.run_over(kernel, 8, work=parallel.PARALLEL_MIN)
    finally:
        release.set()
        for blocker in blockers:
            blocker.result()
        busy.shutdown()
    assert ran_by == [threading.current_thread().name] * len(parallel.pieces(8, 2 * parallel.PIECES_PER_WORKER))
    assert parallel.split_calls() == splits_before  # no piece ran on the pool


def test_a_failing_piece_stops_the_other_threads_claiming(monkeypatch):
    """The caller's piece fails while the pool's taker runs one: the taker claims no further piece."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    pool_started, failing, ran = threading.Event(), threading.Event(), []

    def kernel(lo, hi):
        ran.append(lo)
        if lo == 0:
            pool_started.wait(5)
            failing.set()
            raise ValueError("piece 0 failed")
        pool_started.set()
        failing.wait(5)

    with pytest.raises(ValueError, match="piece 0 failed"):
        parallel.run_over(kernel, 8, work=parallel.PARALLEL_MIN)
    assert len(ran) <= 3  # piece 0, the pool's, and one it may claim as piece 0 fails (all 8 without the stop)


def test_a_pool_that_takes_no_more_work_leaves_every_piece_to_the_caller(monkeypatch):
    """concurrent.futures refuses work once the interpreter shuts down (a non-daemon thread decoding late)."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    closed = ThreadPoolExecutor(1)
    closed.shutdown()
    monkeypatch.setattr(parallel, "_pool", closed)
    done = []
    parallel.run_over(lambda lo, hi: done.extend(range(lo, hi)), 8, work=parallel.PARALLEL_MIN)
    assert sorted(done) == list(range(8))


# Large: too large for the batch of small tensors (small_tensors.TENSOR_LIMIT), so decode_all's threads take them.
def two_large_tensors() -> bytes:
    model = nn.Sequential(nn.Linear(1024, 256, bias=False), nn.Linear(256, 1024, bias=False))  # 2^18 weights each
    permcodec.init_(model, 5)
    return permcodec.encode(model, level="fast")


def large_and_small_tensors() -> bytes:
    model = nn.Sequential(nn.Linear(1024, 256), nn.Linear(256, 1024))  # 2^18, 256, 2^18 and 1,024 elements
    permcodec.init_(model, 5)
    return permcodec.encode(model, level="fast")


def test_decode_all_decodes_tensors_side_by_side_and_keeps_file_order(monkeypatch):
    """Two threads (the caller and one helper) each hold a large tensor at once: a barrier of two would break
    if the tensors were taken one at a time. The helper takes the first of the largest; the caller takes the
    small raw tensors together (without ``get_tensor``), then the other large one."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    data = large_and_small_tensors()
    both_in_flight = threading.Barrier(2, timeout=10)
    taken, real = [], permcodec.PCFile.get_tensor

    def meeting(self, name):
        taken.append(name)
        both_in_flight.wait()
        return real(self, name)

    monkeypatch.setattr(permcodec.PCFile, "get_tensor", meeting)
    decoded = permcodec.decode(data)
    assert list(decoded) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert taken[0] == "0.weight" and sorted(taken) == ["0.weight", "1.weight"]
    one_at_a_time = permcodec.PCFile(data)
    for name, tensor in decoded.items():
        assert torch.equal(tensor.view(torch.int32), real(one_at_a_time, name).view(torch.int32))


def one_dominant_tensor() -> bytes:
    model = nn.Sequential(nn.Linear(1024, 512), nn.Linear(512, 16))  # 2^19, 512, 8,192 and 16 elements
    permcodec.init_(model, 5)
    return permcodec.encode(model, level="fast")


def slowed_rebuild(monkeypatch, name: str, events: list, seconds: float = 0.3):
    """``decoder.decode_permuted`` with tensor ``name``'s rebuild held for ``seconds``; ``events`` records
    ("rebuilt", each name) as its rebuild returns, and "small raw" as the small raw tensors' loop, or a group
    record's decoding, starts (the biases of one_dominant_tensor are a group)."""
    real_permuted, real_raw = decoder.decode_permuted, decoder.PCFile._decode_small_raw
    real_group = scheduler.group_outcomes

    def permuted(record, *args):
        values = real_permuted(record, *args)
        if record["name"] == name:
            time.sleep(seconds)
        events.append(("rebuilt", record["name"]))
        return values

    def small_raw(self, names):
        events.append("small raw")
        return real_raw(self, names)

    monkeypatch.setattr(decoder, "decode_permuted", permuted)
    def group(f, *args):
        events.append("small raw")
        return real_group(f, *args)

    monkeypatch.setattr(decoder.PCFile, "_decode_small_raw", small_raw)
    monkeypatch.setattr(scheduler, "group_outcomes", group)


def within(seconds: float, work):
    """``work()``'s result or error, run on a thread of its own: a wait that never ends fails the test instead of
    hanging the suite."""
    outcome = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_the_caller_waits_for_a_dominant_tensor_to_be_rebuilt_and_works_beside_its_hash(monkeypatch):
    """A tensor holding half the elements of the tensors decoded one by one, or more, is rebuilt with every core
    (its kernels run in pieces on the pool); the caller takes the other tensors only then, beside its SHA-256."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    data, events = one_dominant_tensor(), []
    slowed_rebuild(monkeypatch, "0.weight", events)
    decoded = within(60, lambda: permcodec.decode(data))
    assert events == [("rebuilt", "0.weight"), "small raw"]
    one_at_a_time = permcodec.PCFile(data)
    assert all(torch.equal(tensor.view(torch.int32), one_at_a_time.get_tensor(name).view(torch.int32))
               for name, tensor in decoded.items())


def test_the_caller_does_not_wait_where_the_largest_tensor_holds_less_than_half(monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 2)
    events = []
    slowed_rebuild(monkeypatch, "0.weight", events)
    within(60, lambda: permcodec.decode(large_and_small_tensors()))  # 2^18 of 2^19 + 1,280 elements
    assert events[0] == "small raw"


@pytest.mark.parametrize("workers", [3, 4])
def test_a_helper_that_ends_first_does_not_release_the_waiting_caller(monkeypatch, workers):
    """With more helpers, one takes the second tensor (sparse pools: no small-tensor batch takes it) and ends
    long before the dominant tensor is rebuilt; the caller still waits for that rebuild."""
    monkeypatch.setattr(parallel, "WORKERS", workers)
    model = nn.Sequential(nn.Linear(1024, 512), nn.Linear(512, 16))  # 2^19 and 8,192 weights, two raw biases
    permcodec.init_(model, 5, dist="sparse", density=0.3)
    data, events = permcodec.encode(model, level="fast"), []
    slowed_rebuild(monkeypatch, "0.weight", events)
    within(60, lambda: permcodec.decode(data))
    assert events.index(("rebuilt", "1.weight")) < events.index(("rebuilt", "0.weight")) < events.index("small raw")


def test_a_dominant_tensor_that_fails_before_its_rebuild_leaves_the_caller_to_raise_in_file_order(monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 2)
    f = permcodec.PCFile(one_dominant_tensor())
    f.record("0.weight")["crc32"] ^= 1
    f.record("1.weight")["sha256"] = bytes(32)
    with pytest.raises(permcodec.IntegrityError, match=r"^tensor '0\.weight': section CRC-32 mismatch"):
        within(60, lambda: scheduler.decode_all(f))


def test_an_interrupt_while_the_caller_waits_stops_every_thread_taking(monkeypatch):
    """Ctrl-C (SIGINT) while the caller waits for the dominant tensor: it is raised, and the helper, once that
    tensor is done, takes no other job (here the second large tensor)."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    model = nn.Sequential(nn.Linear(2048, 1024), nn.Linear(1024, 256), nn.Linear(256, 16))  # 2^21, 2^18, 4,096
    permcodec.init_(model, 5)
    data, events = permcodec.encode(model, level="fast"), []
    slowed_rebuild(monkeypatch, "0.weight", events, seconds=1.0)
    # Python's own handler: a shell starts a background job (as CI may run the suite) with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c = threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            permcodec.decode(data)
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, previous)
    assert events == [("rebuilt", "0.weight")]


def test_decode_all_raises_the_first_failure_in_file_order():
    f = permcodec.PCFile(two_large_tensors())
    for name in f.keys():
        f.record(name)["sha256"] = bytes(32)  # as if both stored hashes disagreed with the rebuilt bits
    with pytest.raises(permcodec.IntegrityError, match=r"^tensor '0\.weight': decoded bits do not match"):
        scheduler.decode_all(f)


def test_an_exception_beyond_errors_in_one_thread_stops_the_others_taking(monkeypatch):
    """A KeyboardInterrupt or SystemExit is not a tensor's failure to keep for file order: raised in any of
    decode_all's threads, it stops every thread from taking another tensor, and is raised."""
    monkeypatch.setattr(parallel, "WORKERS", 2)
    f = permcodec.PCFile(large_and_small_tensors())
    taken, real = [], permcodec.PCFile.get_tensor
    caller_took, helper_raised = threading.Event(), threading.Event()

    def interrupted(self, name):
        taken.append(name)
        if threading.current_thread() is threading.main_thread():
            caller_took.set()
            helper_raised.wait(10)  # the caller's tensor is in flight when the helper stops everyone
            return real(self, name)
        caller_took.wait(10)
        helper_raised.set()
        raise SystemExit(3)

    monkeypatch.setattr(permcodec.PCFile, "get_tensor", interrupted)
    with pytest.raises(SystemExit):
        scheduler.decode_all(f)
    assert len(taken) == 2
