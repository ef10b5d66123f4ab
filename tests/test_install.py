"""What an install of permcodec holds, and how it behaves where its files are read-only.

The wheel is built from a copy of the source tree (setuptools leaves build/ behind,
whose stale files would leak into later wheels) without build isolation, so no
network is needed.

The read-only tests run permcodec from a copy of the package with every write bit
cleared, in a subprocess. Root ignores write bits, so under root the subprocess
first drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from its bounding
set (prctl, Linux) and then execs Python: root is then held to the file modes like
any owner. Every test first checks that the copy really is unwritable to that
subprocess and skips if it is not.
"""

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
HAS_NUMBA = importlib.util.find_spec("numba") is not None
BASE_REQUIREMENTS = {"torch", "numpy", "zstandard", "msgpack", "safetensors", "tqdm", "numba"}
HEAVY = {"mlxtend", "pandas", "scikit-learn", "scipy", "matplotlib"}


# --- the wheel --------------------------------------------------------------------


def setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0,)


def requirement_name(line: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if setuptools_version() < (77,):
        pytest.skip("building the wheel needs setuptools>=77 (PEP 639 license expression) in this environment")
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "permcodec", source / "permcodec", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, source]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (path,) = dist.glob("permcodec-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_carries_the_embedded_dataset_and_its_licence_notice(wheel):
    source = ROOT / "permcodec" / "train"
    assert wheel.read("permcodec/train/mnist_5k.csv.gz") == (source / "mnist_5k.csv.gz").read_bytes()
    assert wheel.read("permcodec/train/mnist_5k.LICENSE") == (source / "mnist_5k.LICENSE").read_bytes()
    (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    headers = wheel.read(metadata).decode().split("\n\n", 1)[0]
    assert "License-Expression: MIT AND CC-BY-SA-3.0" in headers.splitlines()
    assert wheel.read(metadata.replace("METADATA", "licenses/permcodec/train/mnist_5k.LICENSE"))


def test_wheel_base_requirements_are_lean_and_the_test_extra_pulls_every_extra(wheel):
    (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    headers = wheel.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    requirements = [line.removeprefix("Requires-Dist: ") for line in headers if line.startswith("Requires-Dist: ")]
    base = {requirement_name(line) for line in requirements if "extra ==" not in line}
    assert base == BASE_REQUIREMENTS
    assert not base & HEAVY
    extras = {line.removeprefix("Provides-Extra: ") for line in headers if line.startswith("Provides-Extra: ")}
    test_extra = [line for line in requirements if line.endswith('extra == "test"')]
    assert f"permcodec[{','.join(sorted(extras - {'test'}))}]" in "".join(test_extra).replace(" ", "")


# --- numba's cache under a read-only package ----------------------------------------

DECODE_FIXTURES = """
import hashlib, json, sys
from pathlib import Path
import permcodec
from permcodec import backend
from permcodec.codec import tensor_bytes
fixtures = Path(sys.argv[1])
expected = json.loads((fixtures / "fixtures.json").read_text())
found = {}
for name in sorted(expected):
    tensors = permcodec.load(fixtures / f"{name}.pc", verify=True)  # checks the SHA-256 each tensor's record holds
    found[name] = {key: hashlib.sha256(tensor_bytes(value)).hexdigest() for key, value in tensors.items()}
print("RESULT " + json.dumps({"package": permcodec.__file__, "backend": backend.chosen(), "exact": found == expected}))
"""

PR_CAPBSET_DROP = 24
CAPS_THAT_BYPASS_FILE_MODES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
# Resolved here, not after fork: the child must not take the dynamic loader's lock.
PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def hold_root_to_file_modes() -> None:
    """preexec_fn: under root, drop the capabilities that ignore file modes before exec (Linux)."""
    if PRCTL is None or os.geteuid() != 0:
        return
    for capability in CAPS_THAT_BYPASS_FILE_MODES:
        PRCTL(PR_CAPBSET_DROP, capability, 0, 0, 0)  # checked afterwards by a write probe


def set_writable(tree: Path, writable: bool) -> None:
    for path in [tree, *tree.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            path.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


@pytest.fixture
def read_only_package(tmp_path):
    """A copy of permcodec, without caches, that the subprocesses of `run_python` cannot write to."""
    if not HAS_NUMBA:
        pytest.skip("numba is not installed: nothing is cached")
    if os.name != "posix":
        pytest.skip("file modes do not make a directory read-only here")
    if os.geteuid() == 0 and not sys.platform.startswith("linux"):
        pytest.skip("root ignores write bits, and dropping that power needs Linux's prctl")
    site = tmp_path / "site"
    shutil.copytree(ROOT / "permcodec", site / "permcodec", ignore=shutil.ignore_patterns("__pycache__"))
    set_writable(site, False)
    probe = run_python(site, tmp_path / "home", f"open({str(site / 'permcodec' / 'probe')!r}, 'w')")
    if probe.returncode == 0:
        set_writable(site, True)
        pytest.skip("could not make the copy read-only for a subprocess (root that cannot drop CAP_DAC_OVERRIDE)")
    assert "PermissionError" in probe.stderr, probe.stderr
    yield site
    set_writable(site, True)


def run_python(site: Path, cache_home: Path, code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter importing permcodec from `site`, numba's user cache in `cache_home`."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("NUMBA_", "PERMCODEC_"))}
    environment |= dict(PYTHONPATH=str(site), XDG_CACHE_HOME=str(cache_home), NUMBA_DEBUG_CACHE="1", **env)
    command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, env=environment, cwd=site.parent, capture_output=True, text=True,
                          timeout=120, preexec_fn=hold_root_to_file_modes)


def decode_fixtures(site: Path, cache_home: Path, **env: str) -> dict:
    """Decode every fixture; the subprocess's verdict plus numba's cache log (NUMBA_DEBUG_CACHE)."""
    result = run_python(site, cache_home, DECODE_FIXTURES, str(FIXTURES), **env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    verdict = json.loads(lines[-1].removeprefix("RESULT "))
    assert verdict["package"] == str(site / "permcodec" / "__init__.py")
    assert verdict["backend"] == "numba" and verdict["exact"]
    verdict["saved"] = re.findall(r"\[cache\] data saved to '(.*)'", result.stdout)
    verdict["loaded"] = re.findall(r"\[cache\] data loaded from '(.*)'", result.stdout)
    return verdict


def files_written_into(site: Path) -> list[Path]:
    return [path for path in site.rglob("*") if path.suffix in (".nbi", ".nbc", ".pyc")]


def test_read_only_package_caches_kernels_in_the_user_cache_dir(read_only_package, tmp_path):
    cache_home = tmp_path / "cache"
    first = decode_fixtures(read_only_package, cache_home)
    second = decode_fixtures(read_only_package, cache_home)
    user_cache = cache_home / "numba"
    assert first["saved"] and all(Path(path).is_relative_to(user_cache) for path in first["saved"])
    assert sorted(user_cache.rglob("*.nbi")), "no cache index in the user-wide cache dir"
    assert second["saved"] == [], "the second run compiled again instead of loading the cache"
    assert second["loaded"] and set(second["loaded"]) <= set(first["saved"])
    assert files_written_into(read_only_package) == []


def test_read_only_package_without_a_writable_user_cache_still_decodes_and_caches(read_only_package, tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("numba cannot create its user cache dir under a file, not even as root")
    temp = tmp_path / "tmp"
    temp.mkdir()
    first = decode_fixtures(read_only_package, not_a_directory / "cache", TMPDIR=str(temp))
    second = decode_fixtures(read_only_package, not_a_directory / "cache", TMPDIR=str(temp))
    assert first["saved"] and all(Path(path).is_relative_to(temp) for path in first["saved"])
    assert second["saved"] == [] and second["loaded"]
    assert files_written_into(read_only_package) == []


# --- numba's cache after an edit to a file the kernels import -------------------------

PHILOX_WORDS = """
from permcodec.init import _philox_numba
print("RESULT", _philox_numba.philox_blocks(7, 0, 0, 0, 2).tolist())
"""


def writable_package(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    shutil.copytree(ROOT / "permcodec", site / "permcodec", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def philox_words(site: Path, cache_home: Path) -> tuple[list, list[str]]:
    """The words the compiled Philox kernel gives in a fresh interpreter, and the cache files numba saved."""
    result = run_python(site, cache_home, PHILOX_WORDS)
    assert result.returncode == 0, result.stderr[-3000:]
    words = json.loads(result.stdout.splitlines()[-1].removeprefix("RESULT "))
    return words, re.findall(r"\[cache\] data saved to '(.*)'", result.stdout)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed: nothing is cached")
def test_an_edit_to_a_constant_the_kernels_import_compiles_them_again(tmp_path):
    """numba checks a cached kernel against its own file only; the Philox kernel takes ROUNDS from philox.py.
    Without backend.forget_stale_kernels the second run would load the 10-round kernel from the cache."""
    site, cache_home = writable_package(tmp_path), tmp_path / "cache"
    ten_rounds, first_saved = philox_words(site, cache_home)
    again, again_saved = philox_words(site, cache_home)
    assert first_saved and again_saved == [] and again == ten_rounds  # the cache serves while nothing changed
    philox = site / "permcodec" / "init" / "philox.py"
    philox.write_text(philox.read_text().replace("ROUNDS = 10\n", "ROUNDS = 9\n"))
    nine_rounds, edited_saved = philox_words(site, cache_home)
    assert edited_saved and nine_rounds != ten_rounds


def test_the_kernels_dependencies_are_the_files_they_import(tmp_path):
    from permcodec import backend

    package = writable_package(tmp_path) / "permcodec"
    found = {str(path.relative_to(package)) for path in backend.kernel_dependencies(package)}
    kernels = {str(path.relative_to(package)) for name in backend.NUMBA_KERNEL_DIRS
               for path in (package / name).glob(backend.KERNEL_GLOB)}
    assert kernels <= found and len(kernels) == 7
    assert {"init/philox.py", "init/exactmath.py", "format/ransmath.py", "parallel.py", "backend.py"} <= found
    assert not found & {"cli.py", "decoder.py", "format/container.py", "__init__.py"}


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed: nothing is cached")
def test_stale_kernels_are_deleted_from_their_cache_dir_once(tmp_path, monkeypatch):
    from permcodec import backend

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    package = writable_package(tmp_path) / "permcodec"
    cache = package / "init" / "__pycache__"  # numba caches beside a writable source

    def cached_files() -> list[Path]:
        names = ["_philox_numba.fill_words-27.py311.nbi", "_philox_numba.fill_words-27.py311.1.nbc",
                 "_uniform_numba.k53-30.py311.nbi", "philox.cpython-311.pyc", "other_numba.f-1.py311.nbi"]
        cache.mkdir(exist_ok=True)
        for name in names:
            (cache / name).write_bytes(b"")
        return [cache / name for name in names[:3]]

    kernel_caches = cached_files()
    assert sorted(backend.forget_stale_kernels(package)) == sorted(kernel_caches)  # no record yet
    assert sorted(path.name for path in cache.iterdir()) == [
        "other_numba.f-1.py311.nbi", "permcodec-kernel-sources.json", "philox.cpython-311.pyc"]
    kernel_caches = cached_files()
    assert backend.forget_stale_kernels(package) == []
    (package / "cli.py").write_text((package / "cli.py").read_text() + "\n# not a kernel's import\n")
    assert backend.forget_stale_kernels(package) == []
    assert all(path.exists() for path in kernel_caches)
    ransmath = package / "format" / "ransmath.py"
    ransmath.write_text(ransmath.read_text() + "\n# an edit\n")
    assert sorted(backend.forget_stale_kernels(package)) == sorted(kernel_caches)
    assert backend.forget_stale_kernels(package) == []


BAD_RECORDS = {"nul": '{"digest": "x", "files": {"init/philox.py\\u0000": [0, 0]}}',
               "deep": "[" * 100_000 + "]" * 100_000, "vacuous": '{"digest": "x", "files": {}}',
               "list": "[1, 2]", "bytes": b"\xff\xfe\x00", "fifo": None}


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed: nothing is cached")
@pytest.mark.parametrize("bad", BAD_RECORDS)
def test_a_bad_record_counts_as_stale_and_never_fails_the_import(tmp_path, monkeypatch, bad):
    from permcodec import backend

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    package = writable_package(tmp_path) / "permcodec"
    cache = package / "init" / "__pycache__"
    cache.mkdir()
    kernel = cache / "_philox_numba.fill_words-27.py311.nbi"
    kernel.write_bytes(b"")
    record, text = cache / backend.KERNEL_RECORD, BAD_RECORDS[bad]
    if text is None:
        os.mkfifo(record)  # a read would block for ever
    else:
        record.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert kernel in backend.forget_stale_kernels(package)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed: nothing is cached")
def test_a_process_that_imported_older_sources_cannot_cache_them_for_newer_ones(tmp_path):
    """A (a notebook, say) imports the kernels; philox.py is edited; B imports them, which writes the new record;
    only then A compiles the Philox kernel from its 10-round sources and caches it. C must not load it."""
    site, cache_home = writable_package(tmp_path), tmp_path / "cache"
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("NUMBA_", "PERMCODEC_"))}
    environment |= dict(PYTHONPATH=str(site), XDG_CACHE_HOME=str(cache_home))
    old = subprocess.Popen([sys.executable, "-c", "import permcodec.init._philox_numba; print('ready', flush=True); "
                            "input(); " + PHILOX_WORDS.strip().replace("\n", "; ")],
                           env=environment, cwd=site.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert old.stdout.readline() == "ready\n"
    philox = site / "permcodec" / "init" / "philox.py"
    philox.write_text(philox.read_text().replace("ROUNDS = 10\n", "ROUNDS = 9\n"))
    assert run_python(site, cache_home, "import permcodec.init._philox_numba").returncode == 0
    ten_rounds = json.loads(old.communicate("\n", timeout=120)[0].splitlines()[-1].removeprefix("RESULT "))
    nine_rounds, saved = philox_words(site, cache_home)
    assert nine_rounds != ten_rounds and saved
