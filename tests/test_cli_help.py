"""``ahamask --help`` comes from the registry that dispatches: it names every subcommand with its
description, and every subcommand's own ``--help`` ends with its example."""
from __future__ import annotations

import pytest

from ahamask_lightning.cli import main as cli_main
from ahamask_lightning.cli.main import COMMANDS, REGISTRY, Command, main

EXPECTED = {"fit", "validate", "test", "predict", "infer", "mask", "data", "model", "report", "prune"}


def test_top_level_help_names_every_registered_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert EXPECTED <= set(REGISTRY)
    listed = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()
              if line.startswith("  ") and line.split() and line.split()[0] in REGISTRY}
    assert set(listed) == set(REGISTRY)
    for command in COMMANDS:
        assert listed[command.name] == command.description
        assert "\n" not in command.description and command.example.startswith(f"ahamask {command.name} ")
    assert REGISTRY["infer"].module == "ahamask_lightning.cli.infer"


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1].strip()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.module is not None], ids=lambda c: c.name)
def test_tool_help_ends_with_its_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command.name, "--help"])
    assert done.value.code == 0
    assert _last_line(capsys.readouterr().out) == command.example


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.module is None], ids=lambda c: c.name)
def test_lightning_subcommand_help_ends_with_its_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command.name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert _last_line(out) == command.example and command.description in out


def test_unknown_command_is_one_line(capsys):
    assert main(["fitt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'fitt'" in err[0] and "infer" in err[0]


def test_a_registered_tool_whose_module_is_missing_is_one_line(capsys, monkeypatch):
    missing = Command("later", "a tool still being written", "ahamask later", "ahamask_lightning.cli.no_such_tool")
    monkeypatch.setitem(cli_main.REGISTRY, "later", missing)
    assert main(["later"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("ahamask: error: later: not available in this installation "
                    "(module ahamask_lightning.cli.no_such_tool is missing)")]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.module is not None], ids=lambda c: c.name)
def test_tool_example_parses_with_the_tools_own_options(command):
    import shlex

    cli_main.tool_parser(command).parse_args(shlex.split(command.example)[2:])  # exits 2 on an unknown option


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys, in_repo):
    """``ahamask mask info M | head -0``: the reader has gone before the output; exit 141 (as a shell
    reports SIGPIPE), no error line."""
    import io
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    with io.open(write_end, "w", closefd=True) as pipe:
        monkeypatch.setattr("sys.stdout", pipe)
        assert main(["mask", "info", "masks/salmonn-13b/asr_librispeech.safetensors"]) == 141
    assert capsys.readouterr().err == ""


MASK_COMMANDS = ["info", "jaccard", "combine", "random", "import-official"]


@pytest.mark.parametrize("name", MASK_COMMANDS)
def test_each_mask_tool_describes_every_argument_and_its_example_runs(name, capsys, tmp_path, monkeypatch):
    import glob
    import re
    import shlex
    from pathlib import Path

    with pytest.raises(SystemExit):
        main(["mask", name, "--help"])
    text = capsys.readouterr().out
    # argparse writes an argument's help after it on its line, or on the next, indented deeper
    lines = text.split("example:")[0].splitlines()
    entries = [i for i, line in enumerate(lines) if re.match(r"  [-\w]", line)]
    bare = [lines[i].strip() for i in entries
            if not re.match(r"  \S.*?\s{2,}\S", lines[i]) and not lines[i + 1].startswith("    ")]
    assert entries and not bare
    example = _last_line(text)
    assert example.startswith(f"ahamask mask {name} ")
    if name == "import-official":
        return  # it needs a released .pth (tests/test_released_masks.py converts them)
    masks = Path(__file__).resolve().parents[1] / "masks" / "salmonn-13b"
    monkeypatch.chdir(tmp_path)
    words = [w for part in shlex.split(example)[1:]
             for w in (sorted(glob.glob(part.replace("masks/salmonn-13b", str(masks))))
                       if "masks/salmonn-13b" in part else [part])]
    assert main(words) == 0
    assert "heads active" in capsys.readouterr().out or name == "jaccard"
