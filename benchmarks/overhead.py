"""The orchestration's cost: one paper through `paper_pipeline` (Prefect, DVC, GX, MLflow) against the same recipe
calls without them, in one process, as a ratio (target <= 1.05 at the tiny profile's size).

    python benchmarks/overhead.py                                  # ppt at its tiny profile: minutes per round
    python benchmarks/overhead.py --rounds 2 --overrides model.embed_dim=48 model.num_heads=3 train.epochs=0.5 ...

Each round runs both, the one first that went second in the round before:
- pipeline: `flows/pipeline.py:paper_pipeline(paper, profile, overrides)`, in a fresh PAPEROPS_HOME and a fresh
  Prefect result store, so no step is a cache hit. The fresh MLflow database is created before the clock starts
  (an installation has one already), and so is the Prefect API (ephemeral, started once per process).
- direct: the recipe's `load_data` (once through training's view, which withholds the test split, once more for
  `evaluate` through the full view), `build_model` + `train`, `compress` (of a copy) and `evaluate` on the same
  built dataset, reporting to an in-memory RecordingReporter.
An untimed warm-up pair runs first (--warmup), so one-time imports and initialisation fall on neither side. The
ratio is the median over rounds of each round's pipeline / direct wall time (a slow spell of a shared machine
falls on one round's pair); the CPU-time ratio beside it (this process and the subprocesses it waited for, so
not the Prefect API server's) moves less with other load on the machine. The breakdown splits the pipeline's
extra wall time by step, from the Prefect task runs' start and end times. The target is printed PASS/FAIL, not
asserted: timings belong to the machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.05
# Pipeline steps grouped by what they add to the recipe's work (task names as in tasks/).
STEP_GROUPS = {
    "data: DVC prepare + GX validate": ("prepare-data", "validate", "record-dataset", "record-validation"),
    "pipeline run bookkeeping": ("open-pipeline-run", "close-abandoned-runs", "close-pipeline-run"),
    "registry: register, promote (incl. serving smoke request), Pareto, lineage": (
        "register", "promote", "pareto-front", "store-lineage"),
}
# The steps that wrap recipe calls, and the direct timings of those calls.
RECIPE_STEPS = {"train": ("load_data", "train"), "compress": ("compress",), "evaluate": ("evaluate",)}
RECIPE_STEPS_PART = "train/compress/evaluate beyond the recipe calls (MLflow runs, model logging and loading, data " \
                    "reloads)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paper", default="ppt")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (both sides)")
    p.add_argument("--rounds", type=int, default=3, help="paired pipeline/direct rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs before the rounds")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where each round's PAPEROPS_HOME goes (default: a temporary folder, removed at the end)")
    p.add_argument("--out", default=".paperops/benchmarks/overhead.json", help="JSON results path")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be at least 1 and --warmup at least 0")
    return args


def cpu_seconds() -> float:
    """User + system CPU time of this process and of the subprocesses it has waited for (the DVC runner)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_direct(paper: str, profile: str, overrides: list[str]) -> dict[str, Any]:
    """The recipe calls the pipeline's train, compress and evaluate steps make, without Prefect or MLflow."""
    import matplotlib.pyplot as plt

    from models.common.reporting import RecordingReporter
    from recipes import built_dataset_views, get_recipe, load_config
    from recipes.base import RunModels
    from tasks.tracking import compute_device

    recipe, cfg = get_recipe(paper), load_config(paper, profile, overrides).config
    device, reporter, seconds = compute_device(), RecordingReporter(), {}
    started, cpu_started = time.perf_counter(), cpu_seconds()
    data = recipe.load_data(built_dataset_views(recipe, cfg, "train"), cfg)
    seconds["load_data"] = time.perf_counter() - started
    mark = time.perf_counter()
    dense = recipe.build_model(cfg).to(device)
    trained = recipe.train(dense, data, cfg, reporter)
    dense = dense.cpu().eval()
    seconds["train"] = time.perf_counter() - mark
    mark = time.perf_counter()
    compressed, companions = None, dict(trained.companions)
    if recipe.compression is not None:
        result = recipe.compress(copy.deepcopy(dense).to(device), data, cfg, reporter)
        compressed, companions = result.model.cpu().eval(), companions | result.companions
    seconds["compress"] = time.perf_counter() - mark
    mark = time.perf_counter()
    models = RunModels(dense.to(device), compressed.to(device) if compressed is not None else None,
                       {name: c.module.to(device).eval() for name, c in companions.items()}, trained.metrics)
    evaluation = recipe.evaluate(models, recipe.load_data(built_dataset_views(recipe, cfg, "evaluate"), cfg), cfg,
                                 reporter)
    recipe.our_figures(evaluation)
    seconds["evaluate"] = time.perf_counter() - mark
    seconds["total"], seconds["cpu"] = time.perf_counter() - started, cpu_seconds() - cpu_started
    for figure in evaluation.figures.values():
        plt.close(figure)
    return {"seconds": seconds,
            "primary_metric": {v.name: v.metrics.get(recipe.primary_metric) for v in evaluation.variants}}


def fresh_mlflow_database() -> float:
    """Creates this PAPEROPS_HOME's MLflow database (schema migrations); returns the seconds it took."""
    from tasks.tracking import configure_tracking

    started = time.perf_counter()
    configure_tracking().search_experiments()
    return time.perf_counter() - started


def task_run_seconds(flow_run_id: str, timeout_s: float = 120) -> dict[str, float]:
    """Wall seconds of each task run of the flow run, by task name (summed over runs of the same task). The API
    learns of task runs through events, so this waits until every one has ended."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if runs and all(run.end_time is not None for run in runs) or time.monotonic() > deadline:
            break
        time.sleep(1)
    seconds: dict[str, float] = {}
    for run in runs:
        if run.start_time is not None and run.end_time is not None:
            name = run.name.rsplit("-", 1)[0]  # Prefect names a task run <task name>-<suffix>
            seconds[name] = seconds.get(name, 0.0) + (run.end_time - run.start_time).total_seconds()
    return seconds


def run_pipeline(paper: str, profile: str, overrides: list[str], home: Path) -> dict[str, Any]:
    """`paper_pipeline` with `home` as PAPEROPS_HOME (its own MLflow database) and its own Prefect result store."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.pipeline import paper_pipeline
    from recipes import get_recipe

    os.environ["PAPEROPS_HOME"] = str(home)
    # configure_tracking's mlflow.set_tracking_uri exports the URI, where settings.tracking_uri would find the
    # previous round's database (main refused a URI set by the user): drop it.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    results = home / "prefect" / "results"
    results.mkdir(parents=True)
    database_s = fresh_mlflow_database()
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: results}):
        started, cpu_started = time.perf_counter(), cpu_seconds()
        state = paper_pipeline(paper, profile, overrides, return_state=True)
        total, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    summary = state.result()
    cached = [step for step, name in summary["steps"].items() if name == "Cached"]
    if cached:
        raise RuntimeError(f"steps {cached} were cache hits: the round did not measure them")
    return {"seconds": {"total": total, "cpu": cpu, "mlflow_database_untimed": database_s},
            "steps": task_run_seconds(str(state.state_details.flow_run_id)), "summary_steps": summary["steps"],
            "primary_metric": {v["variant"]: v.get(get_recipe(paper).primary_metric) for v in summary["variants"]}}


def breakdown(pipeline: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    """The pipeline's extra seconds over the direct calls, by where they go; the parts sum to the difference."""
    steps, seconds = pipeline["steps"], direct["seconds"]
    parts = {group: sum(steps.get(name, 0.0) for name in names) for group, names in STEP_GROUPS.items()}
    parts[RECIPE_STEPS_PART] = sum(steps.get(step, 0.0) - sum(seconds[call] for call in calls)
                                   for step, calls in RECIPE_STEPS.items())
    known = {name for names in STEP_GROUPS.values() for name in names} | set(RECIPE_STEPS)
    parts["other tasks"] = sum(step_s for name, step_s in steps.items() if name not in known)
    parts["Prefect flow and task engine (outside any task)"] = pipeline["seconds"]["total"] - sum(steps.values())
    return parts


def measure_pair(args: argparse.Namespace, home: Path, pipeline_first: bool) -> dict[str, Any]:
    """One round: the pipeline (in `home`) and the direct calls, in the given order."""
    order = ("pipeline", "direct") if pipeline_first else ("direct", "pipeline")
    measured = {side: run_pipeline(args.paper, args.profile, args.overrides, home) if side == "pipeline"
                else run_direct(args.paper, args.profile, args.overrides) for side in order}
    shutil.rmtree(home, ignore_errors=True)
    pipeline, direct = measured["pipeline"], measured["direct"]
    return {"order": list(order), "pipeline": pipeline, "direct": direct,
            "ratio": pipeline["seconds"]["total"] / direct["seconds"]["total"],
            "cpu_ratio": pipeline["seconds"]["cpu"] / direct["seconds"]["cpu"],
            "breakdown": breakdown(pipeline, direct),
            "same_primary_metric": pipeline["primary_metric"] == direct["primary_metric"]}


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    from prefect import get_client

    from models.common.profiling import device_fingerprint
    from recipes import load_config

    resolved = load_config(args.paper, args.profile, args.overrides)
    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.hello()  # starts the ephemeral API unless PREFECT_API_URL names a server
    api_start_s = time.perf_counter() - started
    warmups = []
    for index in range(args.warmup):
        warmups.append(measure_pair(args, work_dir / f"warmup-{index}", pipeline_first=index % 2 == 1))
        print(f"  warm-up {index + 1}/{args.warmup}: pipeline {warmups[-1]['pipeline']['seconds']['total']:.1f} s, "
              f"direct {warmups[-1]['direct']['seconds']['total']:.1f} s (not counted)", file=sys.stderr)
    rounds = []
    for index in range(args.rounds):
        rounds.append(measure_pair(args, work_dir / f"round-{index}", pipeline_first=index % 2 == 1))
        print(f"  round {index + 1}/{args.rounds}: pipeline {rounds[-1]['pipeline']['seconds']['total']:.1f} s, "
              f"direct {rounds[-1]['direct']['seconds']['total']:.1f} s, ratio {rounds[-1]['ratio']:.3f}",
              file=sys.stderr)
    ratio = statistics.median(r["ratio"] for r in rounds)
    breakdown_s = {part: statistics.median(r["breakdown"][part] for r in rounds) for part in rounds[0]["breakdown"]}
    return {
        "paper": args.paper, "profile": args.profile, "overrides": args.overrides, "warmup": args.warmup,
        "config_digest": resolved.digest(), "rounds": rounds, "warmup_rounds": warmups,
        "command": " ".join([sys.executable] + sys.argv),
        "device": device_fingerprint(), "prefect_api_start_s_untimed": api_start_s,
        "median_pipeline_s": statistics.median(r["pipeline"]["seconds"]["total"] for r in rounds),
        "median_direct_s": statistics.median(r["direct"]["seconds"]["total"] for r in rounds),
        "ratio_median_of_paired": ratio,
        "cpu_ratio_median_of_paired": statistics.median(r["cpu_ratio"] for r in rounds),
        "breakdown_median_s": breakdown_s,
        # What runs no recipe code, so depends little on how fast the machine runs the recipe at the moment.
        "orchestration_only_median_s": sum(s for part, s in breakdown_s.items() if part != RECIPE_STEPS_PART),
        "target": {"ratio": f"<= {TARGET_RATIO}", "pass": ratio <= TARGET_RATIO},
    }


def markdown(result: dict[str, Any]) -> str:
    device = result["device"]
    lines = [f"{result['paper']} / {result['profile']}"
             + (f" with {' '.join(result['overrides'])}" if result["overrides"] else "")
             + f", {len(result['rounds'])} rounds after {result['warmup']} untimed warm-up pair(s), "
             f"{device['device']} ({device['device_name']}, "
             f"{device['threads']} threads)", "",
             "| round | order | pipeline s | direct s | ratio | CPU-time ratio | same metric |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for index, r in enumerate(result["rounds"]):
        lines.append(f"| {index + 1} | {' then '.join(r['order'])} | {r['pipeline']['seconds']['total']:.1f} "
                     f"| {r['direct']['seconds']['total']:.1f} | {r['ratio']:.3f} | {r['cpu_ratio']:.3f} "
                     f"| {r['same_primary_metric']} |")
    lines += ["", "| where the pipeline's extra time goes (median over rounds) | s |", "| --- | --- |"]
    lines += [f"| {part} | {seconds:.1f} |" for part, seconds in result["breakdown_median_s"].items()]
    database_s = statistics.median(r["pipeline"]["seconds"]["mlflow_database_untimed"] for r in result["rounds"])
    lines += [f"| (all but the recipe steps' row: steps and engine time that run no recipe code) "
              f"| {result['orchestration_only_median_s']:.1f} |"]
    lines += ["", f"untimed: Prefect API start {result['prefect_api_start_s_untimed']:.1f} s, a fresh MLflow "
              f"database {database_s:.1f} s",
              f"ratio pipeline / direct = {result['ratio_median_of_paired']:.3f} (median of paired rounds; target "
              f"{result['target']['ratio']}): {'PASS' if result['target']['pass'] else 'FAIL'}; CPU-time ratio "
              f"{result['cpu_ratio_median_of_paired']:.3f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        print("unset MLFLOW_TRACKING_URI: each round registers into a fresh local MLflow database", file=sys.stderr)
        return 2
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="paperops-overhead-"))
    # Prefect reads PREFECT_HOME, which apply_runtime_defaults derives from PAPEROPS_HOME, when it is imported:
    # both point into the work dir before anything imports prefect.
    os.environ["PAPEROPS_HOME"] = str(work_dir / "shared")
    from settings import apply_runtime_defaults
    from settings.config import ConfigError

    apply_runtime_defaults()
    try:
        result = run(args, work_dir)
    except (ConfigError, KeyError) as exc:  # a bad override; an unknown paper (KeyError from the recipe registry)
        print(exc.args[0], file=sys.stderr)
        return 2
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(markdown(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
