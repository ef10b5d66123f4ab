"""CPU vs CUDA: every distribution, seed and size gives identical bits on both devices.

Skipped without a CUDA device (CI has none); run on a GPU machine with
`pytest tests/test_cuda.py`.
"""

import pytest
import torch

from permcodec import perm
from permcodec.init import distributions as D
from permcodec.init import rng

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DIST_ARGS = {
    "uniform": dict(low=-0.5, high=2.0), "normal": dict(mean=0.1, std=0.7), "he_uniform": {},
    "glorot_uniform": {}, "he_normal": {}, "glorot_normal": {},
    "sparse": dict(density=0.3), "shared": dict(value=0.125, density=0.08),
}
SEEDS = [0, 1, 12345, 2**32 + 7, 2**64 - 1]
SIZES = [1, 1000, 100_003, 10_000_000]


def test_philox_blocks_match():
    for seed in SEEDS:
        cpu = rng.philox_blocks(seed, 3, 1, 2**40, 100_000)
        assert torch.equal(cpu, rng.philox_blocks(seed, 3, 1, 2**40, 100_000, device="cuda").cpu())


@pytest.mark.parametrize("dist", list(DIST_ARGS))
@pytest.mark.parametrize("size", SIZES)
def test_distribution_bits_match(dist, size):
    params = D.make_params(dist, (256, 784), **DIST_ARGS[dist])
    for stream, seed in enumerate(SEEDS):
        cpu = D.sample(dist, params, seed, stream, 0, size)
        gpu = D.sample(dist, params, seed, stream, 0, size, device="cuda").cpu()
        assert torch.equal(cpu.view(torch.int32), gpu.view(torch.int32)), (dist, seed, size)


def test_ranks_and_sync_match():
    pool_rows = D.sample("sparse", D.make_params("sparse", (64, 3, 3, 3), density=0.5), 1, 0, 0, 64 * 27)
    pool = perm.sorted_pool(pool_rows.reshape(64, 27))
    trained = torch.randn(64, 3, 3, 3)
    trained[:, 0] = 0.0  # ties
    cpu = perm.sync(trained, pool)
    gpu = perm.sync(trained.cuda(), pool.cuda()).cpu()
    assert torch.equal(cpu.view(torch.int32), gpu.view(torch.int32))
    assert torch.equal(perm.row_ranks(perm.as_rows(trained)), perm.row_ranks(perm.as_rows(trained).cuda()).cpu())


@pytest.mark.parametrize("layout", ["contiguous", "strided", "shuffled"])
def test_level_pools_and_block_sync_match(layout):
    from permcodec.init.initspec import TensorInit
    from permcodec.rows import BlockLayout

    params = D.make_params("levels", (64, 3, 5, 5), num_levels=8)
    record = TensorInit("w", (64, 3, 5, 5), 5, 2, "levels", params, BlockLayout(layout, 16))
    cpu_pool, gpu_pool = record.regenerate(), record.regenerate(device="cuda").cpu()
    assert torch.equal(cpu_pool.view(torch.int32), gpu_pool.view(torch.int32))
    trained = torch.randn(64, 3, 5, 5)
    cpu = perm.pools_of(record).sync(trained)
    gpu = perm.pools_of(record, "cuda").sync(trained.cuda()).cpu()
    assert torch.equal(cpu.view(torch.int32), gpu.view(torch.int32))


def test_codec_decodes_identically_on_cpu_and_cuda():
    from pathlib import Path

    from permcodec import codec

    for path in sorted((Path(__file__).parent / "fixtures").glob("*.pc")):
        cpu = codec.load(path)
        gpu = codec.load(path, device="cuda")
        assert all(t.device.type == "cuda" for t in gpu.values())
        for name, tensor in cpu.items():
            assert codec.tensor_bytes(tensor) == codec.tensor_bytes(gpu[name]), (path.name, name)


def test_codec_round_trip_on_cuda_for_every_distribution():
    from torch import nn

    import permcodec
    from permcodec import codec

    for dist, kwargs in DIST_ARGS.items():
        model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Linear(300, 50))
        spec = permcodec.init_(model, 77, dist=dist, **kwargs)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in spec:
                    rows = perm.as_rows(param)
                    order = torch.argsort(torch.rand(rows.shape), dim=1)
                    param.copy_(torch.gather(rows, 1, order).reshape(param.shape))
        for scheme in ("delta", "exact", "multiset", "sparse"):
            gpu = permcodec.decode(permcodec.encode(model, scheme=scheme), device="cuda")
            for name, tensor in model.state_dict().items():
                assert codec.tensor_bytes(tensor) == codec.tensor_bytes(gpu[name]), (dist, scheme, name)
