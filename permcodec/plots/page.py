"""The report as one self-contained HTML page: a summary table, then each figure as an embedded PNG with a
caption whose numbers come from describe() (formatted as ``permcodec info`` prints them)."""

from __future__ import annotations

import base64
from html import escape

from .bits import ZSTD_LEVEL

STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
         "figure{margin:2em 0}img{max-width:100%}figcaption{font-size:0.95em}")


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    seconds = summary["decode_seconds"]
    accuracy = summary["test_acc"]
    return [
        ("file", summary["file"]), ("model", str(summary["model"] or "-")),
        ("dataset", str(summary["dataset"] or "-")), ("seed", str(summary["seed"])),
        ("distribution", str(summary["distribution"])), ("k", str(summary["k"] or "-")),
        ("schemes", ", ".join(f"{name}: {scheme}" for name, scheme in summary["schemes"].items())),
        ("test accuracy", "-" if accuracy is None else f"{accuracy:.4f} ({summary['test_acc_source']})"),
        ("decode time on this machine", "-" if seconds is None else f"{seconds:.3f} s (permcodec.load)"),
        ("file size", f"{summary['file_bytes']:,} bytes"),
        ("× bound (permuted tensors)", number(summary["ratio_to_bound"], ".4f")),
        ("× fp16 (file)", number(summary["ratio_to_fp16"], ".3f")),
    ]


def captions(info: dict) -> dict[str, str]:
    """The caption of each figure id."""
    totals = info["totals"]
    layers = "; ".join(f"{t['name']} {t['bits_per_weight']:.3f} (bound {number(t['bound_bits_per_weight'], '.3f')})"
                       for t in info["tensors"] if t["kind"] == "permuted" and t["bits_per_weight"] is not None)
    return {
        "bits": (f"Bits per weight by layer. File {info['file_bytes']:,} bytes; permuted weights "
                 f"{number(totals['permuted_bits_per_weight'], '.3f')} bits/weight, "
                 f"{number(totals['ratio_to_bound'], '.4f')} × bound; file {number(totals['ratio_to_fp16'], '.3f')}"
                 f" × fp16. Stored bits/weight per permuted tensor: {layers}. Dotted lines: zstd level "
                 f"{ZSTD_LEVEL} of the same decoded tensors as bf16 and as fp32; hatched: raw tensors."),
        "profiles": ("Sorted weight profiles: up to 32 evenly spaced rows of each of the largest permuted "
                     "tensors, each row sorted ascending against rank / n, with the 5, 50 and 95 % quantiles "
                     "over all rows. A LaPerm row holds its initial values, so this is also the init's profile."),
        "displacement": ("Rank displacement: for each weight, |rank in its trained row − rank in its initial "
                         "row| / n (ties ranked by position). A uniformly random permutation averages 1/3."),
        "training": ("Training curves: train loss/accuracy are means over each epoch; test loss/accuracy are "
                     "measured with synced weights at each epoch end. Green ticks: syncs derived from the "
                     "config's constant k (absent where not derivable); star: the stored weights."),
    }


def page_html(summary: dict, info: dict, images: dict[str, bytes]) -> bytes:
    """The UTF-8 bytes of the page; images are {figure id: PNG bytes}, embedded as data: URIs."""
    rows = "".join(f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in
                   summary_rows(summary))
    texts = captions(info)
    figures = "".join(
        f'<figure id="{name}"><img alt="{escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}"><figcaption>{escape(texts[name])}</figcaption></figure>'
        for name, png in images.items())
    title = escape(f"permcodec report: {summary['file']}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1><table>{rows}</table>{figures}"
            f"</body></html>\n").encode()
