"""The README's Use section works as written: its Python example runs, and its commands parse."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from permcodec.cli import parser

README = (Path(__file__).parent.parent / "README.md").read_text()
USE = README[README.index("## Use"):README.index("## Layout")]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", USE, flags=re.S)


def test_the_python_example_trains_saves_loads_and_resumes(tmp_path):
    (example,) = blocks("python")
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == ["test accuracy", "decoded accuracy", "after one more epoch"]
    accuracies = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert accuracies[0] == accuracies[1] > 0.5 and accuracies[2] > accuracies[0]
    assert (tmp_path / "model.pc").exists()


COMMANDS = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()
            if line.startswith("permcodec ")]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_of_use_parses(command):
    args = parser().parse_args(shlex.split(command)[1:])
    assert args.command == shlex.split(command)[1]


def test_use_shows_every_command():
    assert {shlex.split(c)[1] for c in COMMANDS} == {"train", "encode", "info", "decode", "verify", "report"}


@pytest.mark.parametrize("figure", ["bits", "profiles", "displacement", "training"])
def test_the_readme_shows_each_report_figure_from_docs(figure):
    path = Path(__file__).parent.parent / "docs" / f"{figure}.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 250
    assert f"(docs/{figure}.png)" in README
