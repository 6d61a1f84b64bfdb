"""The paper's studies as functions over ``ahamask fit``/``ahamask test`` runs of one experiment YAML.

Every study differs from the main experiment by command-line overrides only, so no YAML is
duplicated per setting:

=====================  ====================================================================
study                  overrides of the experiment YAML
=====================  ====================================================================
four conditions        ``--model.init_args.prompt task|none --model.init_args.use_mask ...``
lambda sweep (Fig. 5)  ``--model.init_args.sparsity_lambda L`` (a SparsityPenalty callback the
                       YAML may carry schedules it)
seeds                  ``--seed_everything S --{model,data}.init_args.seed S``; intersection by
                       ``ahamask mask combine --op and``
progressive (Fig. 4)   ``--model.init_args.mask`` = the top share of heads by learned logit
prompt wording (Fig.2) ``--model.init_args.use_mask false --model.init_args.prompt variant:K``
OOD GR                 ``--data.init_args.test {<corpus>: [data/<corpus>/manifests/test/gr.cuts.jsonl.gz], ...}``
transfer               the mask of one model tested with the other model's YAML
=====================  ====================================================================

Each study writes ``summary.json`` (``"kind"`` says which) into its directory; ``reproduce
figures`` draws the PNGs from those files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation import parse_metric_key
from ..experiment import CONDITIONS, Condition, conditions, fit_mask, random_like, run_cli, test_condition
from ..masking import load_mask, save_mask
from ..results import absolute_paths
from ..tasks import get_task
from .masks import combine, jaccard_matrix, mask_to_logits, progressive_masks
from .report import metric_column

# Out-of-domain gender recognition (paper: TEDLIUM, CommonVoice, VoxCeleb1), as `ahamask data prepare` writes them.
OOD_GR = {"tedlium": "data/tedlium/manifests/test/gr.cuts.jsonl.gz",
          "commonvoice": "data/commonvoice/manifests/test/gr.cuts.jsonl.gz",
          "voxceleb1": "data/voxceleb/manifests/test/gr.cuts.jsonl.gz"}


@dataclass
class Runner:
    """One experiment YAML plus the overrides every fit / test of a study shares; ``eval_set`` is
    the test set whose metric the studies report (None: the unnamed one, see :func:`metric_value`)."""

    config: str
    common: list[str] = field(default_factory=list)
    fit_extra: list[str] = field(default_factory=list)
    test_extra: list[str] = field(default_factory=list)
    eval_set: str | None = None

    def fit(self, out: Path, extra: list[str] = ()) -> Path:
        overrides = [*self.common, *self.fit_extra, *extra]
        mask = fit_mask(self.config, out, overrides)
        write_record(Path(mask).parent / "fit_record.json", {"kind": "fit", "config": self.config,
                                                             "overrides": overrides, "mask": str(mask),
                                                             "active": load_mask(mask).active()})
        return mask

    def test(self, cond: Condition, out: Path, extra: list[str] = ()) -> dict:
        return test_condition(self.config, cond, out, [*self.common, *self.test_extra, *extra])

    def metric(self, record: dict, task: str) -> float | None:
        """The primary metric of ``task`` on this runner's ``eval_set`` in a test record."""
        return metric_value(record["metrics"], task, eval_set=self.eval_set)


def metric_entries(metrics: dict[str, float], where: str | None = None) -> list[tuple[str, str, str | None, float]]:
    """(task, metric, set, value) for every key of a results file's ``metrics`` (see
    ``evaluation.parse_metric_key``); a key of another form (a file written before the keys named
    their sets, say) is a one-line ``ValueError`` naming ``where`` and the key."""
    out = []
    for key, value in metrics.items():
        try:
            _, task, metric, eval_set = parse_metric_key(key)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}" if where else str(exc)) from None
        out.append((task, metric, eval_set, value))
    return out


def metric_value(metrics: dict[str, float], task: str, metric: str | None = None,
                 eval_set: str | None = None) -> float | None:
    """The value of ``metric`` (default: the task's primary one) for ``task`` on set ``eval_set``;
    None picks the unnamed set when there is one, else the first set name in sorted order."""
    metric = metric or get_task(task).primary
    found = {s: v for t, m, s, v in metric_entries(metrics) if t == task and m == metric}
    if eval_set is not None:
        return found.get(eval_set)
    if None in found:
        return found[None]
    return found[min(found)] if found else None


def lambda_args(lam: float) -> list[str]:
    return ["--model.init_args.sparsity_lambda", str(lam)]


def seed_args(seed: int) -> list[str]:
    # the data seed too: Lightning refuses a module and a data module whose `seed` hparams differ
    return ["--seed_everything", str(seed), "--model.init_args.seed", str(seed), "--data.init_args.seed", str(seed)]


def write_record(path: Path, record: dict) -> dict:
    """A JSON record stamped like every ``test_metrics.json``: git revision, package versions and
    date, so a number or a figure can be traced to the code that made it."""
    from datetime import datetime, timezone

    from ..masking.io import git_revision
    from ..results import package_versions

    record = {**record, "git_revision": git_revision(), "versions": package_versions(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def write_summary(out: Path, record: dict) -> dict:
    """``summary.json`` of one study (``"kind"`` says which), stamped by ``write_record``; its paths
    (masks, configs) absolute, so ``reproduce figures`` finds them from any directory."""
    return write_record(out / "summary.json", absolute_paths(record))


def four_conditions(runner: Runner, task: str, out: Path, mask: Path | None = None, seed: int = 0,
                    fit_extra: list[str] = ()) -> dict:
    """Fit a mask (unless given), draw a random mask with as many heads on, test all four conditions."""
    out.mkdir(parents=True, exist_ok=True)  # with a given mask no fit makes it
    if mask is None:
        mask = runner.fit(out, list(fit_extra))
    rand = random_like(Path(mask), out / "random_mask.safetensors", seed=seed)
    results = {}
    for cond in conditions(Path(mask), rand):
        rec = runner.test(cond, out / "test" / cond.name.replace(" ", "_"))
        results[cond.name] = {"metrics": rec["metrics"], "active_heads": rec["run"].get("active_heads")}
    mf = load_mask(mask)
    return write_summary(out, {"kind": "four_conditions", "task": task, "config": runner.config, "mask": str(mask),
                               "active": mf.active(), "total": mf.mask.numel(), "shape": list(mf.shape),
                               "conditions": results})


def lambda_sweep(runner: Runner, task: str, lambdas: list[float], out: Path,
                 done: dict[float, Path] | None = None) -> dict:
    """Figure 5: one mask per lambda (``done`` reuses masks already trained, e.g. lambda 0)."""
    rows = []
    for lam in lambdas:
        run_dir = out / f"lambda_{lam:g}"
        mask = (done or {}).get(lam) or runner.fit(run_dir, lambda_args(lam))
        rec = runner.test(Condition("AHAMask", "none", True, str(mask)), run_dir / "test")
        mf = load_mask(mask)
        rows.append({"lambda": lam, "mask": str(mask), "active": mf.active(), "total": mf.mask.numel(),
                     "metric": runner.metric(rec, task)})
    return write_summary(out, {"kind": "lambda", "task": task, "metric": get_task(task).primary, "rows": rows})


def reusable_for_seeds(mask: Path, seeds: list[int]) -> dict[int, Path]:
    """{seed: mask} when the fit that wrote ``mask`` ran with one of ``seeds`` (its saved
    ``config.yaml`` says which), else {}: a mask is never relabelled as another seed's."""
    import yaml

    config = Path(mask).parent / "config.yaml"
    seed = yaml.safe_load(config.read_text()).get("seed_everything") if config.exists() else None
    return {seed: Path(mask)} if seed in seeds else {}


def seed_study(runner: Runner, task: str, seeds: list[int], out: Path, done: dict[int, Path] | None = None) -> dict:
    """Masks from several seeds, their pairwise Jaccard, and the intersection (heads all agree on)."""
    masks, rows = [], []
    for seed in seeds:
        run_dir = out / f"seed_{seed}"
        mask = (done or {}).get(seed) or runner.fit(run_dir, seed_args(seed))
        rec = runner.test(Condition("AHAMask", "none", True, str(mask)), run_dir / "test")
        mf = load_mask(mask)
        masks.append(mf)
        rows.append({"seed": seed, "mask": str(mask), "active": mf.active(), "metric": runner.metric(rec, task)})
    inter = combine([m.mask for m in masks], "and")
    out.mkdir(parents=True, exist_ok=True)
    inter_path = out / "intersection.safetensors"
    save_mask(inter_path, mask_to_logits(inter), op="and", sources=",".join(r["mask"] for r in rows),
              model_id=masks[0].metadata.get("model_id"))
    rec = runner.test(Condition("AHAMask", "none", True, str(inter_path)), out / "intersection_test")
    return write_summary(out, {
        "kind": "seeds", "task": task, "metric": get_task(task).primary, "rows": rows,
        "jaccard": jaccard_matrix([m.mask for m in masks]).tolist(),
        "intersection": {"mask": str(inter_path), "active": int(inter.sum()),
                         "metric": runner.metric(rec, task)}})


def progressive(runner: Runner, task: str, mask: Path, fractions: list[float], out: Path,
                references: dict[str, float | None] | None = None) -> dict:
    """Figure 4: switch heads on in the order of their learned logits, test at each share."""
    source = load_mask(mask)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for frac, m in zip(fractions, progressive_masks(source.logits, fractions)):
        path = out / f"top_{round(100 * frac):03d}.safetensors"
        save_mask(path, mask_to_logits(m), progressive_share=frac, source=str(mask),
                  model_id=source.metadata.get("model_id"))
        rec = runner.test(Condition("AHAMask", "none", True, str(path)), out / f"top_{round(100 * frac):03d}")
        rows.append({"share": frac, "active": int(m.sum()), "metric": runner.metric(rec, task)})
    return write_summary(out, {"kind": "progressive", "task": task, "metric": get_task(task).primary,
                               "mask": str(mask), "rows": rows, "references": references or {}})


def prompt_sensitivity(runner: Runner, task: str, out: Path, ahamask: float | None = None,
                       variants: int | None = None) -> dict:
    """Figure 2: the ungated model under each wording of the task's instruction (0 = the paper's)."""
    wordings = get_task(task).instructions[: variants or None]
    rows = []
    for k, text in enumerate(wordings):
        rec = runner.test(Condition(f"variant {k}", f"variant:{k}", False), out / f"variant_{k}")
        rows.append({"k": k, "instruction": text, "metric": runner.metric(rec, task)})
    return write_summary(out, {"kind": "prompts", "task": task, "metric": get_task(task).primary, "rows": rows,
                               "ahamask": ahamask})


def held_out(runner: Runner, task: str, mask: Path, test_sets: dict[str, str], out: Path) -> dict:
    """A mask and the instruction baseline on other test sets (OOD GR): one run per condition,
    with the sets as the data module's named test sets, so each keeps its own metric keys."""
    named = ["--data.init_args.test", json.dumps({name: [manifest] for name, manifest in test_sets.items()})]
    rows = []
    for cond in (Condition("with instruction", "task", False), Condition("AHAMask", "none", True, str(mask))):
        rec = runner.test(cond, out / cond.name.replace(" ", "_"), named)
        for name in test_sets:
            rows.append({"set": name, "condition": cond.name,
                         "metric": metric_value(rec["metrics"], task, eval_set=name)})
    return write_summary(out, {"kind": "held_out", "task": task, "metric": get_task(task).primary, "rows": rows})


def transfer(target: Runner, task: str, mask: Path, out: Path, label: str) -> dict:
    """A mask learned on one model tested on another of the same shape (Instruct <-> Base)."""
    rec = target.test(Condition("AHAMask", "none", True, str(mask)), out)
    return write_summary(out, {"kind": "transfer", "task": task, "label": label, "mask": str(mask),
                               "config": target.config, "metric": target.metric(rec, task)})


def table_rows(summaries: list[dict], metrics: dict[str, tuple[str, ...]]) -> tuple[list[str], list[dict]]:
    """Rows = the four conditions; columns = ``report.metric_column`` (``<task>/<metric>``, plus
    `` (<set>)`` for a named test set) per task, plus ``<task>/heads``. A task that several summaries
    share (e.g. GR on Qwen2-Audio Instruct and Base) gets columns per summary, suffixed with its
    ``label`` (`` [gr_base]``), instead of one summary's values overwriting another's."""
    columns: list[str] = []
    rows = {name: {"condition": name} for name in CONDITIONS}
    shared = {t for t in (s["task"] for s in summaries) if sum(x["task"] == t for x in summaries) > 1}
    for s in summaries:
        task = s["task"]
        suffix = f" [{s.get('label', task)}]" if task in shared else ""
        wanted = metrics.get(task, (get_task(task).primary,))
        for name, res in s["conditions"].items():
            entries = metric_entries(res["metrics"], f"{task}, {name}")
            for t, metric, eval_set, value in sorted(entries, key=lambda e: (e[2] or "", e[1])):
                if t != task or metric not in wanted:
                    continue
                col = metric_column(task, metric, eval_set) + suffix
                rows[name][col] = value
                if col not in columns:
                    columns.append(col)
            rows[name][f"{task}/heads{suffix}"] = res["active_heads"] if res["active_heads"] is not None else "all"
        columns.append(f"{task}/heads{suffix}")
    return ["condition", *columns], list(rows.values())


def import_official_masks(source: Path, out: Path, names: dict[str, str], layers: int = 40,
                          heads: int = 40) -> dict[str, Path]:
    """The released SALMONN-AHAMask checkpoints as mask files (``ahamask mask import-official``)."""
    out.mkdir(parents=True, exist_ok=True)
    found = {}
    for task, stem in names.items():
        pth = source / f"{stem}.pth"
        if pth.is_file():
            target = out / f"{task}.safetensors"
            run_cli(["mask", "import-official", str(pth), "--layers", str(layers), "--heads", str(heads),
                     "-o", str(target)])
            found[task] = target
    return found


def _cell(value: object, paper: float | None = None) -> str:
    ours = "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
    return ours if paper is None else f"{ours} ({paper:.2f})"


def conditions_markdown(columns: list[str], rows: list[dict], paper: dict[str, tuple] | None = None) -> str:
    """:func:`table_rows` as a Markdown table; ``paper``: the published value of a column under each
    condition (``CONDITIONS`` order, None where unpublished), in brackets beside ours."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        idx = CONDITIONS.index(row["condition"]) if row["condition"] in CONDITIONS else None
        cells = [_cell(row.get(c), (paper or {}).get(c, (None,) * 4)[idx] if idx is not None else None)
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    note = "\n(paper values in brackets)\n" if paper else ""
    return "\n".join(lines) + "\n" + note


def write_conditions_table(out: Path, summaries: list[dict], metrics: dict[str, tuple[str, ...]],
                           paper: dict | None = None) -> str:
    """``out/table.md`` and ``out/table.csv`` of the four conditions per task; returns the Markdown."""
    import csv

    columns, rows = table_rows(summaries, metrics)
    text = conditions_markdown(columns, rows, paper)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return text
