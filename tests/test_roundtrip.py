"""Round trips: a decoded file encodes back to the same bytes; a .pc gives back its init spec."""

import json
import subprocess
import sys

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import permcodec
from permcodec import FormatError, perm
from permcodec.decoded_files import SAFETENSORS_INIT_KEY, SAFETENSORS_ORDER_KEY, sorted_metadata
from permcodec.cli import main
from permcodec.format import schemes

METADATA = {"permcodec.config": json.dumps({"model": "net", "lr": 0.003}), "zeta": "last", "alpha": "first"}


# init_ arguments of each kind of model: whole rows, block-local permutations, level pools in blocks
KINDS = {"rows": {}, "blocks": {"block": 8}, "levels": {"dist": "levels", "num_levels": 4, "block": 16,
                                                        "block_layout": "contiguous"}}


def trained_model(seed: int = 4, kind: str = "rows") -> nn.Module:
    """A small net whose permuted weights are each row's (or block's) initial values in a random order, as
    LaPerm leaves them, with a BatchNorm's buffers and an unpermuted bias stored raw."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    spec = permcodec.init_(model, seed=seed, **KINDS[kind])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for record in spec:
            params[record.name].copy_(perm.pools_of(record).sync(torch.rand(record.shape)))
        model[1].running_mean.uniform_()
    return model


@pytest.fixture(scope="module", params=list(KINDS))
def originals(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("originals")
    model = trained_model(kind=request.param)
    paths = {}
    for level in schemes.LEVELS:
        paths[level] = folder / f"{level}.pc"
        permcodec.save(model, paths[level], level=level, metadata=METADATA)
    return model, paths


def bits(state: dict) -> dict:
    return {name: (t.dtype, tuple(t.shape), permcodec.codec.tensor_bytes(t)) for name, t in state.items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("level", list(schemes.LEVELS))
def test_decode_then_encode_writes_the_same_bytes(tmp_path, originals, suffix, level):
    model, paths = originals
    decoded = tmp_path / f"decoded{suffix}"
    again = tmp_path / "again.pc"
    assert main(["decode", str(paths[level]), "-o", str(decoded), "-q"]) == 0
    assert main(["encode", str(decoded), "-o", str(again), "--level", level, "-q"]) == 0
    assert again.read_bytes() == paths[level].read_bytes()
    assert bits(permcodec.load(again)) == bits(model.state_dict())


def test_decoded_safetensors_carry_spec_order_and_metadata_in_sorted_keys(tmp_path, originals):
    model, paths = originals
    out = tmp_path / "d.safetensors"
    assert main(["decode", str(paths["default"]), "-o", str(out), "-q"]) == 0
    with safetensors.safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata[SAFETENSORS_ORDER_KEY]) == list(model.state_dict())
    assert permcodec.InitSpec.from_dict(json.loads(metadata[SAFETENSORS_INIT_KEY])) == permcodec.load_spec(
        paths["default"])
    assert {k: v for k, v in metadata.items() if k not in (SAFETENSORS_INIT_KEY, SAFETENSORS_ORDER_KEY)} == METADATA


def test_decoded_pt_is_a_permcodec_checkpoint(tmp_path, originals):
    model, paths = originals
    out = tmp_path / "d.pt"
    assert main(["decode", str(paths["fast"]), "-o", str(out), "-q"]) == 0
    checkpoint = torch.load(out, weights_only=True)
    assert set(checkpoint) == {"state_dict", "init", "metadata"}
    assert checkpoint["metadata"] == METADATA
    assert list(checkpoint["state_dict"]) == list(model.state_dict())
    assert permcodec.InitSpec.from_dict(checkpoint["init"]) == permcodec.load_spec(paths["fast"])


def test_load_spec_and_init_spec_give_the_spec_of_the_permuted_tensors(originals):
    model, paths = originals
    spec = permcodec.load_spec(paths["max"])
    assert spec == permcodec.init.modules.attached_spec(model)
    with permcodec.safe_open(paths["max"]) as f:
        assert f.init_spec() == spec


def test_load_into_attaches_the_spec_so_save_works(tmp_path, originals):
    model, paths = originals
    fresh = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    permcodec.load_into(fresh, paths["default"])
    permcodec.save(fresh, tmp_path / "resaved.pc", metadata=METADATA)
    assert (tmp_path / "resaved.pc").read_bytes() == paths["default"].read_bytes()


def test_metadata_order_does_not_change_the_bytes():
    model = trained_model(seed=9)
    forward = permcodec.encode(model, metadata={"a": "1", "b": "2"})
    backward = permcodec.encode(model, metadata={"b": "2", "a": "1"})
    assert forward == backward
    assert permcodec.PCFile(forward).metadata() == {"a": "1", "b": "2"}


@pytest.mark.parametrize("order", ['["0.weight"]', "not json", '{"a": 1}'])
def test_a_bad_order_key_is_refused(tmp_path, originals, order):
    model, _ = originals
    spec = permcodec.init.modules.attached_spec(model)
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                                metadata={SAFETENSORS_INIT_KEY: json.dumps(spec.to_dict()),
                                          SAFETENSORS_ORDER_KEY: order})
    with pytest.raises(FormatError, match="metadata 'permcodec.order' (must list each tensor|is not JSON)"):
        permcodec.checkpoints.read_model(path)


DECODE_TWICE = """
import sys
from permcodec.cli import main
main(["decode", sys.argv[1], "-o", sys.argv[2], "-q"])
"""


def test_decoding_twice_writes_the_same_safetensors_bytes(tmp_path, originals):
    """safetensors writes its metadata in hash order, which differs between processes; permcodec sorts it."""
    _, paths = originals
    outputs = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for out in outputs:
        subprocess.run([sys.executable, "-c", DECODE_TWICE, str(paths["default"]), str(out)], check=True,
                       timeout=120)
    assert len({out.read_bytes() for out in outputs}) == 1
    data = outputs[0].read_bytes()
    metadata = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    assert list(metadata) == sorted(metadata)
    assert bits(safetensors.torch.load_file(outputs[0])) == bits(permcodec.load(paths["default"]))


def test_sorting_metadata_keeps_other_safetensors_bytes():
    data = safetensors.torch.save({"b": torch.zeros(2), "a": torch.ones(3, dtype=torch.float16)},
                                  metadata={"z": "1", "é": 'a"\\\n\u2028', "a": "x"})
    canonical = sorted_metadata(data)
    assert len(canonical) == len(data) and canonical[-14:] == data[-14:]
    assert bits(safetensors.torch.load(canonical)) == bits(safetensors.torch.load(data))
    header = json.loads(canonical[8:8 + int.from_bytes(canonical[:8], "little")])
    assert list(header["__metadata__"]) == ["a", "z", "é"] and header["__metadata__"]["é"] == 'a"\\\n\u2028'
    assert sorted_metadata(safetensors.torch.save({"a": torch.zeros(1)})) == safetensors.torch.save(
        {"a": torch.zeros(1)})
