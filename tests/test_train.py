"""The trainer end to end (smoke runs of a few steps), the checkpoint format, CLI errors, and DDP."""

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from permcodec import InitSpec, perm
from permcodec.bits import state_digest
from permcodec.cli import main
from permcodec.devices import checked_device
from permcodec.errors import SpecError
from permcodec.train import distributed
from permcodec.train.config import TrainConfig
from permcodec.train.distributed import Ranks, rank_device, ranks_agree
from permcodec.train.loop import checkpoint, save_checkpoint, train


def assert_rows_are_permutations_of_init(ckpt):
    spec = InitSpec.from_dict(ckpt["init"])
    for name in spec.names():
        pool = perm.sorted_pool(perm.as_rows(spec.regenerate(name)))
        assert bool(perm.is_row_permutation(ckpt["state_dict"][name], pool).all()), name


@pytest.fixture(scope="module")
def conv7_checkpoint(tmp_path_factory):
    """Trained by the CLI in a child process: a Conv7 training lifts the memory high-water mark of the process
    that runs it by ~280 MB, which the suite's one pytest process cannot spare within CI's 2 GiB."""
    path = tmp_path_factory.mktemp("run") / "model.pt"
    subprocess.run([sys.executable, "-m", "permcodec", "train", "--model", "conv7", "--steps", "7", "--k", "3",
                    "--batch-size", "32", "-q", "-o", str(path)], check=True)
    return path


def test_saved_model_is_a_permutation_of_its_init(conv7_checkpoint):
    ckpt = torch.load(conv7_checkpoint, weights_only=True)
    assert set(ckpt) == {"state_dict", "init", "config", "metrics", "synced", "resume"}
    assert ckpt["synced"] is True and ckpt["resume"]["step"] == 7
    assert "layers.0.bias" in InitSpec.from_dict(ckpt["init"])  # conv7 permutes its biases
    assert_rows_are_permutations_of_init(ckpt)
    assert ckpt["metrics"][-1]["final"] and ckpt["metrics"][-1]["steps"] == 7


def test_training_ends_on_a_sync_even_between_k_steps(conv7_checkpoint):
    ckpt = torch.load(conv7_checkpoint, weights_only=True)
    assert ckpt["metrics"][-1]["syncs"] == 3  # steps 3 and 6, then the final sync after step 7


def test_best_checkpoint_is_synced(tmp_path):
    config = TrainConfig(model="mlp", epochs=2, steps=12, batch_size=400, k=5, keep="best", augment=False)
    state = train(config, progress=False, log=lambda record: None)
    assert_rows_are_permutations_of_init(checkpoint(state))


def test_baseline_is_not_permuted():
    config = TrainConfig(model="mlp", steps=3, batch_size=64, baseline=True)
    state = train(config, progress=False, log=lambda record: None)
    spec = state.spec
    pool = perm.sorted_pool(perm.as_rows(spec.regenerate("layers.1.weight")))
    assert not bool(perm.is_row_permutation(state.saved_state["layers.1.weight"], pool).all())


def test_checkpoint_holds_only_plain_types(tmp_path):
    state = train(TrainConfig(model="mlp", steps=2, batch_size=64), progress=False, log=lambda r: None)
    save_checkpoint(state, tmp_path / "m.pt")
    assert os.listdir(tmp_path) == ["m.pt"]  # no temp file left behind
    plain = (torch.Tensor, dict, list, tuple, str, int, float, bool, type(None))  # tuple: Adam's betas

    def walk(x):
        assert isinstance(x, plain), type(x)
        for v in (x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()):
            walk(v)

    walk(torch.load(tmp_path / "m.pt", weights_only=True))


def test_metrics_are_json_lines(capsys, tmp_path):
    assert main(["train", "--model", "mlp", "--steps", "2", "-q", "-o", str(tmp_path / "m.pt")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["epoch"] == 1 and "test_acc" in lines[0] and lines[-1]["final"]


def write_idx(path, magic, dims, payload, gz=False):
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet9000"], "unknown model 'resnet9000'; known models: mlp, conv2, conv4, conv7, conv13, resnet50"),
    (["--k", "0"], "k must be a positive integer, found 0"),
    (["--model", "conv13"], "model 'conv13' expects input shape (3, 32, 32) (C, H, W), got (1, 28, 28)"),
    (["--data", "mnist"], "dataset 'mnist' is read from files: pass --data-dir DIR"),
    (["--data", "imagenet"], "unknown dataset 'imagenet'"),
])
def test_bad_input_is_one_line(capsys, tmp_path, args, message):
    assert main(["train", "--steps", "1", "-q", "-o", str(tmp_path / "m.pt"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("permcodec train: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_missing_data_dir(capsys, tmp_path):
    assert main(["train", "--data", "mnist", "--data-dir", str(tmp_path / "nope"), "-q", "-o",
                 str(tmp_path / "m.pt")]) == 1
    assert "does not exist or is not a directory" in capsys.readouterr().err


def test_wrong_format_directory(capsys, tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    assert main(["train", "--data", "cifar10", "--data-dir", str(tmp_path), "-q", "-o", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar-10" in err.lower()


def test_corrupt_data_file(capsys, tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", 0x803, (2, 28, 28), bytes(100))  # truncated
    write_idx(tmp_path / "train-labels-idx1-ubyte", 0x801, (2,), bytes(2))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 0x803, (1, 28, 28), bytes(784))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, (1,), bytes(1))
    assert main(["train", "--data", "mnist", "--data-dir", str(tmp_path), "-q", "-o", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and err.count("\n") == 1


def test_cli_subprocess_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "permcodec", "train", "--k", "-3", "-o", str(tmp_path / "m.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "permcodec train: error: k must be a positive integer, found -3\n"


def launch_two_ranks(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "permcodec",
         "train", "--model", "mlp", "--steps", "6", "--k", "4", "--batch-size", "64", "--device", "cpu", "-q",
         "-o", str(out), *extra], capture_output=True, text=True, env=env, timeout=300)


def test_ddp_two_processes_stay_bit_identical(tmp_path):
    """Two gloo ranks on CPU. A launch that fails is tried once more (torchrun's --standalone port can be
    taken by another process between its choice and its use); what the ranks computed is never retried."""
    out = tmp_path / "ddp.pt"
    result = first = launch_two_ranks(out)
    if result.returncode != 0:  # -f: the first launch may have got as far as writing its output
        result = launch_two_ranks(out, "-f")
    diagnosis = (f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}\n"
                 f"first launch (exit {first.returncode}) stderr:\n{first.stderr[-2000:]}")
    assert result.returncode == 0, diagnosis
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["ranks"] == 2 and final["ranks_identical"] is True and final["syncs"] == 2, diagnosis
    assert_rows_are_permutations_of_init(torch.load(out, weights_only=True))


class FakeAllGather:
    """Stands in for torch.distributed.all_gather: records the devices it is given; rank r sends the
    caller's digest plus r * ``skew`` (0: every rank agrees). With ``stop``, it records and raises Gathered."""

    def __init__(self, skew=0, stop=False):
        self.skew, self.stop, self.calls = skew, stop, []

    def __call__(self, outputs, tensor, group=None, async_op=False):
        self.calls.append((tensor.device, tensor.dtype, tuple(tensor.shape), [out.device for out in outputs]))
        if self.stop:
            raise Gathered
        for rank, out in enumerate(outputs):
            out.copy_(tensor + rank * self.skew)


class Gathered(Exception):
    pass


def two_ranks(monkeypatch, fake):
    monkeypatch.setattr(torch.distributed, "all_gather", fake)
    return Ranks(rank=0, world=2)


def test_ranks_agree_gathers_on_the_model_device_cpu(monkeypatch):
    model, fake = nn.Linear(3, 2), FakeAllGather()
    assert ranks_agree(model, two_ranks(monkeypatch, fake)) is True
    cpu = torch.device("cpu")
    assert fake.calls == [(cpu, torch.int64, (32,), [cpu, cpu])]


def test_ranks_that_disagree(monkeypatch):
    fake = FakeAllGather(skew=1)
    assert ranks_agree(nn.Linear(3, 2), two_ranks(monkeypatch, fake)) is False
    assert len(fake.calls) == 1


def test_one_rank_gathers_nothing(monkeypatch):
    fake = FakeAllGather()
    monkeypatch.setattr(torch.distributed, "all_gather", fake)
    assert ranks_agree(nn.Linear(3, 2), Ranks()) is True
    assert fake.calls == []


def test_ranks_agree_follows_the_model_off_the_cpu(monkeypatch):
    """A meta model stands in for a CUDA one: the digest must go where the parameters are, not to the CPU."""
    model, fake = nn.Linear(3, 2, device="meta"), FakeAllGather(stop=True)
    monkeypatch.setattr(distributed, "weights_digest", lambda m: "ab" * 32)  # meta tensors have no bytes to hash
    with pytest.raises(Gathered):
        ranks_agree(model, two_ranks(monkeypatch, fake))
    meta = torch.device("meta")
    assert fake.calls == [(meta, torch.int64, (32,), [meta, meta])]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ranks_agree_gathers_on_cuda(monkeypatch):
    """What nccl needs: CUDA tensors in and out (a real nccl run needs two GPUs)."""
    model, fake = nn.Linear(3, 2).cuda(), FakeAllGather()
    assert ranks_agree(model, two_ranks(monkeypatch, fake)) is True
    device = next(model.parameters()).device
    assert fake.calls == [(device, torch.int64, (32,), [device, device])]


# --- the device check (permcodec.devices, shared with the CLI) and the weights digest -----------


@pytest.mark.parametrize("name,allow_auto,choices", [
    ("gpu", False, "cpu, cuda or cuda:N"),
    ("CPU", False, "cpu, cuda or cuda:N"),
    ("cuda:", False, "cpu, cuda or cuda:N"),
    ("cuda:x", True, "auto, cpu, cuda or cuda:N"),
    ("auto", False, "cpu, cuda or cuda:N"),
])
def test_unknown_device_names_the_choices(name, allow_auto, choices):
    with pytest.raises(SpecError, match=rf"^device must be {choices}, found '{name}'$"):
        checked_device(name, allow_auto=allow_auto)


def without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def with_one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu(monkeypatch, name):
    without_cuda(monkeypatch)
    with pytest.raises(SpecError, match=rf"^device '{name}' was asked for, but no CUDA device is available$"):
        checked_device(name)


def test_cuda_index_beyond_the_gpus(monkeypatch):
    with_one_gpu(monkeypatch)
    assert checked_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(SpecError, match=r"^device 'cuda:1' was asked for, but the CUDA devices here are cuda:0$"):
        checked_device("cuda:1")


def test_auto_means_cuda_when_present(monkeypatch):
    assert checked_device("cpu") == torch.device("cpu")
    without_cuda(monkeypatch)
    assert checked_device("auto", allow_auto=True) == torch.device("cpu")
    with_one_gpu(monkeypatch)
    assert checked_device("auto", allow_auto=True) == torch.device("cuda")


def test_plain_cuda_is_the_local_ranks_gpu_and_cuda_n_is_kept(monkeypatch):
    with_one_gpu(monkeypatch)
    ranks = Ranks(rank=1, world=2, local=1)
    assert rank_device("cuda", ranks) == torch.device("cuda", 1)
    assert rank_device("auto", ranks) == torch.device("cuda", 1)
    assert rank_device("cuda:0", ranks) == torch.device("cuda", 0)
    assert rank_device("cpu", ranks) == torch.device("cpu")


def test_train_checks_the_device_up_front(capsys, monkeypatch, tmp_path):
    without_cuda(monkeypatch)
    assert main(["train", "--device", "cuda:0", "-q", "-o", str(tmp_path / "m.pt")]) == 1
    expected = "permcodec train: error: device 'cuda:0' was asked for, but no CUDA device is available\n"
    assert capsys.readouterr().err == expected
    with pytest.raises(SpecError, match=r"^device must be auto, cpu, cuda or cuda:N, found 'tpu'$"):
        train(TrainConfig(device="tpu"), progress=False, log=lambda record: None)


def test_state_digest_hashes_names_and_little_endian_bytes_in_the_given_order():
    state = {"b": torch.tensor([1.5, -2.0]), "a": torch.arange(3, dtype=torch.int16)}
    expected = hashlib.sha256(b"b" + np.array([1.5, -2.0], "<f4").tobytes() + b"a" + np.arange(3, dtype="<i2").tobytes())
    assert state_digest(state) == expected.hexdigest()
    assert state_digest(dict(reversed(state.items()))) != expected.hexdigest()
