"""``decode_all``: every tensor of an open file, scheduled over the caller and a helper thread.

``decoder.PCFile`` decodes one tensor at a time; this module decides which
thread decodes what, and in which order, so that the compiled kernels of large
tensors run on one core while the caller runs the Python of the small ones
(``_take_in_parallel``), the small permuted tensors go to ``small_tensors``'
batch, and a group record is decoded once for all its members. Errors are those
of one tensor at a time, raised in file order.
"""

from __future__ import annotations

import math
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import arrays, backend, parallel, small_tensors
from .bits import NUMPY_DTYPES
from .decoder import PCFile, after_rebuild, engine_for
from .errors import SpecError
from .progress import progress as progress_lines
from .raw_decoding import member_array, member_arrays, member_error, member_tensor

if TYPE_CHECKING:
    import torch


def decode_all(f: PCFile, progress: bool = False) -> "dict[str, torch.Tensor]":
    """Every tensor of an open file, in file order."""
    import torch

    return _every(f, f.get_tensor, progress, torch.from_numpy, lambda member, data: member_tensor(member, data,
                                                                                                 f._device))


def decode_all_arrays(f: PCFile, progress: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of an open file as a numpy array, in file order, without torch (see ``PCFile.get_array``)."""
    return _every(f, f.get_array, progress, lambda array: array, member_array)


def _every(f: PCFile, get: Callable, progress: bool, from_array: Callable, from_member: Callable) -> dict:
    """``get`` of every tensor, in file order, decoded by WORKERS threads (the caller is one of them).

    The compiled kernels, numpy's sorts, zstd and SHA-256 release the GIL, so
    one thread's Python overlaps another's kernels: each thread takes the next
    job, largest first, so that the last to end are the small ones. A job is
    one tensor, the small raw tensors together (``decode_small_raw``), or a
    group record's members (``from_member`` of each, the group decoded once). The
    small permuted tensors of the commonest kinds are decoded apart, by one
    kernel (``small_tensors``): part of them on the shared pool while the
    threads take the jobs, the rest by the caller once it finds no job left.
    ``from_array`` turns the arrays of either into what
    ``get`` gives. A tensor that fails stops the taking; the failure raised is
    the first in file order, as one at a time would raise: tensors before it
    that were not decoded yet are decoded then, in the caller.
    """
    elements = {name: math.prod(f.record(name)["shape"]) for name in f.keys()}
    bar = progress_lines(sum(elements.values()), "decode", "weights", progress)
    batched = _batched(f, elements)
    pool_share = small_tensors.POOL_SHARE if len(batched) < len(elements) else small_tensors.POOL_SHARE_ALONE
    batch = f._start_batch(batched, pool_share) if batched else None
    apart = set(batched) if batch is not None else set()
    jobs = _jobs(f, [name for name in elements if name not in apart], elements, get, from_array, from_member)
    done = _take_in_parallel(jobs, lambda job: bar.update(job.elements), batch.decode_rest if batch else None)
    if batch is not None:
        done.update(_outcomes(batched, batch.finish(), from_array))
        bar.update(sum(elements[name] for name in batched))
    decoded = {}
    for name in elements:
        if name not in done:
            done.update(_left_over(f, name, get, from_array, from_member))
        decoded[name] = done[name].value()
    bar.close()
    return decoded


def _left_over(f: PCFile, name: str, get: Callable, from_array: Callable, from_member: Callable) -> dict:
    """The outcome of a tensor no job decoded (one failed before it), with its group's other members', so that
    a group is decoded once here too."""
    record = f.record(name)
    if "group" in record:
        return group_outcomes(f, record["group"], from_array, from_member)
    return {name: _Outcome.of(get, name)}


def group_outcomes(f: PCFile, index: int, from_array: Callable, from_member: Callable) -> dict:
    """The outcome of every member of group record ``index`` of ``f``, its group decoded once, or the group's error
    for each, naming the member: on the CPU, ``from_array`` of its ``member_arrays`` (views of one new buffer,
    handed out together) where numpy holds its dtype in host order, else ``from_member(member, group_bytes)`` of
    each."""
    members = [f.record(name) for name in f.header["tensors"][index]["names"]]
    try:
        data = f._group_bytes(members[0]["name"])
    except Exception as error:  # kept, to be raised in file order
        return {member["name"]: _Outcome(error=member_error(error, member["name"])) for member in members}
    if members[0]["dtype"] in NUMPY_DTYPES and sys.byteorder == "little" and \
            engine_for(f._device) is arrays.NUMPY:
        return {member["name"]: _Outcome(from_array(array))
                for member, array in zip(members, member_arrays(members, data))}
    return {member["name"]: _Outcome.of(lambda member: from_member(member, data), member)
            for member in members}


def _batched(f: PCFile, elements: dict[str, int]) -> list[str]:
    """The tensors ``f._start_batch`` takes, in file order: every ``batchable`` one, where its kernel serves."""
    small = [name for name in elements if f._batchable(name)]
    try:
        return small if small and small_tensors.compiled_here(sum(elements[name] for name in small)) else []
    except SpecError:  # an unknown PERMCODEC_BACKEND: the tensors that consult it raise it, in file order
        return []


class _Job(NamedTuple):
    """What one thread decodes in one go: ``run()`` gives the outcome of each of ``names`` (a name it leaves
    out is decoded at the end, one at a time, to raise its error in file order). A helper thread takes it only
    if ``for_a_helper``: its kernels are long enough to run beside the caller's Python. ``fills_the_cores``:
    its kernels run in pieces on the shared pool, one per core (``parallel.run_over``)."""

    names: list[str]
    elements: int
    run: Callable[[], dict]
    for_a_helper: bool
    fills_the_cores: bool = False


def _jobs(f: PCFile, names: list[str], elements: dict[str, int], get: Callable, from_array: Callable,
          from_member: Callable) -> list[_Job]:
    """One job per tensor of ``names``, largest first, then one per group record of theirs, and one for all their
    ``small_raw`` ones (these all Python: the caller takes them first)."""
    group_of = {name: record["group"] for name in names if "group" in (record := f.record(name))}
    tiny = [name for name in names if name not in group_of and f._small_raw(name)]
    apart = set(tiny) | set(group_of)
    in_pieces = _kernels_run_in_pieces(f)
    jobs = sorted((_Job([name], elements[name], lambda name=name: {name: _Outcome.of(get, name)},
                        elements[name] >= HELPER_MIN_ELEMENTS,
                        in_pieces and f.record(name)["kind"] == "permuted" and parallel.splits(elements[name]))
                   for name in names if name not in apart),
                  key=lambda job: job.elements, reverse=True)
    for index in dict.fromkeys(group_of.values()):
        members = f.header["tensors"][index]["names"]
        jobs.append(_Job(members, sum(elements[name] for name in members),
                         lambda index=index: group_outcomes(f, index, from_array, from_member), False))
    if tiny:
        jobs.append(_Job(tiny, sum(elements[name] for name in tiny),
                         lambda: _outcomes(tiny, f._decode_small_raw(tiny), from_array), False))
    return jobs


def _kernels_run_in_pieces(f: PCFile) -> bool:
    """Whether a large permuted tensor's compiled kernels run in pieces on the shared pool here: on the CPU,
    with the numba backend."""
    try:
        return engine_for(f._device) is arrays.NUMPY and backend.chosen() == "numba"
    except SpecError:  # an unknown PERMCODEC_BACKEND: the tensors that consult it raise it, in file order
        return False


def _outcomes(names: list[str], arrays: list, from_array: Callable) -> dict:
    """The outcomes of the arrays that came back (``from_array`` of each); a None is left out."""
    return {name: _Outcome(from_array(array)) for name, array in zip(names, arrays) if array is not None}


class _Outcome:
    """A tensor's result or the exception its decoding raised."""

    def __init__(self, result=None, error: Exception | None = None):
        self.result, self.error = result, error

    @classmethod
    def of(cls, get: Callable, name: str) -> "_Outcome":
        try:
            return cls(get(name))
        except Exception as error:  # kept, to be raised in file order
            return cls(error=error)

    def value(self):
        if self.error is not None:
            raise self.error
        return self.result


# A helper thread takes tensors of at least this many elements: below it a tensor is mostly Python, and two
# threads running Python only trade the GIL (a ResNet's 300 tiny raw tensors took twice as long on two).
HELPER_MIN_ELEMENTS = 1 << 13


def _take_in_parallel(jobs: list[_Job], on_done: Callable[[_Job], None],
                      when_none_left: Callable[[], None] | None = None) -> dict[str, _Outcome]:
    """The outcomes of ``jobs`` (largest first), run in turn by WORKERS threads until one fails or all are done:
    the helper threads take from the large end while the next is ``for_a_helper``, the caller from the small end.
    So the helpers spend their time in long GIL-free kernels while the caller runs the small tensors' Python,
    instead of both threads trading the GIL back and forth over small tensors. The caller runs
    ``when_none_left`` once it finds no job left, before it waits for the helpers' last ones.

    Where the largest job ``fills_the_cores`` and holds at least half the jobs' elements, the caller starts once
    a helper has rebuilt that tensor's values (``decoder.after_rebuild``): its jobs then run beside the tensor's
    SHA-256, one thread's work that otherwise ran last and alone, instead of slowing its kernels. Where the rest
    is larger, the caller has enough to do beside the hashes, and waiting only idled its core."""
    left, lock, stop = deque(jobs), threading.Lock(), threading.Event()
    done: dict[str, _Outcome] = {}
    largest, largest_rebuilt = (jobs[0] if jobs else None), threading.Event()
    largest_taken = False

    def run(job: _Job) -> dict:
        if job is not largest:
            return job.run()
        after_rebuild.callback = largest_rebuilt.set
        try:
            return job.run()
        finally:
            after_rebuild.callback = None
            largest_rebuilt.set()

    def take(from_large_end: bool) -> None:
        nonlocal largest_taken
        try:
            if not from_large_end and caller_waits:
                largest_rebuilt.wait()
            while not stop.is_set():
                with lock:
                    if not left or (from_large_end and not left[0].for_a_helper):
                        return
                    job = left.popleft() if from_large_end else left.pop()
                    largest_taken = largest_taken or job is largest
                outcomes = run(job)
                done.update(outcomes)
                if any(outcome.error is not None for outcome in outcomes.values()):
                    stop.set()
                with lock:
                    on_done(job)
        except BaseException:  # e.g. KeyboardInterrupt in the caller: no thread takes another tensor
            stop.set()
            raise
        finally:
            with lock:
                if from_large_end and not largest_taken:  # no helper will take it now: the caller waits no more
                    largest_rebuilt.set()

    def take_then_rest() -> None:
        take(from_large_end=False)
        if when_none_left is not None and not stop.is_set():
            when_none_left()

    helpers = max(0, min(parallel.WORKERS, len(jobs)) - 1) if jobs and jobs[0].for_a_helper else 0
    pool, futures = None, []
    if helpers:
        try:
            pool = ThreadPoolExecutor(helpers, thread_name_prefix="permcodec-tensors")
            futures = [pool.submit(take, True) for _ in range(helpers)]
        except RuntimeError:  # no thread to be had (a thread limit, the interpreter shutting down): the caller
            pass              # takes every job that no helper took
    caller_waits = bool(futures) and largest.fills_the_cores and \
        2 * largest.elements >= sum(job.elements for job in jobs)
    try:
        take_then_rest()
        for future in futures:
            future.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return done
