"""The command line starts without torch or numba, the package loads its names on first use, and outputs keep
their suffixes: ``--help``, ``--version``, argument errors, ``save``'s path, ``load`` on a missing device."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import permcodec
from permcodec import SpecError
from permcodec.train.config import MODEL_NAMES
from permcodec.train.models import MODELS

COMMANDS = ["", "train", "encode", "decode", "info", "verify", "report", "demo"]

PROBE = """
import sys
from permcodec.cli import main
try:
    code = main({argv!r})
except SystemExit as exit:
    code = exit.code
print("exit", code, "torch", "torch" in sys.modules, "numba" in sys.modules)
"""


def probe(argv: list[str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=120)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_neither_torch_nor_numba(command):
    assert probe([command, "--help"] if command else ["--help"]) == "exit 0 torch False False"


def test_an_argument_error_imports_neither_torch_nor_numba():
    assert probe(["encode", "--level", "fastest", "m.pt"]) == "exit 2 torch False False"


def test_the_probe_sees_torch_when_a_command_runs(tmp_path):
    assert probe(["verify", str(tmp_path / "missing.pc")]) == "exit 1 torch True False"


def test_version():
    done = subprocess.run([sys.executable, "-m", "permcodec", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout == f"permcodec {permcodec.__version__}\n" and done.returncode == 0


def test_importing_the_package_imports_no_torch_until_a_name_is_used():
    code = ("import sys, permcodec; before = 'torch' in sys.modules; permcodec.encode; "
            "print(before, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout == "False True\n"


def test_lazy_names_are_the_modules_own():
    from permcodec import codec, init

    assert permcodec.encode is codec.encode and permcodec.LaPerm.__module__ == "permcodec.train.laperm"
    assert permcodec.init is init and permcodec.TensorInit.__module__ == "permcodec.init.initspec"
    assert set(permcodec.__all__) <= set(dir(permcodec))
    with pytest.raises(AttributeError, match="module 'permcodec' has no attribute 'no_such_name'"):
        permcodec.no_such_name


def test_the_model_names_for_help_are_the_models_table():
    assert tuple(MODELS) == MODEL_NAMES


@pytest.mark.parametrize("name", ["m.pt", "m.safetensors", "m"])
def test_save_refuses_a_path_that_does_not_end_in_pc(tmp_path, name):
    model = torch.nn.Linear(3, 2)
    spec = permcodec.init_(model, seed=1)
    with pytest.raises(SpecError, match=rf"^save writes a \.pc file \(torch\.save writes \.pt\): the path must end "
                                        rf"in \.pc, found '{name}'$"):
        permcodec.save(model, tmp_path / name, init=spec)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_on_cuda_without_cuda_is_a_spec_error():
    path = Path(__file__).parent / "fixtures" / "tiny_linear.pc"
    with pytest.raises(SpecError, match=r"^device 'cuda' was asked for, but no CUDA device is available$"):
        permcodec.load(path, device="cuda")


SMALL_JOB = """
import sys
from permcodec.init import distributions, rng
words = rng.philox_blocks(7, 3, 0, 5, {blocks})
ints = distributions.uniform_integers(7, 3, 5, 1001, "cpu")
print("numba" in sys.modules, words.sum().item(), ints.sum().item())
"""


@pytest.mark.skipif(permcodec.init.rng.compiled_kernel() is None, reason="numba is not installed")
def test_a_small_job_does_not_load_numba_and_draws_the_same_words():
    """Loading numba costs ~0.5 s: a process with only small draws (info, a small model) stays on torch."""
    small = subprocess.run([sys.executable, "-c", SMALL_JOB.format(blocks=1000)], capture_output=True, text=True,
                           timeout=120).stdout.split()
    forced = subprocess.run([sys.executable, "-c", "import numba\n" + SMALL_JOB.format(blocks=1000)],
                            capture_output=True, text=True, timeout=120).stdout.split()
    assert small[0] == "False" and forced[0] == "True"
    assert small[1:] == forced[1:]


@pytest.mark.skipif(permcodec.init.rng.compiled_kernel() is None, reason="numba is not installed")
def test_a_large_job_loads_numba():
    done = subprocess.run([sys.executable, "-c", SMALL_JOB.format(blocks=1 << 21)], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split()[0] == "True"


LARGE_DRAW = """
import sys
from permcodec.init import distributions
params = distributions.make_params({dist!r}, (2048, 2048), **{user!r})
values = distributions.sample({dist!r}, params, 7, 3, 0, 2048 * 2048, "cpu", row_length=2048)
print("numba" in sys.modules)
"""


@pytest.mark.skipif(permcodec.init.rng.compiled_kernel() is None, reason="numba is not installed")
@pytest.mark.parametrize("dist,user", [("he_uniform", {}), ("levels", {"num_levels": 7})])
def test_a_large_draw_loads_numba_though_it_is_sampled_in_chunks(dist, user):
    """Each 2^20-element chunk alone is a small job; the whole draw of 2^22 is not (bench_rng once measured the
    torch path, 25x slower, because every chunk was judged alone)."""
    done = subprocess.run([sys.executable, "-c", LARGE_DRAW.format(dist=dist, user=user)], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["True"], done.stderr


def test_info_of_a_small_file_imports_neither_torch_nor_numba():
    """The goal of the quick-start issue: ``info`` regenerates its pools (for the bound) on numpy."""
    path = Path(__file__).parent / "fixtures" / "conv_layers.pc"
    assert probe(["info", str(path)]) == "exit 0 torch False False"


NEW_SPECIALIZATION = """
import numpy as np
from permcodec.init import _uniform_numba
out = np.empty(10, np.{dtype})
_uniform_numba._uniform_values(5, 0, 3, 0, -1.0, 2.0, out, 0, 5)
print(out.dtype, (out.astype(np.float32) == _uniform_numba.uniform_values(5, 3, 0, 10, -1.0, 1.0)).all())
"""


@pytest.mark.skipif("numba" not in permcodec.backend.AVAILABLE, reason="numba is not installed")
def test_a_kernel_compiled_beside_cached_kernels_runs(tmp_path):
    """A process that compiles a kernel (here for a new argument type) while the Philox word generator's
    callers were cached by an earlier process: numba cannot lower a generator it loaded from its cache, so the
    generator must not be cached (this failed with a KeyError)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PERMCODEC_BACKEND": "numba"}
    outputs = [subprocess.run([sys.executable, "-c", NEW_SPECIALIZATION.format(dtype=dtype)], capture_output=True,
                              text=True, timeout=300, env=env) for dtype in ("float32", "float64")]
    assert [done.stdout.split() for done in outputs] == [["float32", "True"], ["float64", "True"]], \
        outputs[-1].stderr[-2000:]
