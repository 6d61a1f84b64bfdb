"""Render audio with external tools: espeak-ng speech and sox sound scenes, as 16 kHz mono PCM.

All rendering goes through subprocesses (espeak-ng piped into sox), so a thread pool already
gives true parallelism; files are written to a temporary name and renamed, so a file that
exists is complete (which makes re-runs resumable).
"""

from __future__ import annotations

import os
import subprocess
import wave

SAMPLE_RATE = 16000
# -R: repeatable (fixed seeds for dither/noise); -D: no dither -> byte-identical re-runs.
SOX_GLOBAL = ["sox", "-R", "-D", "-V1"]
TRIM = ["silence", "1", "0.01", "-50d", "reverse", "silence", "1", "0.01", "-50d", "reverse", "pad", "0.1", "0.1"]
SOX_OUT = ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer"]


def wav_duration(path: str) -> float:
    """Duration in seconds, read from the WAV header."""
    with wave.open(path, "rb") as w:
        return w.getnframes() / float(w.getframerate())


def _tmp_name(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.tmp{os.getpid()}{ext}"


def render_utterance(job: dict) -> float:
    """Synthesize ``job['text']`` with espeak-ng into ``job['path']``; returns the duration.

    ``job`` keys: path, text, voice, variant, rate (words/min), pitch (0-99).
    """
    path = job["path"]
    if os.path.exists(path):
        return wav_duration(path)
    tmp = _tmp_name(path)
    espeak = [
        "espeak-ng", "--stdout", "-v", f"{job['voice']}+{job['variant']}",
        "-s", str(job["rate"]), "-p", str(job["pitch"]), job["text"],
    ]
    # gain -n -3: peak-normalise (deterministic) so loudness is not a speaker cue and no clipping
    # then trim espeak's leading/trailing silence (up to ~0.7 s) and keep a 0.1 s margin
    sox = SOX_GLOBAL + ["-t", "wav", "-", *SOX_OUT, tmp, "gain", "-n", "-3", *TRIM]
    p1 = subprocess.Popen(espeak, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p2 = subprocess.run(sox, stdin=p1.stdout, capture_output=True, check=False)
    p1.stdout.close()
    rc1 = p1.wait()
    if rc1 != 0 or p2.returncode != 0:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RuntimeError(f"synthesis failed for {job}: espeak rc={rc1}, sox: {p2.stderr.decode()[-300:]}")
    os.replace(tmp, path)
    return wav_duration(path)


def render_scene(job: dict) -> float:
    """Render a sound scene (list of sox synth event argument lists) into ``job['path']``."""
    path = job["path"]
    if os.path.exists(path):
        return wav_duration(path)
    tmp = _tmp_name(path)
    parts = []
    try:
        for i, ev in enumerate(job["events"]):
            part = f"{tmp}.{i}.wav"
            cmd = SOX_GLOBAL + ["-n", *SOX_OUT, part, *ev["sox"]]
            subprocess.run(cmd, check=True, capture_output=True)
            parts.append(part)
        subprocess.run(SOX_GLOBAL + parts + [*SOX_OUT, tmp], check=True, capture_output=True)
        os.replace(tmp, path)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"scene failed for {job['path']}: {e.stderr.decode()[-300:]}") from e
    finally:
        for part in parts + [tmp]:
            if os.path.exists(part):
                os.remove(part)
    return wav_duration(path)


def render(job: dict) -> tuple[str, float]:
    """Dispatch by job kind; returns (job id, duration) for the pool."""
    fn = render_scene if job["kind"] == "scene" else render_utterance
    return job["id"], fn(job)
