"""The report of a .pc file: its figures (``report``), its header (``summary``) and one self-contained HTML
page or a folder of PNGs (``write_report``). Reads the file only through permcodec's public API."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

FIGURE_IDS = ("bits", "profiles", "displacement", "training")  # "training" only where metrics exist


@dataclass
class Run:
    """What the figures are drawn from: describe()'s figures, the decoded tensors, the init spec, metrics."""

    path: Path
    info: dict
    records: list[dict]
    metrics_source: str
    decoded: dict | None = None
    decode_seconds: float | None = None
    spec: object = None


def read_run(path, log=None) -> Run:
    """describe() and the metrics only: cheap enough to check outputs before any decoding."""
    import permcodec

    from .training import metrics_of

    info = permcodec.describe(path)
    records, source = metrics_of(info["metadata"], log)
    return Run(Path(path), info, records, source)


def decode_run(run: Run) -> Run:
    """The run with its tensors decoded (timed: what load() takes on this machine) and its init spec."""
    import permcodec

    start = time.perf_counter()
    run.decoded = permcodec.load(run.path)
    run.decode_seconds = time.perf_counter() - start
    run.spec = permcodec.load_spec(run.path)
    return run


def headline(info: dict) -> str:
    """File size, permuted bits/weight, × bound, × fp16, formatted as ``permcodec info`` prints them."""
    totals = info["totals"]
    parts = [f"file {info['file_bytes']:,} bytes"]
    if totals["permuted_bits_per_weight"] is not None:
        parts.append(f"permuted {totals['permuted_bits_per_weight']:.3f} bits/weight")
    if totals["ratio_to_bound"] is not None:
        parts.append(f"{totals['ratio_to_bound']:.4f} × bound")
    if totals["ratio_to_fp16"] is not None:
        parts.append(f"{totals['ratio_to_fp16']:.3f} × fp16")
    return ", ".join(parts)


def summary_of(run: Run) -> dict:
    from .training import epoch_records

    info, config = run.info, run.info["config"] if isinstance(run.info["config"], dict) else {}
    inits = [t["init"] for t in info["tensors"] if t["init"]]
    test_acc, acc_source = info["test_acc"], "file metadata"
    epochs = epoch_records(run.records)
    if test_acc is None and epochs:
        test_acc, acc_source = epochs[-1]["test_acc"], f"{run.metrics_source} (last epoch)"
    return {
        "file": str(run.path), "model": config.get("model"), "dataset": config.get("data"),
        "seed": config.get("seed", one_or_all([i["seed"] for i in inits])),
        "distribution": config.get("dist", one_or_all([i["dist"] for i in inits])), "k": config.get("k"),
        "schemes": {t["name"]: t["scheme"] for t in info["tensors"]},
        "test_acc": test_acc, "test_acc_source": acc_source if test_acc is not None else None,
        "decode_seconds": run.decode_seconds, "file_bytes": info["file_bytes"],
        "ratio_to_bound": info["totals"]["ratio_to_bound"], "ratio_to_fp16": info["totals"]["ratio_to_fp16"],
    }


def one_or_all(values: list):
    """The one value all tensors share, the sorted distinct values where they differ, None where none."""
    distinct = sorted(set(values), key=str)
    return None if not distinct else distinct[0] if len(distinct) == 1 else distinct


def summary(path, log=None) -> dict:
    """The report's header: model, dataset, seed, distribution, k (from the training config where stored),
    scheme per tensor, test accuracy, seconds to decode the file here, file bytes, × bound, × fp16."""
    return summary_of(decode_run(read_run(path, log)))


def raw_matrices(info: dict) -> list[dict]:
    """The raw 2-D float tensors with elements (group members too): their rows' profiles are drawn too (the
    issue's Fig. 2 asks)."""
    return [t for t in info["tensors"] if t["kind"] != "permuted" and len(t["shape"]) == 2 and 0 not in t["shape"]
            and t["dtype"] in ("float32", "float16", "bfloat16", "float64")]


def figures_of(run: Run) -> dict:
    from .bits import bits_figure, permuted_records, zstd_references
    from .canvas import house_style
    from .displacement import displacement_figure, displacements
    from .profiles import profiles_figure
    from .training import epoch_records, training_figure

    permuted = permuted_records(run.info)
    with house_style():
        figures = {"bits": bits_figure(run.info, zstd_references(run.info, run.decoded), headline(run.info)),
                   "profiles": profiles_figure(permuted + raw_matrices(run.info), run.decoded),
                   "displacement": displacement_figure(permuted, displacements(permuted, run.decoded, run.spec))}
        if epoch_records(run.records):
            figures["training"] = training_figure(run.records, run.info["config"], run.info["test_acc"],
                                                  run.metrics_source)
    return figures


def report(path, log=None) -> dict:
    """{figure id: matplotlib Figure} for the .pc file at ``path``: "bits", "profiles", "displacement", and
    "training" where ``log`` (JSON lines of ``permcodec train``) or the file's metadata holds metrics."""
    from .canvas import require_matplotlib

    require_matplotlib()
    return figures_of(decode_run(read_run(path, log)))


def write_report(path, *, log=None, html=None, png_dir=None, overwrite: bool = False) -> list[Path]:
    """Write the report: one self-contained HTML page (``html``; by default ``<stem>.report.html`` beside
    the file when ``png_dir`` is not given) and/or ``<id>.png`` per figure in ``png_dir``. Existing outputs
    are refused unless ``overwrite``; every check runs before any decoding. Returns the paths written."""
    from ..atomicfile import atomic_write_bytes, check_output_path
    from .canvas import png_bytes, require_matplotlib
    from .page import page_html

    require_matplotlib()
    run = read_run(path, log)
    if html is None and png_dir is None:
        html = Path(path).with_suffix(".report.html")
    targets = output_targets(run, html, png_dir, overwrite, check_output_path)
    figures = figures_of(decode_run(run))
    images = {name: png_bytes(figure) for name, figure in figures.items()}
    for name, target in targets.items():
        data = page_html(summary_of(run), run.info, images) if name == "html" else images[name]
        atomic_write_bytes(target, data)
    return list(targets.values())


def output_targets(run: Run, html, png_dir, overwrite: bool, check_output_path) -> dict[str, Path]:
    """{"html" or figure id: path}, each checked (suffix, directory, not existing unless overwrite)."""
    from .training import epoch_records

    targets = {}
    if html is not None:
        targets["html"] = check_output_path(html, (".html",), "report writes an .html file: the output",
                                            overwrite)
    if png_dir is not None:
        png_dir = Path(png_dir)
        if png_dir.exists() and not png_dir.is_dir():
            raise NotADirectoryError(f"PNG directory {png_dir} is not a directory")
        png_dir.mkdir(parents=True, exist_ok=True)
        ids = FIGURE_IDS if epoch_records(run.records) else FIGURE_IDS[:-1]
        for name in ids:
            targets[name] = check_output_path(png_dir / f"{name}.png", (".png",), "a figure", overwrite)
    return targets
