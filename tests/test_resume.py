"""Resume: a run stopped after an epoch and continued from its checkpoint ends on the same bits as one never
stopped; weights-only resumes (a decoded .pc) go on with a fresh optimizer; runs repeat bit for bit."""

import dataclasses
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from permcodec import InitSpec, perm
from permcodec.bits import tensor_bytes
from permcodec.errors import FormatError, SpecError
from permcodec.perm import synced_state_dict
from permcodec.train import distributed
from permcodec.train.config import TrainConfig, config_from_dict
from permcodec.train.distributed import Ranks, gather_from_ranks
from permcodec.train.loop import save_checkpoint, train
from permcodec.train.reproducible import reproducible
from permcodec.train.resume import Resume, resume_from_checkpoint, weights_only_resume
from permcodec.train.run import restore_generators, start_run


class Interrupted(Exception):
    pass


def quiet(record):
    pass


def stop_at_epoch(epoch):
    """A log that kills the run when epoch ``epoch`` reports, i.e. after epoch - 1 was checkpointed."""
    def log(record):
        if record.get("epoch") == epoch:
            raise Interrupted
    return log


def write_tiny_cifar(directory, per_batch=20):
    """Five train batches and a test batch of random CIFAR-10 binary records: 100 train images, 20 test."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        rng = np.random.default_rng(index)
        labels = rng.integers(0, 10, size=(per_batch, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        (directory / f"{name}.bin").write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return str(directory)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"))


def mlp_config(**changes):
    # 4000 images, batch 400: 10 steps an epoch; k=3 leaves each epoch's end unsynced
    base = TrainConfig(model="mlp", epochs=3, batch_size=400, k=3, device="cpu")
    return dataclasses.replace(base, **changes)


def conv2_config(data_dir, **changes):
    # Conv2 has dropout and BatchNorm; CIFAR augmentation flips too. 100 images, batch 25: 4 steps an epoch.
    base = TrainConfig(model="conv2", data="cifar10", data_dir=data_dir, epochs=3, batch_size=25, k=3,
                       optimizer="sgd", keep="best", reset_bn=True, device="cpu")
    return dataclasses.replace(base, **changes)


def assert_same_bits(a, b, where="checkpoint"):
    """Equal structure; every tensor equal in dtype, shape and bytes (so -0.0 and NaN payloads count)."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert tensor_bytes(a.contiguous()) == tensor_bytes(b.contiguous()), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same_bits(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same_bits(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def without_seconds(metrics):
    return [{key: value for key, value in record.items() if key != "seconds"} for record in metrics]


def assert_same_run(resumed, straight):
    assert_same_bits(resumed.saved_state, straight.saved_state, "saved_state")
    assert_same_bits(resumed.resume.state_dict, straight.resume.state_dict, "live weights")
    assert_same_bits(resumed.resume.optimizer, straight.resume.optimizer, "optimizer")
    assert_same_bits(resumed.resume.generators, straight.resume.generators, "generators")
    assert without_seconds(resumed.metrics) == without_seconds(straight.metrics)


def in_a_child(check, *args) -> None:
    """``check(*args)`` in a fresh process: a Conv2 training lifts the memory high-water mark of the process
    that runs it by ~300 MB, which the suite's one pytest process cannot spare within CI's 2 GiB."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(check, args)


@pytest.mark.parametrize("setup,stop_after", [("mlp", 1), ("mlp", 2), ("conv2", 2)])
def test_a_resumed_run_ends_on_the_bits_of_one_never_stopped(tmp_path, cifar_dir, setup, stop_after):
    if setup == "conv2":
        in_a_child(resumed_run_ends_on_the_bits_of_one_never_stopped, tmp_path, cifar_dir, setup, stop_after)
    else:
        resumed_run_ends_on_the_bits_of_one_never_stopped(tmp_path, cifar_dir, setup, stop_after)


def resumed_run_ends_on_the_bits_of_one_never_stopped(tmp_path, cifar_dir, setup, stop_after):
    config = mlp_config() if setup == "mlp" else conv2_config(cifar_dir)
    straight = train(config, progress=False, log=quiet)

    path = tmp_path / "run.pt"
    stopped = dataclasses.replace(config, save_every=stop_after)
    with pytest.raises(Interrupted):
        train(stopped, progress=False, log=stop_at_epoch(stop_after + 1), checkpoint_path=path)
    resume = resume_from_checkpoint(path)
    assert resume.epoch == stop_after and resume.optimizer is not None and resume.generators is not None
    logged = []
    resumed = train(stopped, progress=False, log=logged.append, resume=resume, checkpoint_path=path)

    assert logged[0] == {"resumed": True, "after_epoch": stop_after, "at_step": resume.step,
                         "optimizer": "restored", "random_streams": "restored"}
    assert_same_run(resumed, straight)


def test_a_mid_run_checkpoint_says_it_is_not_synced_and_its_synced_view_is_what_a_sync_writes(tmp_path):
    path = tmp_path / "mid.pt"
    with pytest.raises(Interrupted):
        train(mlp_config(save_every=1), progress=False, log=stop_at_epoch(2), checkpoint_path=path)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "init", "config", "metrics", "synced", "resume"}
    assert set(ckpt["resume"]) == {"state_dict", "optimizer", "generators", "epoch", "step"}
    assert ckpt["synced"] is False and ckpt["resume"]["epoch"] == 1 and ckpt["resume"]["step"] == 10
    assert_same_bits(ckpt["state_dict"], ckpt["resume"]["state_dict"])  # keep="last": the live weights

    spec = InitSpec.from_dict(ckpt["init"])
    view = synced_state_dict(ckpt["state_dict"], spec)
    one_epoch = train(mlp_config(epochs=1), progress=False, log=quiet)  # the same epoch, then the closing sync
    assert_same_bits(view, one_epoch.saved_state)
    for name in spec.names():
        pool = perm.sorted_pool(perm.as_rows(spec.regenerate(name)))
        assert bool(perm.is_row_permutation(view[name], pool).all()), name
    assert_same_bits(synced_state_dict(view, spec), view)  # synced weights come back unchanged


def test_synced_view_with_reset_bn_and_a_missing_tensor():
    state = train(mlp_config(epochs=1, steps=2), progress=False, log=quiet)
    weights = {name: t for name, t in state.saved_state.items() if name != "layers.3.weight"}
    with pytest.raises(SpecError) as error:
        synced_state_dict(weights, state.spec)
    assert str(error.value) == "init spec names tensor 'layers.3.weight', which the state dict does not have"
    bn = {"bn.weight": torch.full((2,), 3.0), "bn.bias": torch.full((2,), 4.0), "bn.running_mean": torch.ones(2),
          "bn.running_var": torch.ones(2), **state.saved_state}
    view = synced_state_dict(bn, state.spec, reset_bn=True)
    assert torch.equal(view["bn.weight"], torch.ones(2)) and torch.equal(view["bn.bias"], torch.zeros(2))
    assert torch.equal(view["bn.running_mean"], torch.ones(2)) and torch.equal(bn["bn.weight"], torch.full((2,), 3.0))


def test_a_final_checkpoint_resumes_with_its_optimizer(tmp_path):
    first = train(mlp_config(epochs=1), progress=False, log=quiet)
    save_checkpoint(first, tmp_path / "model.pt")
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["synced"] is True and ckpt["resume"]["epoch"] == 1
    for name, tensor in ckpt["state_dict"].items():  # keep="last": written once, shared by both entries
        assert tensor.untyped_storage().data_ptr() == ckpt["resume"]["state_dict"][name].untyped_storage().data_ptr()

    logged = []
    second = train(mlp_config(epochs=2), progress=False, log=logged.append,
                   resume=resume_from_checkpoint(tmp_path / "model.pt"))
    assert logged[0]["optimizer"] == "restored" and logged[0]["after_epoch"] == 1
    assert [record.get("epoch") for record in second.metrics] == [1, 2, None]  # the first final record is dropped
    assert second.metrics[-1]["steps"] == 20 and second.metrics[-1]["syncs"] == first.metrics[-1]["syncs"] + 4


def test_weights_only_resume_has_a_fresh_optimizer_and_says_so():
    """What the CLI builds from a decoded .pc file: weights and spec, nothing else."""
    first = train(mlp_config(epochs=1), progress=False, log=quiet)
    logged = []
    state = train(mlp_config(epochs=1), progress=False, log=logged.append,
                  resume=Resume(state_dict=first.saved_state, spec=first.spec))
    assert logged[0] == {"resumed": True, "after_epoch": 0, "at_step": 0, "optimizer": "fresh",
                         "random_streams": "fresh"}
    assert state.metrics[0]["epoch"] == 1 and state.synced
    assert state.resume.optimizer["steps"] == 10
    params = dict(state.model.named_parameters())
    for record in state.spec:
        pool = perm.sorted_pool(perm.as_rows(record.regenerate()))
        assert bool(perm.is_row_permutation(params[record.name], pool).all()), record.name


def test_weights_only_resume_counts_on_from_its_metrics_and_moves_the_data_order_on():
    first = train(mlp_config(epochs=1), progress=False, log=quiet)
    resume = weights_only_resume(first.saved_state, first.spec, first.metrics)
    assert (resume.epoch, resume.step, resume.optimizer) == (1, 10, None)
    config = mlp_config(epochs=2)
    with reproducible(torch.device("cpu"), config.seed):
        fresh = start_run(config, Ranks())
        orders = [torch.randperm(4000, generator=fresh.shuffle_rng) for _ in range(2)]
        resumed = start_run(config, Ranks(), resume)
        assert torch.equal(torch.randperm(4000, generator=resumed.shuffle_rng), orders[1])  # epoch 2's order
        assert resumed.optimizer.steps == 10
    state = train(config, progress=False, log=quiet, resume=resume)
    assert [record.get("epoch") for record in state.metrics] == [1, 2, None]


def test_a_checkpoint_without_a_resume_record_resumes_as_weights_only(tmp_path):
    first = train(mlp_config(epochs=1), progress=False, log=quiet)
    save_checkpoint(first, tmp_path / "model.pt")
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    old = {key: ckpt[key] for key in ("state_dict", "init", "config", "metrics")}  # as written before resume
    torch.save(old, tmp_path / "old.pt")
    resume = resume_from_checkpoint(tmp_path / "old.pt")
    assert resume.optimizer is None and resume.generators is None and (resume.epoch, resume.step) == (1, 10)
    assert_same_bits(resume.state_dict, ckpt["state_dict"])


# ---------------------------------------------------------------- what a resume refuses

def test_no_epochs_left():
    first = train(mlp_config(epochs=1), progress=False, log=quiet)
    with pytest.raises(SpecError) as error:
        train(mlp_config(epochs=1), progress=False, log=quiet, resume=first.resume)
    assert str(error.value) == ("--resume: the checkpoint is at epoch 1 (step 10), this run asks for epochs=1 "
                                "steps=None: ask for more epochs or steps to continue")


def test_settings_that_must_match():
    first = train(mlp_config(epochs=1), progress=False, log=quiet)
    with pytest.raises(SpecError) as error:
        train(mlp_config(batch_size=200, lr=0.1), progress=False, log=quiet, resume=first.resume)
    assert str(error.value) == (
        "--resume: the checkpoint was trained with batch_size=400, this run batch_size=200; lr=None, this run "
        "lr=0.1: continue with the checkpoint's settings (only epochs, steps, save_every, device, data_dir may "
        "change)")


def test_a_spec_from_another_seed():
    first = train(mlp_config(epochs=1, seed=1), progress=False, log=quiet)
    with pytest.raises(SpecError) as error:
        train(mlp_config(), progress=False, log=quiet, resume=Resume(state_dict=first.saved_state, spec=first.spec))
    assert str(error.value) == (
        "--resume: the checkpoint's init spec is not the one this run draws (tensor 'layers.1.weight': seed 1 "
        "dist he_uniform vs seed 0 dist he_uniform): resume with the checkpoint's model, seed and dist")


def test_weights_that_do_not_fit():
    first = train(mlp_config(epochs=1), progress=False, log=quiet)
    weights = {name: t for name, t in first.saved_state.items() if name != "layers.5.bias"}
    with pytest.raises(SpecError) as error:
        train(mlp_config(), progress=False, log=quiet, resume=Resume(state_dict=weights, spec=first.spec))
    assert str(error.value) == ("--resume: the checkpoint's weights do not fit the model: Error(s) in loading "
                                "state_dict for MLP: Missing key(s) in state_dict: \"layers.5.bias\".")


def test_save_every_needs_a_path():
    with pytest.raises(SpecError) as error:
        train(mlp_config(save_every=1), progress=False, log=quiet)
    assert str(error.value) == "save_every=1 needs a checkpoint_path to write to"


def test_files_that_are_not_resume_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match=r"junk.pt is not a weights-only torch checkpoint: "):
        resume_from_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(FormatError) as error:
        resume_from_checkpoint(tmp_path / "plain.pt")
    assert str(error.value) == (f"{tmp_path / 'plain.pt'} is not a permcodec training checkpoint: expected a dict "
                                f"with 'state_dict' and 'init' entries")
    first = train(mlp_config(epochs=1, steps=1), progress=False, log=quiet)
    save_checkpoint(first, tmp_path / "model.pt")
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    del ckpt["resume"]["generators"]
    torch.save(ckpt, tmp_path / "cut.pt")
    with pytest.raises(FormatError) as error:
        resume_from_checkpoint(tmp_path / "cut.pt")
    assert str(error.value) == (f"{tmp_path / 'cut.pt'}: 'resume' must be a dict with keys ['epoch', 'generators', "
                                f"'optimizer', 'state_dict', 'step'], found ['epoch', 'optimizer', 'state_dict', "
                                f"'step']")
    ckpt["resume"]["generators"], ckpt["resume"]["epoch"] = {}, -1
    torch.save(ckpt, tmp_path / "negative.pt")
    with pytest.raises(FormatError) as error:
        resume_from_checkpoint(tmp_path / "negative.pt")
    assert str(error.value) == f"{tmp_path / 'negative.pt'}: resume epoch must be a non-negative integer, found -1"


def test_random_streams_of_another_number_of_ranks():
    first = train(mlp_config(epochs=1, steps=1), progress=False, log=quiet)
    states = dict(first.resume.generators, augment=first.resume.generators["augment"] * 2)
    with reproducible(torch.device("cpu"), 0):
        run = start_run(mlp_config(), Ranks())
        with pytest.raises(SpecError) as error:
            restore_generators(run, states)
    assert str(error.value) == ("--resume: the checkpoint holds the random streams of 2 rank(s), this run has 1: "
                                "resume with the same number of processes")


def test_config_from_dict():
    saved = dataclasses.asdict(mlp_config(save_every=2))
    assert config_from_dict(saved) == mlp_config(save_every=2)
    assert config_from_dict({"model": "mlp"}) == TrainConfig(model="mlp")  # older checkpoints lack newer fields
    with pytest.raises(SpecError) as error:
        config_from_dict({**saved, "warp_drive": True, "flux": 1})
    assert str(error.value) == "checkpoint config has fields this version does not know: flux, warp_drive"


def test_gather_from_ranks_exchanges_through_the_device(monkeypatch):
    calls = []

    def fake_all_gather(outputs, tensor, group=None, async_op=False):
        calls.append(tensor.device)
        for rank, out in enumerate(outputs):
            out.copy_(tensor + rank)

    monkeypatch.setattr(torch.distributed, "all_gather", fake_all_gather)
    gathered = gather_from_ranks(torch.tensor([1, 2], dtype=torch.uint8), Ranks(rank=0, world=2), torch.device("cpu"))
    assert [g.tolist() for g in gathered] == [[1, 2], [2, 3]] and calls == [torch.device("cpu")]
    assert distributed.gather_from_ranks(torch.ones(1), Ranks(), torch.device("cpu"))[0].tolist() == [1.0]


# ---------------------------------------------------------------- reproducible runs

def test_two_runs_give_the_same_bits_and_leave_the_process_as_it_was(cifar_dir):
    in_a_child(two_runs_give_the_same_bits_and_leave_the_process_as_it_was, cifar_dir)


def two_runs_give_the_same_bits_and_leave_the_process_as_it_was(cifar_dir):
    config = conv2_config(cifar_dir, epochs=2)
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    deterministic = []
    first = train(config, progress=False,
                  log=lambda record: deterministic.append(torch.are_deterministic_algorithms_enabled()))
    assert all(deterministic) and not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.get_rng_state(), rng_before)  # the run's seeding did not touch the caller's stream
    second = train(config, progress=False, log=quiet)
    assert_same_run(second, first)


def test_the_process_keeps_its_settings_when_a_run_fails():
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pytest.raises(Interrupted):
            train(mlp_config(epochs=2), progress=False, log=stop_at_epoch(1))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


DDP_SCRIPT = """
import os, sys
from permcodec.train.config import TrainConfig
from permcodec.train.loop import save_checkpoint, train
from permcodec.train.resume import resume_from_checkpoint
out, resume_path = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
config = TrainConfig(model="mlp", epochs=3, batch_size=400, k=3, device="cpu", save_every=2)
resume = resume_from_checkpoint(resume_path) if resume_path else None
state = train(config, progress=False, log=lambda record: None, resume=resume, checkpoint_path=out + ".mid.pt")
if os.environ["RANK"] == "0":
    save_checkpoint(state, out)
"""


def launch_two_ranks(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               *map(str, args)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:  # torchrun's --standalone port can be taken between its choice and its use
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_ranks_resume_on_the_same_bits(tmp_path):
    """Under torchrun each rank has its own augmentation stream: the checkpoint gathers them all."""
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT)
    launch_two_ranks(script, tmp_path / "straight.pt")
    mid = torch.load(tmp_path / "straight.pt.mid.pt", weights_only=True)
    augment = mid["resume"]["generators"]["augment"]
    assert mid["resume"]["epoch"] == 2 and len(augment) == 2 and not torch.equal(augment[0], augment[1])
    launch_two_ranks(script, tmp_path / "resumed.pt", tmp_path / "straight.pt.mid.pt")
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for key in ("state_dict", "resume", "synced"):
        assert_same_bits(resumed[key], straight[key], key)
    assert without_seconds(resumed["metrics"]) == without_seconds(straight["metrics"])
