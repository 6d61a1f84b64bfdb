"""Convert the released SALMONN-AHAMask checkpoints into the shipped mask files.

    python -m ahamask_lightning.released_masks.convert DIR_OF_PTH_FILES [--out DIR]

Each ``<task>_<dataset>.pth`` becomes ``<task>_<dataset>.safetensors`` (the conversion of
``ahamask mask import-official``, plus the model id and the source's sha256 in the metadata);
``provenance.json`` and ``README.md`` record where every file came from and how many heads it keeps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ..masking import import_official, save_mask
from . import MODEL, RELEASED_DIR

LAYERS, HEADS = 40, 40
SOURCE = "https://github.com/X-LANCE/SALMONN-AHAMask (MIT licence)"
ORDER = ("logits[layer, head]: layer 0 is the Vicuna-13B decoder layer next to the input, head j is query head "
         "j of that layer (columns j*128 to j*128+127 of o_proj's input); the released tensor holds 40 x 41 "
         "values, layer-major, and the 41st value of each layer (an unused FFN slot) is dropped")


def convert(source_dir: Path, out_dir: Path) -> dict:
    """Write one mask file per ``*.pth`` in ``source_dir`` and return the provenance record."""
    sources = sorted(source_dir.glob("*.pth"))
    if not sources:
        raise FileNotFoundError(f"{source_dir}: no released *.pth mask checkpoints found")
    out_dir.mkdir(parents=True, exist_ok=True)
    masks = {}
    for pth in sources:
        digest = hashlib.sha256(pth.read_bytes()).hexdigest()
        mf = import_official(pth, LAYERS, HEADS)
        save_mask(out_dir / f"{pth.stem}.safetensors", mf.logits, **mf.metadata, model_id=MODEL,
                  source_sha256=digest)
        per_layer = [int(n) for n in mf.mask.sum(dim=1).tolist()]
        masks[pth.stem] = {"file": f"{pth.stem}.safetensors", "source_file": pth.name, "source_sha256": digest,
                           "active": mf.active(), "of": LAYERS * HEADS, "active_per_layer": per_layer}
    record = {"model": MODEL, "layers": LAYERS, "heads": HEADS, "source": SOURCE, "order": ORDER,
              "estimator": "official (a head is on iff its logit >= 0)", "masks": masks}
    (out_dir / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")
    (out_dir / "README.md").write_text(readme(record))
    return record


def readme(record: dict) -> str:
    rows = "\n".join(f"| `{m['file']}` | `{m['source_file']}` | {m['active']} of {m['of']} | `{m['source_sha256'][:16]}...` |"
                     for m in record["masks"].values())
    return (f"# Masks released with the AHAMask paper ({record['model']})\n\n"
            f"Converted from {record['source']} by `python -m ahamask_lightning.released_masks.convert`.\n"
            f"Each file holds one tensor `logits`, float32 [{record['layers']}, {record['heads']}]; "
            f"a head is on iff its logit >= 0.\n\nOrder: {record['order']}.\n\n"
            "| file | source | heads on | source sha256 |\n|---|---|---|---|\n" + rows + "\n\n"
            "Per-layer counts and the full digests: `provenance.json`.\n\n"
            "Test one with the released SALMONN weights: `ahamask test --config experiments/asr_salmonn_official.yaml "
            "--model.init_args.mask masks/salmonn-13b/asr_librispeech.safetensors`; all ten against the paper's "
            "Table 1: `make reproduce-table1-released`. From an installed package: "
            "`ahamask_lightning.released_masks.released_mask(\"asr_librispeech\")`.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, help="folder with the released <task>_<dataset>.pth files")
    parser.add_argument("--out", type=Path, default=RELEASED_DIR / MODEL, help="where the mask files go")
    args = parser.parse_args(argv)
    record = convert(args.source_dir, args.out)
    print(f"wrote {len(record['masks'])} masks and provenance.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
