"""``ManifestDataModule``: JSONL or Lhotse cut manifests -> lazy CutSets -> Lhotse samplers ->
audio loaded in DataLoader workers -> batches, with an exact resume position.

* Manifests: a user JSONL manifest (format in :mod:`.manifest`) is converted to cuts line by line
  as it is read; a Lhotse cut manifest (``CutSet.to_file``) is read directly. The cut convention
  and how the two are told apart are in :mod:`.cuts`. Nothing is read ahead: the CutSets are lazy.
* Batches: ``batch_size`` cuts (``SimpleCutSampler``) or, with ``max_batch_seconds``,
  length-bucketed batches within that many seconds of padded audio (``DynamicBucketingSampler``;
  a batch's cuts x its longest cut never exceeds the budget, a single longer clip is a batch of
  one); see :mod:`.loader`. The sampler splits batches over DDP ranks; the audio is decoded,
  checked and collated by the workers (:mod:`.dataset`).
* ``train``: shuffled (Lhotse's seeded shuffling, a new order every epoch through the sampler's
  ``set_epoch``), one loader over all training manifests. The position of the last batch the
  training loop consumed is recorded in :meth:`on_before_batch_transfer` and saved through this
  class's :meth:`state_dict` (Lightning stores it in checkpoints); a resumed run skips exactly the
  batches already trained on, without loading their audio. The position is kept only under the
  same batch plan (manifests, batching, shuffling, seed, limit, length rules, number of ranks);
  otherwise a warning says what changed and the epoch restarts from its first sample.
* ``val`` / ``test`` / ``predict``: no shuffling, deterministic order, **one dataloader per
  manifest, in the order given** (a list even for one manifest). Either a list of manifests or
  a mapping ``{set name: manifest(s)}`` naming held-out sets (``{ood: m/test_ood/gr.jsonl}``);
  :meth:`eval_sets` gives each dataloader index's set name (None when unnamed), which the
  module puts into its metric keys (see ``ahamask_lightning.evaluation.metric_key``).
* ``collate_fn`` (constructor argument; identity when not given) turns a list of samples into a
  batch inside the workers. The model supplies it (``AHAMaskModule.collate()``; in the CLI through
  ``link_arguments``); the batch schema is documented in :mod:`.collate`. Nothing outside this
  class assigns its attributes.
* Bad samples are skipped, logged and counted; see :meth:`reject_summary`. Each is logged and
  written to the rejects file once per run (a file that already lists it, e.g. when a resumed
  run writes to the same place, is not written again). A batch whose samples were all bad is
  never handed to the training loop.
* DDP: the samplers split batches over ranks; training ranks get the same number of batches and
  end each epoch together, evaluation ranks run the same number of steps, and the end-of-epoch
  checks (a manifest with no valid sample, a training epoch with no batch) are decided on counts
  summed over the ranks (see :mod:`.loader`). Training manifests that are all Lhotse Shar, with
  a shard or more per rank, are split by shard instead: each rank reads only its own (:mod:`.shar`).

Hugging Face ``datasets`` / parquet inputs are not supported (JSONL and Lhotse manifests only).
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Collection
from typing import Any, Literal

import lightning.pytorch as pl
import torch.distributed as dist
from lhotse import CutSet

from .audio import AudioConfig
from .cuts import ManifestCuts
from .dataset import AudioBatches, Sample, identity_collate
from .loader import PLAN_VERSION, CountedCuts, CutLoader, make_sampler
from .manifest import (
    DEFAULT_MAX_TARGET_CHARS,
    as_list,
    check_manifest_file,
    default_known_tasks,
)
from .paths import recorded_roots
from .rejects import RejectLog, count_reasons, read_reject_files
from .shar import is_shar, shard_count

# val / test / predict: manifest(s), or {held-out set name: manifest(s)}
EvalManifests = list[str] | str | dict[str, list[str] | str] | None
# The manifests each stage reads (Lightning's ``setup(stage)``; the CLI's subcommands): a test needs
# no training data, so only these are checked.
STAGE_MANIFESTS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
SET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def named_manifests(given: EvalManifests, stage: str) -> tuple[list[str], list[str | None]]:
    """Flattens an eval-stage argument into (paths, set name per path); names are checked here."""
    if not isinstance(given, dict):
        paths = as_list(given)
        return paths, [None] * len(paths)
    paths, names = [], []
    for name, manifests in given.items():
        if not SET_NAME.match(str(name)):
            raise ValueError(f"data.{stage}: set name {name!r} must be lower-case letters, digits, '_' or '-'")
        for path in as_list(manifests):
            paths.append(path)
            names.append(str(name))
    return paths, names


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".gz", ".jsonl", ".cuts"):
        name = name.removesuffix(suffix)
    return name


class ManifestDataModule(pl.LightningDataModule):
    """Lazy Lhotse CutSet data for AHAMask (see the module docstring).

    Args beyond the obvious: ``max_batch_seconds`` switches from ``batch_size`` batches to
    length-bucketed batches whose padded seconds (``len * longest``) never exceed the budget (a
    single clip longer than it is a batch of one);
    ``shuffle_buffer`` is how many cuts the training sampler's shuffle buffer holds (bucketing
    sampler; the ``batch_size`` sampler uses Lhotse's streaming shuffle), and 1 turns training
    shuffling off (manifest order, as a buffer of one would give);
    ``limit`` (>= 1, or None for every line) keeps the first ``limit`` lines of every manifest;
    ``rejects_path`` is the JSONL base name for rejected samples (one file per stage x rank x
    process is written beside it);
    ``on_too_long`` rejects (default) or cuts audio longer than ``max_seconds``; ``known_tasks``
    overrides the task registry (None: ``ahamask_lightning.tasks.TASKS`` when importable);
    ``max_target_chars`` rejects longer targets (None: no limit; the default's reasoning is at
    ``manifest.DEFAULT_MAX_TARGET_CHARS``); ``allow_outside_root`` accepts audio paths outside the
    corpus root (``../`` climbs, absolute paths outside the allowed roots);
    ``rank`` / ``world_size`` override the trainer's (for tests and tools); ``collate_fn`` builds
    batches (see the module docstring; None: the list of samples). ``rejects_path`` None: under a
    trainer with a ``log_dir``, ``<log_dir>/rejects.jsonl`` (set in :meth:`setup`).

    Corpus root (where an absolute audio path must lie, else the sample is rejected as
    ``path_outside_root``): ``audio_root`` when it is set; otherwise the manifest's folder plus
    the roots recorded in ``corpus.json`` in the nearest ancestor folder of the manifest that holds
    one. ``ahamask data prepare CORPUS --root R --out O`` writes ``O/corpus.json`` naming ``R``, so
    its manifests (absolute paths into the raw corpus) pass by default while a path elsewhere is
    still rejected.
    """

    def __init__(self, train: list[str] | str | None = None, val: EvalManifests = None,
                 test: EvalManifests = None, predict: EvalManifests = None,
                 audio_root: str | None = None, sample_rate: int = 16000, min_seconds: float = 1.0,
                 max_seconds: float = 30.0, batch_size: int = 8, max_batch_seconds: float | None = None,
                 num_workers: int = 0, shuffle_buffer: int = 1000, seed: int = 0,
                 rejects_path: str | None = None, limit: int | None = None,
                 on_too_long: Literal["reject", "cut"] = "reject",
                 known_tasks: Collection[str] | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 max_target_chars: int | None = DEFAULT_MAX_TARGET_CHARS, allow_outside_root: bool = False,
                 collate_fn: Callable[[list[Sample]], Any] | None = None) -> None:
        super().__init__()
        # collate_fn holds the model's adapter: never into checkpoints or hparams files
        self.save_hyperparameters(ignore=["known_tasks", "collate_fn"])
        self.paths = {"train": as_list(train)}
        self._set_names: dict[str, list[str | None]] = {}
        for stage, given in (("val", val), ("test", test), ("predict", predict)):
            self.paths[stage], self._set_names[stage] = named_manifests(given, stage)
        self.audio = AudioConfig(sample_rate, min_seconds, max_seconds, on_too_long)
        self.audio_root = audio_root
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rejects_path = rejects_path
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a whole number >= 1 (lines kept per manifest) or null (every line), "
                             f"not {limit!r}")
        self.limit = limit
        if max_target_chars is not None and max_target_chars < 1:
            raise ValueError(f"max_target_chars must be >= 1 or null, not {max_target_chars}")
        self.max_target_chars = max_target_chars
        self.allow_outside_root = allow_outside_root
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else default_known_tasks()
        self.rank_override = rank
        self.world_size_override = world_size
        self.collate_fn: Callable[[list[Sample]], Any] = collate_fn if collate_fn is not None else identity_collate
        self._train_loader: CutLoader | None = None
        # per stage, every (manifest, line) rejected in this run: shared by that stage's loaders, so
        # a validation loader made anew each epoch still knows what was logged already
        self._rejected: dict[str, dict[tuple[str, int], str]] = {}
        self._position: tuple[int, int] | None = None  # (epoch, planned batches done) of the last consumed batch

    # --- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if self.rejects_path is None and trainer is not None and trainer.log_dir:
            # bad samples are listed beside the logs unless the config says where
            self.rejects_path = os.path.join(trainer.log_dir, "rejects.jsonl")
        for key in STAGE_MANIFESTS.get(stage, tuple(self.paths)):  # a test needs no training manifests
            for path in self.paths[key]:
                check_manifest_file(path)  # fail in the main process, before workers start
                if self.audio_root is None and not self.allow_outside_root:
                    recorded_roots(path)  # likewise for a malformed corpus.json

    def train_dataloader(self) -> CutLoader:
        if not self.paths["train"]:
            raise ValueError("ManifestDataModule: no train manifests given")
        loader = self._make_loader("train", self.paths["train"], shuffle=True, resume=self._position)
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> list[CutLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[CutLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[CutLoader]:
        return self._eval_loaders("predict")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Lightning calls this for the batch the loop is about to use; batches its prefetcher holds
        # ahead never get here, so the recorded position is what training really consumed.
        trainer = self.trainer
        if self._train_loader is not None and (trainer is None or trainer.training):
            position = self._train_loader.take_consumed()
            if position is not None:
                self._position = position
        return batch

    def state_dict(self) -> dict[str, Any]:
        """``{"train": {"epoch", "batches": {rank: planned batches done}, "world_size", "plan"}}`` once
        training consumed a batch (``plan``: what the batch plan depends on, :meth:`plan`). Under DDP
        every rank calls this while a checkpoint is dumped (rank 0 writes it), so the positions of all
        ranks are gathered."""
        rank, world = self._coords()
        mine = self._position
        positions = {rank: mine}
        if world > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (rank, mine))
            positions = dict(gathered)
        known = {r: p for r, p in positions.items() if p is not None}
        if not known:
            return {}
        epoch = max(p[0] for p in known.values())
        batches = {str(r): p[1] for r, p in known.items() if p[0] == epoch}
        return {"train": {"epoch": epoch, "batches": batches, "world_size": world, "plan": self.plan()}}

    def plan(self) -> dict[str, Any]:
        """What the training sampler's plan depends on besides the epoch and the ranks: "batches of
        the plan done" means nothing under another plan (a resume would repeat or skip samples)."""
        return {"version": PLAN_VERSION, "manifests": list(self.paths["train"]),
                # batch_size plans nothing when seconds budgets make the batches
                "batch_size": self.batch_size if self.max_batch_seconds is None else None,
                "max_batch_seconds": self.max_batch_seconds, "shuffle_buffer": self.shuffle_buffer,
                "seed": self.seed, "limit": self.limit, "min_seconds": self.audio.min_seconds,
                "max_seconds": self.audio.max_seconds, "on_too_long": self.audio.on_too_long}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("train")
        if not state:
            return
        rank, world = self._coords()
        restart = f"epoch {state['epoch']} restarts from its first sample"
        if int(state.get("world_size", 1)) != world:
            warnings.warn(f"cannot resume the data position: saved with {state.get('world_size')} rank(s), now "
                          f"{world}; {restart}", stacklevel=2)
            return
        saved, plan = state.get("plan"), self.plan()
        if not isinstance(saved, dict):
            # saved before plans were recorded (version 1): its batch_size plans are this version's,
            # its seconds-budget plans are not
            saved = {**plan, "version": 1} if self.max_batch_seconds is not None else plan
        if saved != plan:
            changed = ", ".join(f"{key} was {saved.get(key)!r}, now {plan.get(key)!r}"
                                for key in sorted(set(saved) | set(plan)) if saved.get(key) != plan.get(key))
            warnings.warn(f"cannot resume the data position: another batch plan ({changed}); {restart}",
                          stacklevel=2)
            return
        done = state.get("batches", {}).get(str(rank))
        self._position = (int(state["epoch"]), int(done)) if done is not None else None

    # --- helpers -----------------------------------------------------------------------------------
    @property
    def eval_names(self) -> dict[str, list[str]]:
        """Per stage, the manifest stem of each dataloader index (e.g. ``{"val": ["asr", "gr"]}``;
        ``gr.jsonl`` and ``gr.cuts.jsonl.gz`` are both ``gr``)."""
        return {stage: [_stem(p) for p in self.paths[stage]] for stage in ("val", "test", "predict")}

    def eval_sets(self, stage: str) -> list[str | None]:
        """Per dataloader index of ``stage``, the held-out set name given in the config (None: unnamed)."""
        return list(self._set_names.get(stage, []))

    def reject_summary(self, stage: str | None = None) -> dict[str, int]:
        """reason -> number of distinct bad samples seen so far (files and in-process counts merged)."""
        found: dict[tuple[str, int], str] = {}
        stages = [stage] if stage else list(self._rejected)
        for name in stages:
            found.update(self._rejected.get(name, {}))
        if self.rejects_path:
            found.update(read_reject_files(self.rejects_path, stage))
        return count_reasons(found.values())

    def _coords(self) -> tuple[int, int]:
        trainer = self.trainer
        if self.world_size_override is not None:
            return self.rank_override or 0, self.world_size_override
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _stage_rejects(self, stage: str) -> dict[tuple[str, int], str]:
        if stage not in self._rejected:
            # the rejects files may already list samples (a run resumed into the same folder)
            self._rejected[stage] = read_reject_files(self.rejects_path, stage) if self.rejects_path else {}
        return self._rejected[stage]

    def _eval_loaders(self, stage: str) -> list[CutLoader]:
        if not self.paths[stage]:
            raise ValueError(f"ManifestDataModule: no {stage} manifests given")
        return [self._make_loader(stage, [p], shuffle=False) for p in self.paths[stage]]

    def _make_loader(self, stage: str, paths: list[str], shuffle: bool,
                     resume: tuple[int, int] | None = None) -> CutLoader:
        rank, world = self._coords()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world_size {world}")
        training = stage == "train"
        # Shar shards dealt out to the training ranks: each reads its own, not every rank all of them
        split = training and world > 1 and all(is_shar(p) and shard_count(p) >= world for p in paths)
        # every rank reads every line (and rank 0 writes the rejects) unless each reads its own shards
        rejects = RejectLog(self._stage_rejects(stage), self.rejects_path, stage, rank, write=rank == 0 or split)
        # shuffle_buffer 1 means the manifests' order too, not only the order within them
        shuffle = shuffle and self.shuffle_buffer > 1
        cuts = CountedCuts(ManifestCuts(paths, self.audio, rejects, audio_root=self.audio_root,
                                        allow_outside_root=self.allow_outside_root, known_tasks=self.known_tasks,
                                        max_target_chars=self.max_target_chars, limit=self.limit, shuffle=shuffle,
                                        seed=self.seed, shard_split=(rank, world) if split else None))
        distributed = world > 1 and dist.is_available() and dist.is_initialized()
        sampler = make_sampler(CutSet(cuts), self.audio, batch_size=self.batch_size,
                               max_batch_seconds=self.max_batch_seconds, shuffle=shuffle,
                               shuffle_buffer=self.shuffle_buffer, seed=self.seed, rank=0 if split else rank,
                               world_size=1 if split else world, drop_last=training and distributed and not split)
        dataset = AudioBatches(self.audio, self.collate_fn, stage, rank, self.rejects_path)
        batching = (f"batch_size {self.batch_size}" if self.max_batch_seconds is None
                    else f"max_batch_seconds {self.max_batch_seconds}")
        # the end-of-epoch checks sum the ranks' counts: a rank's shards may all be bad while the others' are fine
        return CutLoader(sampler, cuts, dataset, rejects, num_workers=self.num_workers, resume=resume,
                         track=training, sync_stop=training and distributed, need_batches=training,
                         batching=batching, distributed=distributed, own_share=split)
