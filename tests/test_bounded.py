"""Work bounded by what is stored: files of empty tensors with the longest rows, or the most rows.

A tensor of shape [0, 2^31 - 1] or [2^31 - 1, 0] holds no element, yet a
decoder that sizes anything by its rows or row length allocates gigabytes.
Each file below is written by ``encode`` from a module whose tensor has that
shape, then read by every entry point in a child process under a 2 GiB
address-space cap (RLIMIT_AS; under a CUDA build of torch, whose import alone
maps ~3.3 GB, the warmed process's mapping + 1 GiB), each read timed against
2 s after the imports.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import permcodec
from permcodec import encoder
from permcodec.format import container, schemes, zstdframe
from permcodec.init import distributions

LONGEST = 2**31 - 1
SHAPES = {"no-rows": (0, LONGEST), "empty-rows": (LONGEST, 0)}
KINDS = ("delta", "exact", "multiset", "sparse", "raw", "group")
FIXTURE_FOR_WARMUP = Path(__file__).parent / "fixtures" / "tiny_linear.pc"
ADDRESS_SPACE = 2 << 30
# The cap: 2 GiB of address space in all, or, where the warmed process already maps more (a CUDA build of torch
# reserves ~3.3 GB on import), what it maps plus 1 GiB; either way far below what the shapes would size.
CAP = "max({space}, int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE') + (1 << 30))"
SECONDS = 2.0

CHILD = textwrap.dedent("""
    import contextlib, io, json, os, resource, sys, time
    import permcodec
    from permcodec import cli

    paths = json.loads(sys.argv[1])
    warm = permcodec.load(paths[0])  # imports and first-use costs are paid before the clock and the cap
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(["info", paths[0]])
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, resource.RLIM_INFINITY))

    def run(label, path, call):
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
                result = call(path)
            outcome = {{"result": result, "stdout": out.getvalue(), "stderr": err.getvalue()}}
        except permcodec.PermcodecError as error:
            outcome = {{"refused": f"{{type(error).__name__}}: {{error}}"}}
        except BaseException as error:
            outcome = {{"crashed": f"{{type(error).__name__}}: {{error}}"}}
        outcome.update(label=label, path=path, seconds=time.perf_counter() - started)
        print(json.dumps(outcome), flush=True)

    def safe_open_all(path):
        with permcodec.safe_open(path) as f:
            return {{name: list(f.get_tensor(name).shape) for name in f.keys()}}

    for path in paths:
        run("load", path, lambda p: {{k: list(v.shape) for k, v in permcodec.load(p).items()}})
        run("safe_open", path, safe_open_all)
        run("info", path, lambda p: cli.main(["info", p]))
        run("info --json", path, lambda p: cli.main(["info", "--json", p]))
        run("verify", path, lambda p: cli.main(["verify", p]))
""")


def empty_model(shape, kind: str):
    """A module whose one tensor has ``shape``: a Linear weight (permuted) or a buffer (raw); for "group", two
    buffers of that shape, which the encoder stores in one group record."""
    if kind in ("raw", "group"):
        module = nn.Module()
        module.register_buffer("weight", torch.empty(shape))
        if kind == "group":
            module.register_buffer("other", torch.empty(shape))
        return module, None
    layer = nn.Linear(shape[1], shape[0], bias=False)  # weight [out, in] = shape; nothing is allocated
    spec = permcodec.init_(layer, seed=1, dist="uniform")
    return layer, spec


def encode_options(kind: str) -> dict:
    """What encode is asked for a file of ``kind``: a permuted tensor's scheme; nothing for raw and group."""
    return {} if kind in ("raw", "group") else {"scheme": kind}


@pytest.fixture(scope="module")
def empty_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("empty")
    paths = []
    for label, shape in SHAPES.items():
        for kind in KINDS:
            module, spec = empty_model(shape, kind)
            options = encode_options(kind)
            path = folder / f"{label}-{kind}.pc"
            permcodec.save(module.state_dict(), path, init=spec or permcodec.InitSpec(), **options)
            paths.append(str(path))
    return paths


def shape_of(path: str) -> tuple:
    return SHAPES["no-rows" if "no-rows" in path else "empty-rows"]


def test_encode_writes_each_empty_tensor_with_the_kind_asked_for(empty_files):
    for path in empty_files:
        with permcodec.safe_open(path) as f:
            record = f.record("weight")
        kind = path.rsplit("-", 1)[1].removesuffix(".pc")
        assert ("group" if "group" in record else record.get("scheme", record["kind"])) == kind
        assert tuple(record["shape"]) == shape_of(path)


def test_every_entry_point_reads_empty_tensor_files_in_2_s_under_2_gib(empty_files):
    child = subprocess.run([sys.executable, "-c", CHILD.format(cap=CAP.format(space=ADDRESS_SPACE)), json.dumps(empty_files)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    outcomes = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(outcomes) == 5 * len(empty_files)
    for outcome in outcomes:
        where = f"{outcome['label']} {outcome['path']}"
        assert "crashed" not in outcome and "refused" not in outcome, f"{where}: {outcome}"
        assert outcome["seconds"] <= SECONDS, f"{where}: {outcome['seconds']:.2f} s"
        if outcome["label"] in ("load", "safe_open"):
            assert {tuple(shape) for shape in outcome["result"].values()} == {shape_of(outcome["path"])}, where
        else:
            assert outcome["result"] == 0, f"{where}: {outcome['stderr']}"


def test_the_cap_is_real(tmp_path):
    """The same child, asked to allocate 3 GiB under the cap, fails: the cap binds."""
    script = textwrap.dedent(f"""
        import resource, torch
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, resource.RLIM_INFINITY))
        try:
            torch.empty(3 << 30, dtype=torch.uint8).fill_(1)
        except RuntimeError:
            print("refused")
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "refused"


def test_running_out_of_memory_on_a_declared_tensor_is_a_named_memory_limit_error(tmp_path):
    """A valid 2^25-element tensor under a cap too small for it: a PermcodecError (and a MemoryError)."""
    shape = (2**12, 2**13)
    init = permcodec.TensorInit("weight", shape, 3, 0, "he_uniform", distributions.make_params("he_uniform", shape))
    record = encoder.permuted_record("weight", init.regenerate(), init, [("delta", {}, b"")])  # trained = initial
    section = zstdframe.compress(bytes(shape[0] * shape[1] * schemes.index_width(shape[1])), 3)  # all deltas 0
    path = tmp_path / "big.pc"
    path.write_bytes(container.pack([record], [section]))
    script = textwrap.dedent(f"""
        import re, resource, permcodec, permcodec.cli
        permcodec.load({str(FIXTURE_FOR_WARMUP)!r})
        permcodec.cli.main(["info", {str(FIXTURE_FOR_WARMUP)!r}])  # every import before the cap
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) << 10
        resource.setrlimit(resource.RLIMIT_AS, (size + (64 << 20), resource.RLIM_INFINITY))
        for call in (lambda: permcodec.load({str(path)!r}), lambda: permcodec.cli.main(["info", {str(path)!r}])):
            try:
                call()
            except permcodec.MemoryLimitError as error:
                assert isinstance(error, MemoryError)
                print("MemoryLimitError:", error)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "\nMemoryLimitError: tensor 'weight': not enough memory for its 33,554,432 elements (" in child.stdout
    assert "error: tensor 'weight': not enough memory for its 33,554,432 elements" in child.stderr
    # The file itself is valid (its decode is not repeated here: it peaks near 2.3 GB, over the suite's budget).


def test_encoding_empty_tensors_is_bounded_too(tmp_path):
    """init_ and encode of the same modules, in a child under the same cap and time limit."""
    script = textwrap.dedent(f"""
        import os, resource, sys, time, warnings
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import permcodec, test_bounded as T
        warnings.simplefilter("ignore")
        permcodec.encode(*T.empty_model((2, 3), "exact"), scheme="exact")  # first use before the cap
        resource.setrlimit(resource.RLIMIT_AS, ({CAP.format(space=ADDRESS_SPACE)}, resource.RLIM_INFINITY))
        for shape in T.SHAPES.values():
            for kind in T.KINDS:
                started = time.perf_counter()
                module, spec = T.empty_model(shape, kind)
                options = T.encode_options(kind)
                permcodec.encode(module.state_dict(), init=spec or permcodec.InitSpec(), **options)
                print(shape, kind, round(time.perf_counter() - started, 3))
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    lines = child.stdout.splitlines()
    assert len(lines) == len(SHAPES) * len(KINDS)
    assert all(float(line.rsplit(" ", 1)[1]) <= SECONDS for line in lines), lines


@pytest.mark.parametrize("scheme,section,message", [
    ("exact", b"\x03\x00\x00\x00", "section of 4 bytes cannot hold 3 lane lengths"),
    ("multiset", b"\x05\x00\x00\x00" * 3 + b"\x00" * 8, "lane lengths add up to 15 words, the section holds 2"),
    ("delta", zstdframe.compress(b"\x00" * 10), "zstd frame declares 10 bytes, header says 8388608 bytes"),
])
def test_a_malformed_section_is_refused_before_its_pool_is_drawn(monkeypatch, scheme, section, message):
    """Drawing a 4M-element pool costs far more than reading a section's layout: the layout is checked first."""
    shape = (2048, 2048)
    init = permcodec.TensorInit("weight", shape, 3, 0, "normal", {"mean": 0.0, "std": 1.0})
    record = {"name": "weight", "kind": "permuted", "dtype": "float32", "shape": list(shape), "sha256": bytes(32),
              "init": {"rng": "philox4x32-10", "seed": 3, "stream": 0, "dist": "normal", "params": init.params},
              "scheme": scheme, "scheme_params": {} if scheme == "delta" else {"lanes": 3}}
    data = container.pack([record], [section])

    def refuse_to_draw(*args, **kwargs):
        raise AssertionError("the pool was drawn before the section's layout was checked")

    monkeypatch.setattr(permcodec.TensorInit, "regenerate", refuse_to_draw)
    with pytest.raises(permcodec.FormatError, match=message):
        permcodec.decode(data)


def test_an_error_that_is_not_out_of_memory_keeps_its_cause(monkeypatch):
    """Only running out of memory becomes a MemoryLimitError; any other RuntimeError from decoding a tensor
    passes through as it came, its cause chain kept for whoever debugs it."""
    from permcodec import decoder

    def failing(record, section):
        try:
            raise KeyError("root cause")
        except KeyError as err:
            raise RuntimeError("a device error") from err

    f = permcodec.PCFile(FIXTURE_FOR_WARMUP.read_bytes())
    raw = next(name for name in f.keys() if f.record(name)["kind"] == "raw")
    monkeypatch.setattr(decoder, "decode_raw", failing)
    with pytest.raises(RuntimeError, match="^a device error$") as caught:
        f.get_tensor(raw)
    assert isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(RuntimeError, match="^a device error$") as caught:
        with decoder.memory_errors_named(f.record(raw)):
            failing(None, None)
    assert isinstance(caught.value.__cause__, KeyError)
