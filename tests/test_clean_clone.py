"""A fresh clone is self-contained: the README's CLI examples run in it, with nothing beside it.

The repository's committed HEAD is cloned into an empty temporary folder (so no ``../shared`` or
other sibling exists), the clone's own package is imported (``PYTHONPATH``, ahead of the editable
install of this checkout), and every line of the README's ``bash`` block after the
``<!-- readme-cli-examples`` marker runs there with the project's ``ahamask``. Where a line's
comment quotes text (``# "..."``), the command's output must contain it.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-cli-examples"
AHAMASK = Path(sys.executable).parent / "ahamask"

pytestmark = pytest.mark.slow


def readme_cli_examples(readme: str) -> list[tuple[str, str | None]]:
    """(command, quoted expected output or None) for each line of the marked ``bash`` block."""
    if MARKER not in readme:
        raise AssertionError(f"README.md: no '{MARKER}' marker before the CLI examples")
    block = readme.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    examples = []
    for line in block.splitlines():
        command, _, comment = line.partition(" #")
        if not command.strip() or command.lstrip().startswith("#"):
            continue
        quoted = re.search(r'"([^"]+)"', comment)
        examples.append((command.strip(), quoted.group(1) if quoted else None))
    return examples


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if not (shutil.which("git") and (REPO / ".git").exists()):
        pytest.skip("needs git and a git checkout to clone")
    parent = tmp_path_factory.mktemp("fresh")
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(parent / "clone")], check=True, timeout=300)
    assert sorted(p.name for p in parent.iterdir()) == ["clone"]  # nothing beside it, no ../shared
    return parent / "clone"


def _env(clone: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{clone / 'src'}{os.pathsep}{clone}"}


def test_the_clone_imports_its_own_package(clone: Path) -> None:
    code = ("import ahamask_lightning, data_modules\n"
            "from ahamask_lightning.models.qwen2_audio import FULL_SIZE_CONFIG\n"
            "from ahamask_lightning.released_masks import released_mask\n"
            "print(ahamask_lightning.__file__, data_modules.__file__, FULL_SIZE_CONFIG, released_mask('asr_librispeech'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, env=_env(clone), capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    for path in out.stdout.split():
        assert Path(path).resolve().is_relative_to(clone.resolve()), path
        assert Path(path).is_file(), path


def test_the_readme_cli_examples_run_in_a_fresh_clone(clone: Path) -> None:
    examples = readme_cli_examples((clone / "README.md").read_text())
    commands = [c for c, _ in examples]
    for needed in ("ahamask model heads --model qwen2-audio-7b", "ahamask model heads --model salmonn-13b",
                   "ahamask mask info", "ahamask mask jaccard"):
        assert any(c.startswith(needed) for c in commands), f"README.md: no '{needed}' among the CLI examples"
    for command, expected in examples:
        argv = shlex.split(command)
        assert argv[0] == "ahamask", f"README.md: CLI example does not start with ahamask: {command}"
        out = subprocess.run([str(AHAMASK), *argv[1:]], cwd=clone, env=_env(clone), capture_output=True,
                             text=True, timeout=300, check=False)
        assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
        if expected is not None:
            assert expected in out.stdout, f"{command}: expected {expected!r} in\n{out.stdout}"


def test_the_released_masks_in_the_clone_are_files_of_the_clone(clone: Path) -> None:
    masks = sorted((clone / "masks" / "salmonn-13b").glob("*.safetensors"))
    assert len(masks) == 10
    for mask in masks:
        assert mask.resolve().is_relative_to(clone.resolve()), mask


def test_no_code_names_a_path_outside_the_package() -> None:
    """No string in the package's code points at the reference folder beside the checkout."""
    for source in sorted((REPO / "src").rglob("*.py")):
        tokens = tokenize.generate_tokens(io.StringIO(source.read_text()).readline)
        for tok in tokens:
            if tok.type == tokenize.STRING and ("shared/reference" in tok.string or "../shared" in tok.string):
                raise AssertionError(f"{source.relative_to(REPO)}:{tok.start[0]}: names {tok.string[:60]!r}")


def test_make_help_lists_every_target() -> None:
    """Every phony target of the Makefile has a '## description', so `make help` shows it."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", makefile, re.MULTILINE).group(1).replace("\\\n", " ").split()
    shown = subprocess.run(
        # under `make test` the nested make would print "Entering directory" lines
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    listed = {line.split("\t")[0].strip() for line in shown.splitlines() if "\t" in line}
    assert set(phony) == listed
    assert "$(" not in shown and "DATA=data/synth RUNS=runs TESTBED=checkpoints/tiny_lalm_8x16g" in shown
    assert {"install", "demo", "test", "testbed", "reproduce-tiny", "figures", "bench"} <= listed
