"""`python -m hpcadapt.data fetch [+experiment=NAME] [overrides...]`: download an experiment's hub datasets.

Every source of the experiment's mixes that names its origin (`hub: {id, split, revision,
fields, convert}`, see conf/data/paper_mix.yaml) and whose local file is missing is
downloaded at a pinned commit, converted to the fields its stages read, and written to its
path atomically, with `<file>.source.json` beside it recording the commit, split and row
count. Files already there are left alone. Offline (HF_HUB_OFFLINE=1, or no network) it
prints what it would fetch and from where, and exits 0.

Compute nodes usually have no network: run this once on a login or transfer node, with the
same `data_root` (HPCADAPT_DATA) the jobs will read.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcadapt import hub
from hpcadapt.atomic import replacing, write_json_atomic
from hpcadapt.config import ConfigError
from hpcadapt.errors import DataError, HpcadaptError
from hpcadapt.stages import kinds

USAGE = "usage: python -m hpcadapt.data fetch [+experiment=NAME] [overrides...]"


@dataclass(frozen=True)
class Fetch:
    """One local file and the hub dataset it comes from."""

    key: str  # data.mixes.NAME.sources[i]
    path: Path
    origin: dict[str, Any]
    fields: tuple[str, ...]  # what the mix's stages read

    @property
    def present(self) -> bool:
        return self.path.is_file()


def fetches(cfg: Any) -> list[Fetch]:
    """The sources of `cfg` that name a hub origin, with the fields their stages need."""
    from omegaconf import OmegaConf

    found = []
    for mix_name, mix in cfg.data.mixes.items():
        users = sorted({stage.kind for stage in cfg.stages.values() if stage.data == mix_name})
        needed = tuple(dict.fromkeys(f for kind in users for f in kinds.get(kind).data_fields))
        for i, source in enumerate(mix.sources):
            if source.hub is None:
                continue
            origin = OmegaConf.to_container(source.hub, resolve=True)
            found.append(Fetch(f"data.mixes.{mix_name}.sources[{i}]", Path(source.path).expanduser().resolve(),
                               origin, needed))
    return found


def convert_rows(dataset, origin: dict[str, Any], fields: tuple[str, ...]):
    """Rename columns to the stage's fields, apply the origin's conversion, keep only `fields`."""
    renames = {column: name for name, column in (origin.get("fields") or {}).items() if column != name}
    missing = [c for c in renames if c not in dataset.column_names]
    if missing:
        raise DataError(f"hub dataset {origin['id']} has no column(s) {missing}; it has {dataset.column_names}")
    if renames:
        dataset = dataset.rename_columns(renames)
    if origin.get("convert") == "implicit_prompt":
        dataset = dataset.map(split_shared_prompt, remove_columns=[c for c in ("prompt",) if c in dataset.column_names])
        dataset = dataset.filter(lambda row: row["prompt"] is not None)
    elif origin.get("convert"):
        raise ConfigError(f"hub dataset {origin['id']}: unknown convert {origin['convert']!r} (known: implicit_prompt)")
    absent = [f for f in fields if f not in dataset.column_names]
    if absent:
        raise DataError(f"hub dataset {origin['id']} has no field(s) {absent} after conversion (columns: "
                        f"{dataset.column_names}); map them with hub.fields: {{FIELD: COLUMN}}")
    return dataset.select_columns(list(fields))


def split_shared_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """Whole `chosen`/`rejected` conversations -> explicit `prompt` plus one reply each.

    Rows whose two conversations differ before their last turn get prompt None (dropped)."""
    chosen, rejected = row["chosen"], row["rejected"]
    if not chosen or not rejected or chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant":
        return {"prompt": None, "chosen": chosen, "rejected": rejected}
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def fetch_one(item: Fetch) -> dict[str, Any]:
    """Download, convert and write one file; returns what `<file>.source.json` records."""
    import datasets

    origin = item.origin
    revision = hub.pin(origin["id"], "dataset", origin.get("revision"), f"{item.key}.hub.revision")
    raw = datasets.load_dataset(origin["id"], origin.get("subset"), split=origin.get("split", "train"),
                                revision=revision)
    rows = convert_rows(raw, origin, item.fields)
    record = {"id": origin["id"], "subset": origin.get("subset"), "split": origin.get("split", "train"),
              "revision": revision, "rows": len(rows), "rows_in_hub_split": len(raw), "fields": list(item.fields),
              "convert": origin.get("convert"), "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with replacing(item.path) as tmp:
        rows.to_json(str(tmp), lines=True, force_ascii=False)
        write_json_atomic(Path(f"{item.path}.source.json"), record)
    return record


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from hpcadapt.__main__ import conf_dir, with_default_experiment
    from hpcadapt.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=with_default_experiment(overrides))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "fetch":
        sys.exit(USAGE)
    try:
        cfg = compose(argv[1:])
        items = fetches(cfg)
        if not items:
            print("hpcadapt: this experiment's data names no hub origin (hub: ...); nothing to fetch")
            return
        for item in items:
            state = "present" if item.present else "missing"
            print(f"  {item.origin['id']:<40} {item.origin.get('split', 'train'):<10} "
                  f"{item.origin.get('revision') or 'main':<12} -> {item.path} ({state})")
        todo = [item for item in items if not item.present]
        if not todo:
            print("hpcadapt: every file is present; nothing to fetch")
            return
        if hub.offline():
            print(f"hpcadapt: offline (HF_HUB_OFFLINE=1): {len(todo)} file(s) would be fetched; run this where the "
                  f"hub is reachable")
            return
        for item in todo:
            started = time.time()
            record = fetch_one(item)
            print(f"hpcadapt: wrote {item.path}: {record['rows']:,} rows of {record['id']}@{record['revision'][:12]} "
                  f"in {time.time() - started:.0f} s")
    except HpcadaptError as e:
        print(f"hpcadapt: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
