"""Every command's --help: the real program name, plain text (no reST, no internal references),
the -v/-q log level flags on every step; progress bars only on a terminal."""

from __future__ import annotations

import importlib
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dagan import console

REPO = Path(__file__).resolve().parents[1]
STEPS = ("synthesize", "prepare", "train_judge", "train", "evaluate", "register", "tune", "generate", "import_official")
TOOLS = ("pipeline.compile", "pipeline.submit", "pipeline.trainjob", "pipeline.tune_pipeline")
RAW_MARKUP = re.compile(r"``|:func:|:class:|:mod:|\bissue \d+")


def help_text(module: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("step", STEPS)
def test_every_step_names_its_real_command_and_takes_a_log_level(step, capsys):
    text = help_text(f"components.{step}", capsys)
    assert text.startswith(f"usage: python -m components.{step} ")
    assert "-v, --verbose" in text and "-q, --quiet" in text
    assert not RAW_MARKUP.search(text), RAW_MARKUP.search(text).group(0)
    assert "train.py" not in text.split("\n", 1)[0]


@pytest.mark.parametrize("module", TOOLS)
def test_pipeline_tools_name_their_real_command(module, capsys):
    text = help_text(module, capsys)
    assert text.startswith(f"usage: python -m {module} ")
    assert not RAW_MARKUP.search(text)


def test_library_cli_help_is_plain(capsys):
    text = help_text("dagan.__main__", capsys)
    assert text.startswith("usage: python -m dagan ") and not RAW_MARKUP.search(text)
    with pytest.raises(SystemExit):
        importlib.import_module("dagan.__main__").main(["generate", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m dagan generate ") and not RAW_MARKUP.search(text)
    assert "index.html" in text.split("options:")[0] and "--overwrite" in text and "-q, --quiet" in text


def test_help_through_python_dash_m_shows_the_module_not_the_file():
    result = subprocess.run([sys.executable, "-m", "components.evaluate", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120, check=True)
    assert result.stdout.startswith("usage: python -m components.evaluate")


def test_quiet_and_verbose_set_the_log_level(tmp_path, capsys):
    from components.train_judge import main

    missing = str(tmp_path / "missing.yaml")
    for flag, level in (("-q", logging.WARNING), ("-v", logging.DEBUG)):
        assert main(["--params", missing, flag]) == 2  # a clear error, after the level was set
        assert logging.getLogger().level == level
    assert "config file" in capsys.readouterr().err
    console.setup_logging(logging.INFO)


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("tty", "level", "shown"), [(True, logging.INFO, True), (False, logging.INFO, False),
                                                      (True, logging.WARNING, False)])
def test_progress_bars_only_on_a_terminal_and_not_when_quiet(monkeypatch, tty, level, shown):
    terminal = FakeTerminal(tty)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", FakeTerminal(True))  # bars never go to stdout
    logging.getLogger().setLevel(level)
    try:
        assert list(console.progress(range(3), total=3, desc="work")) == [0, 1, 2]
    finally:
        logging.getLogger().setLevel(logging.INFO)
    assert ("work" in terminal.getvalue()) is shown
    assert sys.stdout.getvalue() == ""
