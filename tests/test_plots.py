"""permcodec.plots: the report's figures, its HTML page and its PNGs, for a golden fixture and a fresh run.

The numbers in captions are checked against ``permcodec info --json`` (the CLI, run separately), the bar
heights against describe(), the images by their PNG headers."""

import base64
import contextlib
import io
import json
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import permcodec
from permcodec import SpecError, plots
from permcodec.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "conv_layers.pc"
TITLES = {"bits": "Bits per weight by layer", "profiles": "Sorted weight profiles",
          "displacement": "Rank displacement", "training": "Training curves"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch mlp run (2 steps an epoch), its metrics log as ``permcodec train`` prints it, and its .pc."""
    folder = tmp_path_factory.mktemp("run")
    out = io.StringIO()  # capsys is function-scoped: the module's one run redirects stdout by hand
    with contextlib.redirect_stdout(out):
        assert main(["train", "--model", "mlp", "--epochs", "2", "--batch-size", "2000", "--k", "3", "-q",
                     "-o", str(folder / "m.pt")]) == 0
        assert main(["encode", str(folder / "m.pt"), "-o", str(folder / "m.pc"), "-q"]) == 0
    log = folder / "metrics.jsonl"
    log.write_text("".join(line + "\n" for line in out.getvalue().splitlines() if line.startswith("{")))
    return folder / "m.pc", log


class Page(HTMLParser):
    """The img sources, figcaption texts and every attribute value of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.captions, self.attributes, self.inside = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.attributes += [value or "" for _, value in attrs]
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self.inside = tag

    def handle_data(self, data):
        if self.inside == "figcaption":
            self.captions.append(data)

    def handle_endtag(self, tag):
        self.inside = None


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def info_json(path, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def titles(figure) -> str:
    return " ".join([figure.get_suptitle()] + [axes.get_title() for axes in figure.axes])


def check_page(html: Path, info: dict, ids: list[str]) -> None:
    page = Page()
    page.feed(html.read_text(encoding="utf-8"))
    assert not [value for value in page.attributes if "http" in value or value.startswith("//")]
    assert len(page.images) == len(ids)
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        width, height = png_size(base64.b64decode(src[len(prefix):]))
        assert width >= 400 and height >= 250
    text = " ".join(page.captions)
    totals = info["totals"]
    assert f"File {info['file_bytes']:,} bytes" in text
    assert f"{totals['ratio_to_bound']:.4f} × bound" in text
    assert f"file {totals['ratio_to_fp16']:.3f} × fp16" in text
    for t in info["tensors"]:
        if t["kind"] == "permuted":
            assert f"{t['name']} {t['bits_per_weight']:.3f} (bound {t['bound_bits_per_weight']:.3f})" in text


@pytest.mark.parametrize("which", ["fixture", "trained"])
def test_the_html_report_is_self_contained_and_its_numbers_are_infos(which, trained, tmp_path, capsys):
    path, log = (FIXTURE, None) if which == "fixture" else trained
    html = tmp_path / "r.html"
    assert plots.write_report(path, log=log, html=html) == [html]
    ids = ["bits", "profiles", "displacement"] + (["training"] if log else [])
    check_page(html, info_json(path, capsys), ids)


@pytest.mark.parametrize("which", ["fixture", "trained"])
def test_each_figure_names_what_it_shows_and_the_bars_are_describes(which, trained):
    path, log = (FIXTURE, None) if which == "fixture" else trained
    figures = plots.report(path, log=log)
    assert list(figures) == ["bits", "profiles", "displacement"] + (["training"] if log else [])
    for name, figure in figures.items():
        assert TITLES[name] in titles(figure)
        width, height = figure.get_size_inches() * figure.dpi
        assert width >= 400 and height >= 250
    permuted = [t for t in permcodec.describe(path)["tensors"] if t["kind"] == "permuted"]
    bars = {container.get_label(): [patch.get_height() for patch in container]
            for container in figures["bits"].axes[0].containers}
    assert bars["stored"] == [t["bits_per_weight"] for t in permuted]
    assert bars["bound log2(n!/∏m!)"] == [t["bound_bits_per_weight"] for t in permuted]


def test_the_training_figure_comes_from_the_files_metadata_without_a_log(trained):
    path, log = trained
    figure = plots.report(path)["training"]
    test_acc = [line.get_ydata().tolist() for line in figure.axes[1].lines
                if line.get_label() == "test, synced weights (epoch end)"]
    epochs = [json.loads(line) for line in log.read_text().splitlines() if "epoch" in json.loads(line)]
    assert test_acc == [[r["test_acc"] for r in epochs]]
    assert "file metadata" in figure.get_suptitle()
    final = next(json.loads(line) for line in log.read_text().splitlines() if json.loads(line).get("final"))
    syncs = [line for line in figure.axes[0].lines if line.get_label().startswith("sync (every k=3 steps")]
    assert len(syncs) == 1 and len(syncs[0].get_xdata()) == final["syncs"] == 2  # steps 3 and 4 (the last)


def test_summary_names_the_run(trained):
    path, _ = trained
    described = permcodec.describe(path)
    found = plots.summary(path)
    assert (found["model"], found["dataset"], found["k"], found["seed"]) == ("mlp", "mnist5k", 3, 0)
    assert found["distribution"] == "he_uniform" and found["test_acc"] == described["test_acc"]
    assert found["schemes"] == {t["name"]: t["scheme"] for t in described["tensors"]}
    assert found["file_bytes"] == described["file_bytes"] and found["decode_seconds"] > 0
    assert found["ratio_to_bound"] == described["totals"]["ratio_to_bound"]


def test_png_dir_writes_one_png_per_figure_and_no_html(tmp_path):
    written = plots.write_report(FIXTURE, png_dir=tmp_path / "pictures")
    assert written == [tmp_path / "pictures" / f"{name}.png" for name in ("bits", "profiles", "displacement")]
    for path in written:
        width, height = png_size(path.read_bytes())
        assert width >= 400 and height >= 250
    assert not list(tmp_path.glob("*.html")) and not (FIXTURE.parent / "conv_layers.report.html").exists()


def test_an_existing_output_is_refused_without_overwrite(tmp_path):
    html = tmp_path / "r.html"
    html.write_text("keep me")
    with pytest.raises(SpecError, match=f"^{html} already exists; pass -f/--force to overwrite it$"):
        plots.write_report(FIXTURE, html=html)
    assert html.read_text() == "keep me"
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bits.png").write_bytes(b"old")
    with pytest.raises(SpecError, match="bits.png already exists"):
        plots.write_report(FIXTURE, png_dir=tmp_path / "p")
    assert plots.write_report(FIXTURE, html=html, overwrite=True) == [html]
    assert html.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("content", [b"PK\x03\x04\x80\xff\xfe binary", b"[" * 200_000, b"1" * 5_000])
def test_a_log_that_is_not_text_has_no_epoch_records(tmp_path, capsys, content):
    (tmp_path / "model.pt").write_bytes(content)
    html = tmp_path / "r.html"
    assert main(["report", str(FIXTURE), "--log", str(tmp_path / "model.pt"), "-o", str(html)]) == 1
    assert capsys.readouterr().err == (f"permcodec report: error: log {tmp_path / 'model.pt'} has no epoch records "
                                       f"(JSON lines with keys epoch, step, train_loss, train_acc, test_loss, "
                                       f"test_acc)\n")
    assert not html.exists()


def test_the_default_html_lies_beside_the_file(tmp_path):
    copy = tmp_path / "c.pc"
    copy.write_bytes(FIXTURE.read_bytes())
    assert plots.write_report(copy) == [tmp_path / "c.report.html"]


def test_an_html_path_without_its_suffix_is_refused(tmp_path):
    with pytest.raises(SpecError, match="report writes an .html file: the output must end in .html"):
        plots.write_report(FIXTURE, html=tmp_path / "r.htm")


def test_without_matplotlib_the_report_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = "^permcodec report needs matplotlib: pip install 'permcodec\\[plot\\]'$"
    with pytest.raises(SpecError, match=message):
        plots.report(FIXTURE)
    with pytest.raises(SpecError, match=message):
        plots.write_report(FIXTURE, html=tmp_path / "r.html")


def test_importing_plots_imports_neither_torch_nor_matplotlib():
    import subprocess

    code = "import sys, permcodec.plots; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.stdout == "False False\n"


def test_raw_matrices_get_their_profiles_too(tmp_path):
    import torch
    from torch import nn

    import permcodec
    from permcodec.plots import report

    model = nn.Sequential(nn.Linear(12, 8), nn.Linear(8, 4))
    spec = permcodec.init_(model, seed=3)
    state = dict(model.state_dict())
    state["table"] = torch.linspace(-1, 1, 30).reshape(5, 6)  # a 2-D tensor outside the spec: stored raw
    permcodec.save(state, tmp_path / "m.pc", init=spec)
    titles = [axes.get_title() for axes in report(tmp_path / "m.pc")["profiles"].axes]
    assert "table (raw) (5, 6)" in titles and "0.weight (8, 12)" in titles
