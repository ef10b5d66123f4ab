"""A blank Figure on the Agg canvas, in matplotlib's default style with readable fonts (no pyplot state)."""

from __future__ import annotations

import contextlib
import io

from ..errors import SpecError

DPI = 100  # 8 x 4.5 in at 100 dpi: an 800 x 450 px PNG
FONTS = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13}
MAX_TICK_LABELS = 24  # more tensors than this are labelled by their index in the caption's order


def require_matplotlib():
    """The matplotlib module, or SpecError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise SpecError("permcodec report needs matplotlib: pip install 'permcodec[plot]'") from None
    return matplotlib


@contextlib.contextmanager
def house_style():
    """matplotlib's default style (its default colour cycle) with FONTS, whatever the caller's rcParams."""
    require_matplotlib()
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context(FONTS):
        yield


def new_figure(width: float = 8.0, height: float = 4.5):
    """A Figure with an Agg canvas and constrained layout; call inside ``house_style``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure) -> bytes:
    """The figure as a PNG with a 256-colour palette: a third of the bytes of full colour, and plots
    (a few flat colours and their anti-aliased edges) look the same. Pillow comes with matplotlib."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colors=256)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def label_tensors(axes, names: list[str]) -> None:
    """Tensor names under the bars, or their indices where there are too many to read."""
    positions = list(range(len(names)))
    if len(names) <= MAX_TICK_LABELS:
        axes.set_xticks(positions, names, rotation=30, ha="right")
    else:
        axes.set_xlabel("tensor (index in file order)")
