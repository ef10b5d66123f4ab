"""The .pc codec: bit-exact round trips, golden fixtures, lazy access, and one test per error path."""

import copy
import hashlib
import io
import json
import struct
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import permcodec
from permcodec import (
    FormatError,
    IntegrityError,
    LimitError,
    NotAPermutationError,
    SpecError,
    UnsupportedVersionError,
    codec,
    encoder,
    init_,
    perm,
)
from permcodec.format import container, indexcode, schemes, zstdframe
from permcodec.format.container import Limits
from permcodec.init.initspec import InitSpec, TensorInit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import make_fixtures  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DIGESTS = json.loads((FIXTURES / "fixtures.json").read_text())


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and codec.tensor_bytes(a) == codec.tensor_bytes(b)


def assert_same_state(decoded, state):
    assert list(decoded) == list(state)
    for name, tensor in state.items():
        assert bits_equal(decoded[name], tensor), name


def trained(model, spec, seed=0):
    make_fixtures.permute_rows(model, spec, seed)
    return model


# ---------------------------------------------------------------- golden fixtures

@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_golden_fixture_decodes_to_pinned_hashes(name):
    decoded = permcodec.load(FIXTURES / f"{name}.pc")
    assert {t: hashlib.sha256(codec.tensor_bytes(v)).hexdigest() for t, v in decoded.items()} == DIGESTS[name]


def test_tiny_file_bytes_are_pinned():
    """The encoder reproduces the exact bytes printed in specs/format.md, Appendix A."""
    model, spec = make_fixtures.tiny_linear()
    assert permcodec.encode(model, spec, scheme="delta") == (FIXTURES / "tiny_linear.pc").read_bytes()
    assert permcodec.encode(model, spec, scheme="exact") == (FIXTURES / "tiny_exact.pc").read_bytes()


def test_encoding_is_deterministic():
    model = nn.Linear(30, 7)
    trained(model, init_(model, 1), 5)
    assert permcodec.encode(model) == permcodec.encode(model)


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("layer", [nn.Linear(17, 5), nn.Conv1d(3, 4, 5), nn.Conv2d(3, 6, (2, 3)),
                                   nn.Conv3d(2, 3, 2)], ids=["linear", "conv1d", "conv2d", "conv3d"])
def test_round_trip_every_layer_type_with_bias_permuted(layer):
    spec = init_(layer, 3, bias=True)  # the bias is a 1-D tensor: one row
    trained(layer, spec, 1)
    decoded = permcodec.decode(permcodec.encode(layer))
    assert_same_state(decoded, layer.state_dict())
    assert all(r["kind"] == "permuted" for r in permcodec.PCFile(io.BytesIO(permcodec.encode(layer))).header["tensors"])


@pytest.mark.parametrize("dist,kwargs", [
    ("uniform", dict(low=-1.0, high=2.0)), ("normal", dict(mean=0.1, std=0.5)), ("he_uniform", {}),
    ("glorot_uniform", {}), ("he_normal", {}), ("glorot_normal", {}),
    ("sparse", dict(density=0.3)), ("sparse", dict(density=0.05, base="normal")),
    ("shared", dict(value=0.25, density=0.08)), ("shared", dict(value=-3.0, density=1.0)),
])
def test_round_trip_every_distribution(dist, kwargs):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(40, 9))
    spec = init_(model, 42, dist=dist, **kwargs)
    trained(model, spec, 2)
    assert_same_state(permcodec.decode(permcodec.encode(model)), model.state_dict())


ALL_DISTRIBUTIONS = [
    ("uniform", dict(low=-1.0, high=2.0)), ("normal", dict(mean=0.1, std=0.5)), ("he_uniform", {}),
    ("glorot_uniform", {}), ("he_normal", {}), ("glorot_normal", {}),
    ("sparse", dict(density=0.3)), ("shared", dict(value=0.25, density=0.08)),
]


def every_layer_type():
    return nn.Sequential(nn.Linear(17, 5), nn.Conv1d(3, 4, 5), nn.Conv2d(3, 6, (2, 3)), nn.Conv3d(2, 3, 2))


@pytest.mark.parametrize("dist,kwargs", ALL_DISTRIBUTIONS, ids=[d for d, _ in ALL_DISTRIBUTIONS])
@pytest.mark.parametrize("scheme", [None, *schemes.SCHEMES])
@pytest.mark.parametrize("level", list(schemes.LEVELS))
def test_round_trip_every_scheme_level_layer_type_and_distribution(level, scheme, dist, kwargs):
    model = every_layer_type()
    spec = init_(model, 12, dist=dist, bias=True, **kwargs)
    trained(model, spec, 6)
    data = permcodec.encode(model, level=level, scheme=scheme)
    assert_same_state(permcodec.decode(data), model.state_dict())
    used = {r["scheme"] for r in permcodec.PCFile(io.BytesIO(data)).header["tensors"]}
    assert used == {scheme} if scheme else used <= set(schemes.SCHEMES)


def test_the_numpy_backend_decodes_every_scheme_to_the_same_bits(monkeypatch):
    model = every_layer_type()
    spec = init_(model, 13, dist="sparse", density=0.4, bias=True)
    trained(model, spec, 7)
    files = [permcodec.encode(model, scheme=scheme, level="fast") for scheme in schemes.SCHEMES]
    monkeypatch.setenv("PERMCODEC_BACKEND", "numpy")
    assert [permcodec.encode(model, scheme=scheme, level="fast") for scheme in schemes.SCHEMES] == files
    for data in files:
        assert_same_state(permcodec.decode(data), model.state_dict())


def chosen_schemes(data):
    return [r["scheme"] for r in permcodec.PCFile(io.BytesIO(data)).header["tensors"] if r["kind"] == "permuted"]


def test_levels_choose_the_smallest_scheme_they_try():
    untouched = nn.Linear(300, 20)
    init_(untouched, 1)
    assert chosen_schemes(permcodec.encode(untouched)) == ["delta"]  # every delta is zero
    assert chosen_schemes(permcodec.encode(untouched, level="fast")) == ["exact"]  # fast never tries delta
    shuffled = nn.Linear(300, 20)
    trained(shuffled, init_(shuffled, 1), 3)
    assert chosen_schemes(permcodec.encode(shuffled)) == ["exact"]
    sparse = nn.Linear(300, 20)
    trained(sparse, init_(sparse, 1, dist="sparse", density=0.3), 3)
    assert chosen_schemes(permcodec.encode(sparse)) == ["sparse"]
    assert chosen_schemes(permcodec.encode(sparse, level="fast")) == ["sparse"]
    shared = nn.Linear(300, 20)
    trained(shared, init_(shared, 1, dist="shared", value=0.5, density=0.3), 3)
    assert chosen_schemes(permcodec.encode(shared)) == ["multiset"]


def counting_delta_encodes(monkeypatch) -> list:
    calls = []
    real = schemes.DELTA.encode
    monkeypatch.setattr(type(schemes.DELTA), "encode", lambda self, tensor, level: calls.append(1) or real(tensor, level))
    return calls


def test_default_skips_delta_only_where_its_entropy_says_it_cannot_win(monkeypatch):
    calls = counting_delta_encodes(monkeypatch)
    shuffled = nn.Linear(300, 20)
    trained(shuffled, init_(shuffled, 1), 3)  # random row permutations: delta's codes carry more than log2(n!)
    assert chosen_schemes(permcodec.encode(shuffled)) == ["exact"] and calls == []
    assert chosen_schemes(permcodec.encode(shuffled, level="max")) == ["exact"] and calls == [1]  # max always tries
    untouched = nn.Linear(300, 20)
    init_(untouched, 1)
    assert chosen_schemes(permcodec.encode(untouched)) == ["delta"] and calls == [1, 1]  # zero entropy: tried
    assert chosen_schemes(permcodec.encode(shuffled, scheme="delta")) == ["delta"]  # a forced scheme is encoded


def test_the_delta_floor_is_the_order_0_entropy_of_the_codes():
    from permcodec.format.schemes.delta import entropy_bits

    assert entropy_bits(np.array([0, 0, 0, 0])) == 0.0
    assert entropy_bits(np.array([0, 1, 2, 3])) == 8.0  # four equally likely codes: 2 bits each
    assert entropy_bits(np.array([5, 5, 9, 9, 9, 9, 1, 1])) == 12.0  # 1/4, 1/2, 1/4: 1.5 bits each
    assert entropy_bits(np.array([], dtype=np.int64)) == 0.0
    assert schemes.LEVELS["default"].delta_floor == 0.9 and schemes.LEVELS["max"].delta_floor is None


def test_max_takes_multiset_only_where_it_saves_more_than_a_thousandth():
    few_ties = nn.Linear(4096, 8)
    spec = init_(few_ties, 3, dist="uniform", low=1.0, high=1.125)  # 2^20 float32 values: a few collide per row
    trained(few_ties, spec, 5)
    tensor = schemes.RowsToEncode(perm.SortedRows.of(perm.as_rows(few_ties.weight.detach())),
                                  encoder.initial_rows(spec["weight"]))
    assert 0 < schemes.multiset_gain(tensor) < 0.001
    assert chosen_schemes(permcodec.encode(few_ties, level="max")) == ["exact"]
    sparse = nn.Linear(300, 20)
    trained(sparse, init_(sparse, 1, dist="sparse", density=0.3), 3)
    assert chosen_schemes(permcodec.encode(sparse, level="max")) == ["sparse"]


def test_max_is_never_larger_than_default_and_near_the_bound():
    model = nn.Linear(512, 64)
    spec = init_(model, 2)
    trained(model, spec, 4)
    sizes = {level: len(permcodec.encode(model, level=level)) for level in schemes.LEVELS}
    assert sizes["max"] <= sizes["default"] <= sizes["fast"]
    bound = perm.permutation_bound_bits(encoder.initial_rows(spec["weight"]).pool())
    weight = permcodec.PCFile(io.BytesIO(permcodec.encode(model, level="max"))).record("weight")["length"]
    assert 8 * weight < 1.001 * bound


def test_unknown_level_and_scheme_are_named():
    model = nn.Linear(3, 2)
    init_(model, 0)
    with pytest.raises(SpecError, match="unknown level 'huge'; choose one of fast, default, max"):
        permcodec.encode(model, level="huge")
    with pytest.raises(SpecError, match="unknown scheme 'lehmer'; choose one of delta, exact, multiset, sparse$"):
        permcodec.encode(model, scheme="lehmer")


def test_float32_ties_in_a_dense_pool():
    model = nn.Linear(200, 4)
    spec = init_(model, 1, dist="uniform", low=1.0, high=1.0000005)  # a handful of distinct float32 values
    assert perm.sorted_pool(perm.as_rows(model.weight.detach())).unique().numel() < 10
    trained(model, spec, 3)
    assert_same_state(permcodec.decode(permcodec.encode(model)), model.state_dict())


def test_untrained_model_costs_almost_nothing():
    model = nn.Linear(1000, 100)
    init_(model, 0)
    data = permcodec.encode(model)
    assert len(data) < 3000  # 100k weights, all deltas zero


def test_raw_tensors_are_lossless():
    state, spec = make_fixtures.raw_dtypes()
    assert_same_state(permcodec.decode(permcodec.encode(state, spec)), state)


def test_module_checkpoint_dict_and_state_dict_forms():
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
    spec = init_(model, 9)
    trained(model, spec)
    from_module = permcodec.encode(model)
    assert permcodec.encode({"state_dict": model.state_dict(), "init": spec.to_dict()}) == from_module
    assert permcodec.encode(model.state_dict(), init=spec) == from_module


def test_save_load_and_load_into(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    spec = init_(model, 4)
    trained(model, spec)
    permcodec.save(model, tmp_path / "m.pc")
    assert_same_state(permcodec.load(tmp_path / "m.pc"), model.state_dict())
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    permcodec.load_into(fresh, tmp_path / "m.pc")
    assert_same_state(fresh.state_dict(), model.state_dict())


class CountingStream(io.BytesIO):
    """Records the size of every read after the header."""

    def __init__(self, data):
        super().__init__(data)
        self.reads = []

    def read(self, size=-1):
        out = super().read(size)
        self.reads.append(len(out))
        return out


def test_safe_open_reads_one_tensor_lazily():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 3))
    spec = init_(model, 8)
    trained(model, spec)
    data = bytearray(permcodec.encode(model))
    data[-1] ^= 0xFF  # damage only the last section: 1.weight's (the biases are a group, where 0.bias was)
    stream = CountingStream(bytes(data))
    f = permcodec.PCFile(stream)
    assert f.keys() == ["0.weight", "0.bias", "1.weight", "1.bias"]
    header_reads = len(stream.reads)
    assert bits_equal(f.get_tensor("0.weight"), model[0].weight.detach())
    assert stream.reads[header_reads:] == [f.record("0.weight")["length"]]
    assert bits_equal(f.get_tensor("1.bias"), model[1].bias.detach())
    assert stream.reads[header_reads + 1:] == [f.header["tensors"][1]["length"]]  # the group's section alone
    with pytest.raises(IntegrityError, match="tensor '1.weight': section CRC-32 mismatch"):
        f.get_tensor("1.weight")


def test_safe_open_on_a_path(tmp_path):
    model, spec = make_fixtures.tiny_linear()
    permcodec.save(model, tmp_path / "m.pc")
    with permcodec.safe_open(tmp_path / "m.pc") as f:
        assert bits_equal(f.get_tensor("bias"), model.bias.detach())
        with pytest.raises(KeyError, match="no tensor 'nope' in this file"):
            f.get_tensor("nope")


def test_metadata_is_carried():
    model = nn.Linear(3, 2)
    spec = init_(model, 0)
    f = permcodec.PCFile(io.BytesIO(permcodec.encode(model, spec, metadata={"note": "hi"})))
    assert f.metadata() == {"note": "hi"}


def test_decode_with_hash_check_off():
    model, spec = make_fixtures.tiny_linear()
    assert_same_state(permcodec.decode(permcodec.encode(model), verify=False), model.state_dict())


# ---------------------------------------------------------------- encoder errors

def test_not_a_permutation_names_tensor_and_row():
    model = nn.Sequential(nn.Linear(6, 4))
    init_(model, 1)
    with torch.no_grad():
        model[0].weight[2, 3] += 1.0
    with pytest.raises(NotAPermutationError) as err:
        permcodec.encode(model)
    assert str(err.value) == ("tensor '0.weight': row 2 is not a permutation of its initial values (its values "
                              "differ from the initial values of that row); did training end on LaPerm.sync()? "
                              "To store it losslessly anyway use raw_fallback=True (CLI: --raw-fallback)")


def test_raw_fallback_stores_losslessly_and_reports():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    spec = init_(model, 1)
    with torch.no_grad():
        model[1].weight[1, 0] = 5.0
    spec_before = copy.deepcopy(spec.to_dict())
    fallbacks = []
    data = permcodec.encode(model, raw_fallback=True, fallbacks=fallbacks)
    assert fallbacks == [codec.Fallback("1.weight", 1, "its values differ from the initial values of that row")]
    assert_same_state(permcodec.decode(data), model.state_dict())
    assert spec.to_dict() == spec_before  # the spec is unchanged; only the storage kind differs
    f = permcodec.PCFile(io.BytesIO(data))
    kinds = {name: f.record(name)["kind"] for name in f.keys()}
    assert kinds == {"0.weight": "permuted", "0.bias": "raw", "1.weight": "raw", "1.bias": "raw"}
    assert [r["kind"] for r in f.header["tensors"]] == ["permuted", "group"]  # the raw fallback is small too
    assert f.header["tensors"][1]["names"] == ["0.bias", "1.weight", "1.bias"]


def test_wrong_dtype_is_not_a_permutation():
    model = nn.Linear(4, 2)
    spec = init_(model, 1)
    with pytest.raises(NotAPermutationError, match="dtype is torch.float64"):
        permcodec.encode({"weight": model.weight.detach().double(), "bias": model.bias.detach()}, spec)


def test_encode_without_spec():
    with pytest.raises(SpecError, match="no init spec: pass init="):
        permcodec.encode(nn.Linear(2, 2))


def test_spec_names_a_missing_tensor():
    spec = init_(nn.Linear(2, 2), 0)
    with pytest.raises(SpecError, match="init spec names tensor\\(s\\) the state_dict lacks: weight"):
        permcodec.encode({"other": torch.zeros(2)}, spec)


# ---------------------------------------------------------------- decoder errors

def tiny_bytes():
    return (FIXTURES / "tiny_linear.pc").read_bytes()


def repack(mutate_header, data=None):
    """A copy of the tiny file with its header changed and every CRC recomputed."""
    data = data or tiny_bytes()
    _, _, _, length, _ = container.PREAMBLE.unpack(data[:container.PREAMBLE_SIZE])
    header = msgpack.unpackb(data[container.PREAMBLE_SIZE:container.PREAMBLE_SIZE + length])
    sections = data[container.PREAMBLE_SIZE + length:]
    mutate_header(header)
    raw = msgpack.packb(header, use_bin_type=True)
    return container.PREAMBLE.pack(container.MAGIC, 1, 0, len(raw), container.crc32(raw)) + raw + sections


@pytest.mark.parametrize("data,error,message", [
    (b"", FormatError, "not a permcodec file: bad magic"),
    (b"PK\x03\x04 this is a zip file.....", FormatError, "not a permcodec file: bad magic b'PK\\x03\\x04 thi'"),
    (b"\x89PCODEC\n\x01\x00", FormatError, "truncated file: 10 bytes, the preamble alone is 20"),
])
def test_not_a_pc_file(data, error, message):
    with pytest.raises(error) as err:
        permcodec.decode(data)
    assert str(err.value).startswith(message)


def test_wrong_version():
    data = bytearray(tiny_bytes())
    data[8:10] = struct.pack("<H", 2)
    with pytest.raises(UnsupportedVersionError) as err:
        permcodec.decode(bytes(data))
    assert str(err.value) == "format version 2 is not supported (this decoder reads version 1); a newer permcodec " \
                             "may read it"
    data[8:10] = struct.pack("<H", 0)
    with pytest.raises(UnsupportedVersionError) as err:
        permcodec.decode(bytes(data))
    assert str(err.value) == "format version 0 is not supported (this decoder reads version 1)"


def test_an_empty_or_safetensors_file_is_named():
    with pytest.raises(FormatError) as err:
        permcodec.decode(b"")
    assert str(err.value) == "not a permcodec file: bad magic (the file is empty)"
    with pytest.raises(FormatError) as err:
        permcodec.decode(safetensors.torch.save({"w": torch.zeros(2)}))
    assert str(err.value).endswith("; it looks like a safetensors file: 'permcodec encode' turns one named "
                                   "*.safetensors into a .pc file if its metadata holds the init spec "
                                   "('permcodec.init')")
    with pytest.raises(FormatError) as err:  # a text file whose ninth byte is a brace
        permcodec.decode(b"weights {1: 2}\n" * 2)
    assert "safetensors" not in str(err.value)


def test_nonzero_flags():
    data = bytearray(tiny_bytes())
    data[10] = 1
    with pytest.raises(FormatError, match="preamble flags must be 0, found 0x0001"):
        permcodec.decode(bytes(data))


@pytest.mark.parametrize("cut", [25, 300, 449])
def test_truncated_file(cut):
    with pytest.raises(FormatError, match="truncated file"):
        permcodec.decode(tiny_bytes()[:cut])


def test_trailing_bytes():
    with pytest.raises(FormatError, match="3 unexpected bytes after the last section"):
        permcodec.decode(tiny_bytes() + b"abc")


def test_header_crc_mismatch():
    data = bytearray(tiny_bytes())
    data[40] ^= 1
    with pytest.raises(IntegrityError, match="header CRC-32 mismatch"):
        permcodec.decode(bytes(data))


def test_section_crc_mismatch():
    data = bytearray(tiny_bytes())
    data[-3] ^= 0x10
    with pytest.raises(IntegrityError, match="tensor 'bias': section CRC-32 mismatch"):
        permcodec.decode(bytes(data))


def test_hash_mismatch_is_caught():
    def wrong_hash(header):
        header["tensors"][0]["sha256"] = bytes(32)
    with pytest.raises(IntegrityError, match="tensor 'weight': decoded bits do not match the stored SHA-256"):
        permcodec.decode(repack(wrong_hash))


@pytest.mark.parametrize("seed", [8, 9, 10, 11])
def test_wrong_seed_is_never_decoded_silently(seed):
    """Another seed gives other initial ranks: the deltas leave [0, n) or the hash no longer matches."""
    def other_seed(header):
        header["tensors"][0]["init"]["seed"] = seed
    with pytest.raises((FormatError, IntegrityError), match="tensor 'weight': decoded"):
        permcodec.decode(repack(other_seed))


@pytest.mark.parametrize("mutate,error,message", [
    (lambda h: h.update(format="zip"), FormatError, "header format must be 'permcodec', found 'zip'"),
    (lambda h: h.update(version=3), UnsupportedVersionError, "header version 3 is not supported"),
    (lambda h: h.pop("metadata"), FormatError, "header must be a map with keys"),
    (lambda h: h["tensors"][0].update(kind="sparse"), FormatError, "kind must be one of permuted, raw"),
    (lambda h: h["tensors"][0].update(dtype="complex64"), FormatError, "unknown dtype 'complex64'"),
    (lambda h: h["tensors"][0].update(shape=[2, -3]), FormatError, "shape must be a list of non-negative"),
    (lambda h: h["tensors"][0].update(scheme="lehmer"), FormatError, "unknown index scheme 'lehmer'"),
    (lambda h: h["tensors"][0].update(scheme_params={"lanes": 1}), FormatError,
     "scheme 'delta' takes no parameters, found {'lanes': 1}"),
    (lambda h: h["tensors"][0].update(scheme="exact", scheme_params={}), FormatError,
     "scheme 'exact' takes exactly the parameter 'lanes', found {}"),
    (lambda h: h["tensors"][0].update(scheme="exact", scheme_params={"lanes": 1, "x": 0}), FormatError,
     "scheme 'exact' takes exactly the parameter 'lanes'"),
    (lambda h: h["tensors"][0].update(scheme="multiset", scheme_params={"lanes": 0}), FormatError,
     "lanes must be an integer in [1, 2] (the row count), found 0"),
    (lambda h: h["tensors"][0].update(scheme="exact", scheme_params={"lanes": 3}), FormatError,
     "lanes must be an integer in [1, 2] (the row count), found 3"),
    (lambda h: h["tensors"][0].update(scheme="exact", scheme_params={"lanes": True}), FormatError,
     "lanes must be an integer"),
    (lambda h: h["tensors"][0].update(scheme="exact", scheme_params={"lanes": 1}), FormatError,
     "section of 15 bytes cannot hold 1 lane lengths and whole 32-bit words"),
    (lambda h: h["tensors"][0]["init"].update(rng="mt19937"), FormatError, "unknown rng 'mt19937'"),
    (lambda h: h["tensors"][0]["init"].update(dist="beta"), FormatError, "bad init record: tensor 'weight': "
                                                                        "unknown distribution 'beta'"),
    (lambda h: h["tensors"][0].update(offset=1), FormatError, "section offset 1, expected 0"),
    (lambda h: h["tensors"][1].update(name="weight"), FormatError, "tensor name 'weight' appears twice"),
    (lambda h: h["tensors"][1].update(codec="lz4"), FormatError, "unknown raw codec 'lz4'"),
    (lambda h: h["tensors"][1].update(extra=1), FormatError, "a raw record must have keys"),
    # same element count, rows of 2 instead of 3: the stored ranks (up to 2) leave [0, 2)
    (lambda h: h["tensors"][0].update(shape=[3, 2]), FormatError,
     "tensor 'weight': decoded ranks fall outside [0, 2)"),
])
def test_bad_header_fields(mutate, error, message):
    with pytest.raises(error) as err:
        permcodec.decode(repack(mutate))
    assert message in str(err.value)


def test_msgpack_extension_types_are_refused():
    raw = msgpack.packb({"format": msgpack.ExtType(1, b"x")})
    data = container.PREAMBLE.pack(container.MAGIC, 1, 0, len(raw), container.crc32(raw)) + raw
    with pytest.raises(FormatError, match="extension type"):
        permcodec.decode(data)


def test_duplicate_map_keys_are_refused():
    data = tiny_bytes()
    header_length = container.PREAMBLE.unpack(data[:container.PREAMBLE_SIZE])[3]
    raw = data[container.PREAMBLE_SIZE:container.PREAMBLE_SIZE + header_length]
    # "length": 17 of the bias record appears a second time, with another value
    doctored = bytearray(raw.replace(b"\x89\xa4name\xa4bias", b"\x8a\xa6length\x00\xa4name\xa4bias"))
    assert len(doctored) == len(raw) + 8
    data = container.PREAMBLE.pack(container.MAGIC, 1, 0, len(doctored), container.crc32(doctored)) + doctored
    with pytest.raises(FormatError, match="header map holds key 'length' twice"):
        permcodec.decode(bytes(data) + tiny_bytes()[container.PREAMBLE_SIZE + header_length:])


def test_ranks_that_are_not_a_permutation():
    model, spec = make_fixtures.tiny_linear()
    initial = encoder.initial_rows(spec["weight"])
    final_ranks = torch.tensor([[0, 1, 2], [1, 1, 0]])  # row 1 repeats rank 1
    codes = indexcode.zigzag((final_ranks - initial.ranks).reshape(-1).numpy())
    section = zstdframe.compress(indexcode.to_byte_planes(codes, 1))
    bias = encoder.encode_raw(model.bias.detach(), 3)
    records = [encoder.permuted_record("weight", model.weight, spec["weight"], [("delta", {}, b"")]), encoder.raw_record("bias", model.bias)]
    with pytest.raises(FormatError, match="tensor 'weight': decoded ranks of row 1 are not a permutation"):
        permcodec.decode(container.pack(records, [section, bias]))


@pytest.mark.parametrize("field,limit_value", [
    ("max_tensors", 2), ("max_dims", 2), ("max_dim", 3), ("max_tensor_elements", 6), ("max_total_elements", 8),
    ("max_header_bytes", 398),
])
def test_limits_pass_at_the_limit_and_fail_one_below(field, limit_value):
    """The tiny file sits exactly at each of these limits; one less raises LimitError."""
    permcodec.decode(tiny_bytes(), limits=Limits(**{field: limit_value}))
    with pytest.raises(LimitError):
        permcodec.decode(tiny_bytes(), limits=Limits(**{field: limit_value - 1}))


def test_forcing_an_arrangement_scheme_on_rows_longer_than_2_31_is_refused():
    empty = torch.empty(0, 2**31 + 1)
    record = TensorInit.from_dict({"name": "w", "shape": [0, 2**31 + 1], "seed": 1, "stream": 0,
                                   "dist": "uniform", "params": {"low": -1.0, "high": 1.0}})
    spec = InitSpec([record])
    with pytest.raises(SpecError, match=r"scheme 'exact' needs rows of at most 2\^31 elements, found 2147483649"):
        permcodec.encode({"w": empty}, spec, scheme="exact")


# ---------------------------------------------------------------- tools/make_fixtures.py

def run_make_fixtures(monkeypatch, directory, *args):
    monkeypatch.setattr(make_fixtures, "FIXTURES", directory)
    monkeypatch.setattr(sys, "argv", ["make_fixtures.py", *args])
    return make_fixtures.main()


def copy_of_fixtures(tmp_path):
    for path in FIXTURES.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def test_make_fixtures_leaves_the_committed_fixtures_alone(monkeypatch, tmp_path):
    directory = copy_of_fixtures(tmp_path)
    assert run_make_fixtures(monkeypatch, directory) == 0
    committed = {p.name: p.read_bytes() for p in FIXTURES.iterdir()}
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == committed


def test_make_fixtures_refuses_to_overwrite_a_disagreeing_expectation(monkeypatch, tmp_path, capsys):
    directory = copy_of_fixtures(tmp_path)
    table = json.loads((directory / "fixtures.json").read_text())
    table["tiny_linear"]["bias"] = "0" * 64
    (directory / "fixtures.json").write_text(json.dumps(table))
    before = (directory / "fixtures.json").read_bytes()
    assert run_make_fixtures(monkeypatch, directory) == 1
    err = capsys.readouterr().err
    assert "tiny_linear: the decoder disagrees with fixtures.json" in err
    assert f"bias: expected {'0' * 64}, found {DIGESTS['tiny_linear']['bias']}" in err
    assert (directory / "fixtures.json").read_bytes() == before


def test_make_fixtures_adds_a_new_fixture_from_its_source_tensors(monkeypatch, tmp_path):
    directory = copy_of_fixtures(tmp_path)
    (directory / "wide_rows_fast.pc").unlink()
    table = json.loads((directory / "fixtures.json").read_text())
    del table["wide_rows_fast"]
    (directory / "fixtures.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    assert run_make_fixtures(monkeypatch, directory) == 0
    torch.manual_seed(0)
    model, _ = make_fixtures.wide_rows()
    source = {t: hashlib.sha256(codec.tensor_bytes(v)).hexdigest() for t, v in model.state_dict().items()}
    assert json.loads((directory / "fixtures.json").read_text()) == {**table, "wide_rows_fast": source}
    assert source == DIGESTS["wide_rows_fast"]
