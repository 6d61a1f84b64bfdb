"""The data/model contract: the datamodule is given its batch builder; the model never mutates it."""
from __future__ import annotations

import ast
import inspect
import json
import os
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import soundfile as sf

from ahamask_lightning.data import ManifestDataModule, collate_audio, read_reject_files
from ahamask_lightning.data.collate import SampleCollate


def _reaches(expr: ast.expr, aliases: set[str]) -> bool:
    """Whether ``expr`` is read through ``.datamodule`` or starts at a local bound to one."""
    root = expr
    while isinstance(root, (ast.Attribute, ast.Subscript)):
        root = root.value
    return "datamodule" in ast.unparse(expr) or (isinstance(root, ast.Name) and root.id in aliases)


def _datamodule_writes(cls_source: str) -> list[str]:
    """Assignments (and setattr calls) in a class's source that reach a datamodule attribute."""
    tree = ast.parse(textwrap.dedent(cls_source))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        # local names bound to something read through ``.datamodule`` (dm = self.trainer.datamodule)
        aliases = {t.id for node in ast.walk(fn) if isinstance(node, ast.Assign) and "datamodule" in ast.unparse(node.value)
                   for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(fn):
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            found += [ast.unparse(t) for t in targets if isinstance(t, (ast.Attribute, ast.Subscript))
                      and _reaches(t.value, aliases)]
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr" and _reaches(node.args[0], aliases):
                found.append(ast.unparse(node))
    return found


def test_the_models_never_assign_to_the_datamodule():
    from ahamask_lightning.module import AHAMaskModule
    from ahamask_lightning.pretrain import TinyLALMPretrain

    # the detector finds the kind of code this contract replaced
    old = '''
    class M:
        def setup(self, stage):
            dm = getattr(self.trainer, "datamodule", None)
            dm.collate_fn = self.collate()
            self.trainer.datamodule.rejects_path = "x"
            setattr(dm, "limit", 3)
    '''
    assert _datamodule_writes(old) == ["dm.collate_fn", "self.trainer.datamodule.rejects_path",
                                       "setattr(dm, 'limit', 3)"]
    for cls in (AHAMaskModule, TinyLALMPretrain):
        assert _datamodule_writes(inspect.getsource(cls)) == [], cls.__name__
        assert "setup" not in vars(cls), f"{cls.__name__}.setup: the datamodule is configured by its constructor"


def _manifest(root: Path, n: int = 3, missing: bool = False) -> str:
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        sf.write(root / "audio" / f"u{i}.wav", (0.1 * rng.standard_normal(8000 + 800 * i)).astype("float32"), 16000)
        lines.append({"id": f"u{i}", "audio": f"audio/u{i}.wav", "task": "gr", "text": ["Male", "Female"][i % 2]})
    if missing:
        lines.append({"id": "gone", "audio": "audio/gone.wav", "task": "gr", "text": "Male"})
    path = root / "gr.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_the_collate_given_runs_in_the_workers(tmp_path):
    dm = ManifestDataModule(train=_manifest(tmp_path), batch_size=2, num_workers=1, known_tasks={"gr"},
                            min_seconds=0.1, shuffle_buffer=1, collate_fn=collate_audio)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [b["ids"] for b in batches] == [["u0", "u1"], ["u2"]]
    assert batches[0]["audio"].shape == (2, 8800) and batches[0]["lengths"].tolist() == [8000, 8800]
    assert "collate_fn" not in dm.hparams  # it holds the model's adapter: never saved with the data hparams
    plain = ManifestDataModule(train=dm.paths["train"], known_tasks={"gr"}, min_seconds=0.1)
    assert isinstance(next(iter(plain.train_dataloader())), list)  # no collate given: the samples themselves


def test_a_run_under_a_trainer_uses_the_model_collate_unchanged(tmp_path):
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm
    from ahamask_lightning.module import AHAMaskModule

    module = AHAMaskModule(random_tiny_lalm(["male female"], layers=2, heads=4, hidden=32), use_mask=False,
                           generation={"max_new_tokens": 2})
    collate = module.collate()
    assert isinstance(collate, SampleCollate)
    dm = ManifestDataModule(val=_manifest(tmp_path / "data", missing=True), batch_size=2, known_tasks={"gr"},
                            min_seconds=0.1, collate_fn=collate)
    trainer = L.Trainer(default_root_dir=tmp_path / "run", accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, datamodule=dm)
    assert dm.collate_fn is collate
    # rejects_path unset: the datamodule itself puts bad samples beside the trainer's logs
    assert dm.rejects_path == os.path.join(trainer.log_dir, "rejects.jsonl")
    assert list(read_reject_files(dm.rejects_path).values()) == ["missing_file"]
    assert any(k.startswith("val/gr") and k.endswith("/acc") for k in trainer.callback_metrics)  # batches reached
