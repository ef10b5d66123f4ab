"""NNCodec rows for the frontier benchmark: a trained model's Conv/Linear weights coded by NNCodec 2.1.3.

NNCodec (Fraunhofer HHI) implements MPEG NNC, ISO/IEC 15938-17: uniform quantization with dependent
(trellis-coded) quantization, then DeepCABAC arithmetic coding. For each QP in ``QPS`` the tensors named in
``names`` are coded together as one NNC bitstream with ``nncodec.nnc.compress`` and decoded back with
``nncodec.nnc.decompress``. A row is (label, {name: decoded float32 tensor}, 8 * bytes of that bitstream);
the bytes include the bitstream's own headers. Settings are those of NNCodec's ``nncodec.nn.encode``:
uniform quantizer, ``use_dq``, ``param_opt``, ``row_skipping``, ``qp_density`` 2 (the step size doubles every 4
QPs), no sparsification, no data-driven tools (no dataset, no evaluation loop, no fine-tuning).

NNCodec pins numpy<2 and wants torchvision, opencv and more, so it lives in its own venv and the coding runs
in a child process of that venv's python (tools/README.md, "NNCodec (optional)", has the install commands):

    PERMCODEC_NNCODEC_PYTHON=/tmp/nncv/bin/python python tools/bench_frontier.py ...

Without that variable the child is this interpreter when it has ``nncodec``; otherwise there are no rows.
The child imports only NNCodec's coding core: ``nncodec.framework`` (the PyTorch/TensorFlow model-zoo and
dataset glue, which imports torchvision, opencv, pandas, scikit-learn) is used by ``compress_model`` and
``decompress_model`` only, so the child puts an empty stand-in for it before importing ``nncodec.nnc``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the child runs without torch
    import torch

ENV = "PERMCODEC_NNCODEC_PYTHON"
QPS = (-14, -18, -22, -26, -30)  # step sizes 2^-3.5 .. 2^-7.5; about 1 to 4 bits/weight on Conv7 (tools/README.md)
LABEL = "adam nncodec qp {qp}"


def nncodec_rows(state: dict[str, torch.Tensor],
                 names: list[str]) -> list[tuple[str, dict[str, torch.Tensor], int]]:
    """For each QP in ``QPS``: (label, {name: dequantized float32 tensor}, stored bits of ``names``).

    [] when no python with NNCodec is at hand; RuntimeError when the NNCodec child fails."""
    python = os.environ.get(ENV)
    if not python:
        if importlib.util.find_spec("nncodec") is None:
            return []
        python = sys.executable
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory(prefix="permcodec-nncodec-") as tmp:
        work = Path(tmp)
        arrays = {f"w{i}": state[name].detach().cpu().float().numpy() for i, name in enumerate(names)}
        np.savez(work / "weights.npz", **arrays)
        (work / "qps.json").write_text(json.dumps(list(QPS)))
        done = subprocess.run([python, str(Path(__file__).resolve()), str(work)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"NNCodec child ({python}) exited with {done.returncode}:\n{done.stderr[-3000:]}")
        sizes = json.loads((work / "sizes.json").read_text())
        rows = []
        for qp in QPS:
            with np.load(work / f"decoded_qp{qp}.npz") as decoded:
                weights = {name: torch.from_numpy(decoded[f"w{i}"].astype(np.float32)).reshape(state[name].shape)
                           for i, name in enumerate(names)}
            rows.append((LABEL.format(qp=qp), weights, 8 * sizes[str(qp)]))
        return rows


def _child(work: Path) -> None:
    """Runs under NNCodec's python: codes weights.npz at each QP, writes decoded_qp<QP>.npz and sizes.json."""
    import types

    import nncodec
    import numpy as np
    stand_in = types.ModuleType("nncodec.framework")  # see the module docstring
    for part in ("tensorflow_model", "pytorch_model", "use_case_init"):
        module = types.ModuleType(f"nncodec.framework.{part}")
        setattr(stand_in, part, module)
        sys.modules[module.__name__] = module
    sys.modules[stand_in.__name__] = nncodec.framework = stand_in
    from nncodec.nnc import compress, decompress

    with np.load(work / "weights.npz") as stored:
        weights = {key: np.ascontiguousarray(stored[key], dtype=np.float32) for key in stored.files}
    sizes = {}
    for qp in json.loads((work / "qps.json").read_text()):
        bitstream = compress({key: value.copy() for key, value in weights.items()}, bitstream_path=None,
                             qp=qp, qp_density=2, use_dq=True, codebook_mode=0, param_opt=True,
                             row_skipping=True, return_bitstream=True, verbose=False)
        decoded = decompress(bytearray(bitstream), verbose=False)
        if set(decoded) != set(weights) or any(decoded[k].size != weights[k].size for k in weights):
            raise SystemExit(f"qp {qp}: decoded tensors do not match the coded ones")
        np.savez(work / f"decoded_qp{qp}.npz", **{key: decoded[key] for key in weights})
        sizes[str(qp)] = len(bitstream)
    (work / "sizes.json").write_text(json.dumps(sizes))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
