"""What a fit prints when its output goes to a file (a batch job's log): progress lines with
step/total, it/s, ETA and loss, a model summary without unmeasured FLOPs, and no eval-mode warning;
in a terminal, Lightning's own progress bar."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import Run, fit_command, write_config

PROGRESS = re.compile(r"^fit: step (\d+)/12, (\d+\.\d+) it/s, ETA (\d+:\d\d:\d\d), loss (-?\d+\.\d{4})$")


def test_fit_off_a_terminal_prints_progress_lines_and_nothing_misleading(good_corpus, tmp_path):
    cfg = write_config(tmp_path / "fit.yaml", tmp_path / "root", good_corpus, every=5, max_steps=12)
    run = Run(fit_command(cfg, "--trainer.enable_progress_bar", "true", "--trainer.enable_model_summary", "true"),
              tmp_path / "run")
    assert run.wait() == 0, run.stderr()
    out, err = (run.dir / "stdout.txt").read_text(), run.stderr()
    matches = [PROGRESS.match(line) for line in out.splitlines() if line.startswith("fit: step ")]
    assert len(matches) >= 3 and all(matches), out
    steps = [int(m[1]) for m in matches]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    assert all(float(m[2]) > 0 for m in matches)
    assert "fit: 12 steps in " in out
    said = re.search(r"^mask: (\S+mask\.safetensors) \((\d+) of 8 heads on\)$", out, re.M)  # where the mask went
    assert said and Path(said[1]).is_file(), out
    # the summary: parameters counted, the eval mode explained once, no FLOPs that were never measured
    assert "Trainable params" in out and out.count("Modules in eval mode on purpose") == 1
    assert "FLOPs" not in out + err and "Total Flops" not in out + err
    assert "in eval mode at the start of training" not in out + err
    assert "\r" not in out  # no redrawn progress bar in a log file


def test_fit_in_a_terminal_keeps_lightnings_progress_bar(good_corpus, tmp_path):
    import os
    import pty
    import subprocess
    import threading

    from conftest import REPO, fault_env

    cfg = write_config(tmp_path / "fit.yaml", tmp_path / "root", good_corpus, every=5, max_steps=6)
    main_fd, tty_fd = pty.openpty()
    proc = subprocess.Popen(fit_command(cfg, "--trainer.enable_progress_bar", "true"), cwd=REPO,
                            env=fault_env(tmp_path / "faults"), stdout=tty_fd, stderr=subprocess.DEVNULL)
    os.close(tty_fd)
    chunks: list[bytes] = []

    def read() -> None:  # drain the terminal while the fit writes to it
        while True:
            try:
                data = os.read(main_fd, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert proc.wait(timeout=300) == 0
    reader.join(timeout=10)
    os.close(main_fd)
    shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))  # no colours
    # Lightning's bar (Rich where installed, else tqdm): steps, elapsed and remaining time, it/s
    bar = r"6/6 (\d+:\d\d:\d\d • \d+:\d\d:\d\d +|\[\d\d:\d\d<\d\d:\d\d, +)\d+\.\d+it/s"
    assert re.search(bar, shown), shown[-2000:]
    assert "fit: step " not in shown  # the line reports are for logs only
