"""Fine-tuning the shipped models on a user's faces: (a) shipped as is, (b) from scratch, (c) fine-tuned.

    python benchmarks/finetune.py [--tasks emotion,keypoints] [--work prepared/bench-finetune] [--threads 2]

The faces a "user" brings are faces the shipped models were never trained on (scripts/build_release_models.py
prepares both with seed 0):
- emotion (`builtin:emotion-fer7`, trained on FER2013's Training rows, its val a share of them): FER2013's
  PublicTest, 3,589 faces, is the only part it never saw. It is split once, seeded: 1,000 test faces
  (reported), 400 val faces (choose the learning rate and the epoch), the remaining 2,189 the pool the
  N training faces are drawn from (nested: the 200 are in the 1,000). N = 5,000 cannot be drawn from unseen
  faces, so the largest N is the whole pool.
- keypoints (`builtin:keypoints`, trained on the people of its train split): the 57 people of its val and
  test splits (val chose its epoch, no gradient step saw them): 25 test people, 8 val people and 24 pool
  people; N people = 6, 12, 24, nested.
For each N: (b) the release recipe from random weights, (c) the finetune recipe from the shipped model:
as it is, at a lower learning rate, and with its BatchNorm statistics kept (--freeze-bn); the one with the
better val metric kept
(macro-F1 / RMSE, as `emokp train` picks checkpoints). Every run keeps its best epoch by that val metric;
test is evaluated once per finished model, like `emokp evaluate` (flip TTA), and chooses nothing. Runs are
one-process (`--no-ray`) on CPU; epochs are cut to what a shared 2-core machine allows (PLAN: scratch 6 / 12
epochs, fine-tuning 3 / 6 for emotion / keypoints). A finished run whose config is unchanged is reused.
Prints a table and saves benchmarks/results/finetune_<tasks>.json after every N.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for the harness
from benchmarks.harness import REPO, result_path, save
from emokp_ray.data.prepare import prepare_dataset
from emokp_ray.data.schema import SCHEMA, DatasetInfo, DatasetWriter, count_summary, iter_split, read_info
from emokp_ray.evaluation.evaluate import evaluate_checkpoint
from emokp_ray.labels import emotion_scheme
from emokp_ray.training.config import TrainConfig
from emokp_ray.training.recipes import config_from_recipe, recipe_values
from emokp_ray.training.train import run_training

SHARED = REPO.parent / "shared" / "data"
FER = SHARED / "fer2013" / "fer2013.csv.gz"
KEYPOINTS = SHARED / "facial-keypoints" / "training.csv.gz"
PEOPLE = SHARED / "facial-keypoints" / "training_people.csv"
SEED = 0

# task -> shipped model, the N to train on, scratch and fine-tuning settings (TrainConfig fields)
PLAN: dict[str, dict[str, Any]] = {
    "emotion": {
        "builtin": "builtin:emotion-fer7",
        "sizes": (200, 1000, 2189),
        "scratch": {"epochs": 6},
        "finetune_options": ({}, {"lr": 5e-5}, {"freeze_bn": True}),  # the recipe's lr 3e-4, a lower one, BN kept
        "finetune": {"epochs": 3},
    },
    "keypoints": {
        "builtin": "builtin:keypoints",
        "sizes": (6, 12, 24),  # people
        "scratch": {"epochs": 12},
        "finetune_options": ({}, {"lr": 3e-5}, {"freeze_bn": True}),  # the recipe's lr 2e-4, a lower one, BN kept
        "finetune": {"epochs": 6},
    },
}


def _read_split(data: Path, split: str) -> pa.Table:
    return pa.concat_tables(list(iter_split(data, split)))


def _write(out: Path, parts: dict[str, pa.Table], scheme: str | None, task: str) -> Path:
    """A prepared data set from row tables per split (the split column rewritten)."""
    tables = [
        t.set_column(t.schema.get_field_index("split"), "split", pa.array([s] * t.num_rows, pa.string()))
        for s, t in parts.items()
    ]
    merged = pa.concat_tables(tables)
    table = pa.Table.from_arrays([merged[name].cast(SCHEMA.field(name).type) for name in SCHEMA.names], schema=SCHEMA)
    classes = emotion_scheme(scheme).classes if scheme else None
    with DatasetWriter(out) as writer:
        writer.write(table)
        writer.info = DatasetInfo(
            tasks=[task],
            scheme=scheme,
            counts=count_summary(table, classes),
            sources=sorted(set(table["source"].to_pylist())),
            image_sizes=[
                list(size) for size in sorted(set(zip(table["height"].to_pylist(), table["width"].to_pylist())))
            ],
            extra={"made_by": "benchmarks/finetune.py"},
        )
    return out


def emotion_sets(work: Path) -> dict[int, Path]:
    """PublicTest (fer7) -> test 1,000 / val 400 / pool; one data set per N (train = the first N of the pool)."""
    base = work / "fer7"
    if not (base / "dataset.json").is_file():
        prepare_dataset([FER], base, scheme="fer7", seed=SEED)
    unseen = _read_split(base, "test")  # PublicTest: never trained on by builtin:emotion-fer7
    order = np.random.default_rng(SEED).permutation(unseen.num_rows)
    test, val, pool = unseen.take(order[:1000]), unseen.take(order[1000:1400]), unseen.take(order[1400:])
    return {
        n: _write(work / f"emotion-n{n}", {"train": pool.slice(0, n), "val": val, "test": test}, "fer7", "emotion")
        for n in PLAN["emotion"]["sizes"]
    }


def keypoint_sets(work: Path) -> dict[int, Path]:
    """The shipped model's val + test people -> 25 test / 8 val / pool people; one data set per N people."""
    base = work / "kp"
    if not (base / "dataset.json").is_file():
        prepare_dataset([KEYPOINTS], base, seed=SEED, people=PEOPLE)
    unseen = pa.concat_tables([_read_split(base, "val"), _read_split(base, "test")])
    people = {}
    for line in PEOPLE.read_text().splitlines()[1:]:
        row, person = line.split(",")
        people[int(row)] = person
    # row_id is the file line (header = line 1): data row = line - 2
    who = np.array([people[int(r) - 2] for r in unseen["row_id"].to_pylist()])
    names = np.random.default_rng(SEED).permutation(sorted(set(who)))
    test_p, val_p, pool_p = names[:25], names[25:33], names[33:]

    def rows(persons) -> pa.Table:
        return unseen.filter(pa.array(np.isin(who, persons)))

    test, val = rows(test_p), rows(val_p)
    return {
        n: _write(work / f"keypoints-n{n}", {"train": rows(pool_p[:n]), "val": val, "test": test}, None, "keypoints")
        for n in PLAN["keypoints"]["sizes"]
    }


def _same_config(saved: dict[str, Any], cfg: TrainConfig) -> bool:
    """The saved run's config is cfg's (a field the saved one lacks counts where cfg has its default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    now = cfg.to_dict()
    return all(saved.get(k, defaults[k]) == v for k, v in now.items()) and set(saved) <= set(now)


def _train(task: str, data: Path, out: Path, recipe: str, **overrides: Any) -> tuple[Path, float]:
    cfg = config_from_recipe(task, str(data), str(out), recipe=recipe, no_ray=True, **overrides)
    done = out / "best" / "meta.json"
    if done.is_file() and _same_config(json.loads((out / "config.json").read_text()), cfg):
        print(f"    {out.name}: finished run reused", flush=True)  # the same config ran to the end before
        return out / "best", float(json.loads(done.read_text())["metrics"][cfg.metric[0]])
    if out.exists():
        shutil.rmtree(out)
    outcome = run_training(cfg, log=lambda line: print(f"    {line}", flush=True))
    return outcome.best_checkpoint, float(outcome.best_metric or float("nan"))


def _test(checkpoint: str | Path, data: Path, out: Path) -> dict[str, Any]:
    report = evaluate_checkpoint(str(checkpoint), str(data), str(out), split="test").report
    keys = ("n", "rmse_px", "mean_shape_rmse_px") if report["task"] == "keypoints" else ("n", "accuracy", "macro_f1")
    return {k: report.get(k) for k in keys}


def _val(checkpoint: str | Path, data: Path, out: Path) -> float:
    """The shipped model's val figure in the metric that picks checkpoints (macro-F1 / RMSE), for reference."""
    report = evaluate_checkpoint(str(checkpoint), str(data), str(out), split="val", flip_tta=False).report
    return float(report["rmse_px"] if report["task"] == "keypoints" else report["macro_f1"])


def run_task(task: str, work: Path) -> Iterator[dict[str, Any]]:
    """One row per N, as soon as it is measured."""
    plan = PLAN[task]
    sets = emotion_sets(work) if task == "emotion" else keypoint_sets(work)
    for n, data in sets.items():
        info = read_info(data)
        n_train = info.counts["train"]["rows"]
        batch = 32 if n_train < 1000 else None  # a few hundred faces: more than a handful of steps per epoch
        print(
            f"{task} N={n}: {n_train} training faces, {info.counts['val']['rows']} val, {info.counts['test']['rows']} test",
            flush=True,
        )
        row: dict[str, Any] = {"task": task, "N": n, "train_faces": n_train}
        started = time.perf_counter()
        row["shipped"] = _test(plan["builtin"], data, work / "reports" / f"{task}-n{n}-shipped")
        row["shipped"]["val"] = _val(plan["builtin"], data, work / "reports" / f"{task}-n{n}-shipped-val")
        ckpt, val = _train(
            task, data, work / "runs" / f"{task}-n{n}-scratch", "release", batch_size=batch, **plan["scratch"]
        )
        row["scratch"] = {"val": val, **_test(ckpt, data, work / "reports" / f"{task}-n{n}-scratch")}
        candidates = []
        for options in plan["finetune_options"]:
            lr = options.get("lr", recipe_values(task, "finetune")["lr"])
            name = f"lr {lr:g}" + (", frozen BN" if options.get("freeze_bn") else "")
            suffix = "-frozenbn" if options.get("freeze_bn") else ""
            ckpt, val = _train(
                task,
                data,
                work / "runs" / f"{task}-n{n}-ft-lr{lr:g}{suffix}",
                "finetune",
                init=plan["builtin"],
                batch_size=batch,
                **{"lr": lr, **options, **plan["finetune"]},
            )
            candidates.append((val, name, ckpt))
        sign = 1.0 if task == "keypoints" else -1.0  # keypoints: lower val RMSE is better
        val, chosen, ckpt = min(candidates, key=lambda c: sign * c[0])
        row["finetuned"] = {
            "val": val,
            "chosen": chosen,
            "val_by_option": {c[1]: c[0] for c in candidates},
            **_test(ckpt, data, work / "reports" / f"{task}-n{n}-finetuned"),
        }
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(row), flush=True)
        yield row


def _figure(task: str, result: dict[str, Any]) -> str:
    return f"{result['rmse_px']:.3f} px" if task == "keypoints" else f"{100 * result['accuracy']:.1f}%"


def _table_row(row: dict[str, Any]) -> str:
    task = row["task"]
    a, b, c = row["shipped"], row["scratch"], row["finetuned"]
    key = "rmse_px" if task == "keypoints" else "accuracy"
    sign = -1 if task == "keypoints" else 1
    beats = sign * c[key] > sign * a[key] and sign * c[key] > sign * b[key]
    return (
        f"| {task} | {row['N']} | {_figure(task, a)} | {_figure(task, b)} | {_figure(task, c)} ({c['chosen']}) "
        f"| {'yes' if beats else 'NO'} |"
    )


def _save(out: Path, rows: list[dict[str, Any]], started: float, threads: int) -> None:
    result = {"rows": rows, "seconds": round(time.perf_counter() - started, 1), "torch_threads": threads}
    save(result, out, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="emotion,keypoints")
    parser.add_argument("--work", default=str(REPO / "prepared" / "bench-finetune"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/finetune_<tasks>.json)")
    args = parser.parse_args()
    if not FER.is_file() or not KEYPOINTS.is_file():
        sys.exit(f"finetune benchmark: {SHARED} is missing (needs fer2013.csv.gz and training.csv.gz)")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    started = time.perf_counter()
    out = Path(args.out) if args.out else result_path(f"finetune_{args.tasks.replace(',', '_')}")
    rows: list[dict[str, Any]] = []
    for task in args.tasks.split(","):
        for row in run_task(task, work):  # saved after every N: a cut-short run keeps what it measured
            rows.append(row)
            _save(out, rows, started, args.threads)
    print("\n| task | N | (a) shipped | (b) scratch | (c) fine-tuned (val's choice) | (c) beats both |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(_table_row(row))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
