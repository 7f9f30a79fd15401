"""The `paperops` command: list the papers, run a paper's pipeline, build datasets."""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from settings import apply_runtime_defaults, tracking_uri

if TYPE_CHECKING:
    from recipes.base import SummaryColumn

app = typer.Typer(help="paperops: research papers from raw data to a served model (Prefect, MLflow, DVC, GX).",
                  no_args_is_help=True, add_completion=False)
# Logs and CI are not terminals: give the tables room instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 140)
PORT = {"min": 1, "max": 65535}  # typer bounds of every --port: a bad one is a usage error (exit 2)


def print_error(headline: str, detail: object, on_new_line: bool = False) -> None:
    """`headline` in red, then `detail` (an exception's message) exactly as it is: no markup, no emoji codes, no
    line wrapping, so `[train]` or `[share=0, label=7]` in a message reach the user."""
    console.print(Text.assemble((headline, "red"), "\n" if on_new_line else " ", str(detail)), soft_wrap=True)


def print_verbatim(text: str, style: str = "") -> None:
    console.print(Text(text, style=style), soft_wrap=True)


@app.command("list")
def list_papers() -> None:
    """Show the registered papers (recipes) and their config profiles."""
    from recipes import available_recipes, config_path
    from settings.config import ConfigError, profiles

    table = Table(title="registered papers")
    for column in ("paper", "title", "compression", "primary metric", "profiles"):
        table.add_column(column)
    for name, cls in available_recipes().items():
        try:
            names = ", ".join(profiles(config_path(name)))
        except ConfigError as exc:
            names = Text(str(exc), style="red")
        table.add_row(name, cls.title, cls.compression, cls.primary_metric, names)
    console.print(table)


@app.command()
def data(stages: list[str] = typer.Argument(None, help="DVC stages to build; default: every stage")) -> None:
    """Build (or pull) datasets with DVC and push them to the default remote."""
    apply_runtime_defaults()
    from settings import project_root
    from tasks.data import DataInfrastructureError, DataStageError, reproduce_dataset
    import yaml

    names = stages or list((yaml.safe_load((project_root() / "dvc.yaml").read_text()) or {}).get("stages", {}))
    for stage in names:
        try:
            ref = reproduce_dataset(stage, project_root())
        except (DataStageError, DataInfrastructureError) as exc:
            print_error(f"{stage}: the dataset could not be prepared:", exc, on_new_line=True)
            raise typer.Exit(4) from exc
        console.print(Text.assemble(("✓", "green"), f" {stage}: {ref.path} (md5 {ref.md5})"), soft_wrap=True)


@app.command()
def run(
    paper: str = typer.Argument(..., help="registered paper, see `paperops list`, or `all` for every paper"),
    profile: str = typer.Option("tiny", "--profile", "-p", help="profile of configs/<paper>.yaml: tiny (CPU "
                                "minutes) or another the paper's config has (`paperops list` shows them)"),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="config override key=value (repeatable)"),
    accept_data_change: bool = typer.Option(False, "--accept-data-change", help="accept a dataset that drifted "
                                            "beyond its bounds from its last validated version (recorded on the "
                                            "run and the registered versions as gx.data_change_accepted)"),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="with `all`: papers at once, each its own "
                                    "`paperops run <paper>` process with an equal share of the cores; a paper's "
                                    "output is shown when it finishes (make run: 2)"),
    summary_file: Optional[str] = typer.Option(None, "--summary-file", hidden=True,
                                               help="also write the runs' summaries here as JSON"),
) -> None:
    """Run the paper's pipeline: prepare data -> validate -> train -> compress -> evaluate -> register -> promote.
    `all` runs every registered paper (in turn, or `--concurrency` at once) and ends with one table: each method
    against its baseline. Exits 3 when a dataset fails validation (drift included, unless accepted), 4 when it cannot
    be prepared, 6 when the gate rejected a candidate (with `all`: any paper's, after running every paper; with
    `--concurrency`, every paper runs whatever another's exit, and the first non-zero exit in paper order is the
    command's)."""
    apply_runtime_defaults()
    from recipes import available_recipes, check_config, load_config
    from settings.config import ConfigError

    papers = list(available_recipes()) if paper == "all" else [paper]
    expected_minutes: dict[str, float] = {}
    try:
        if paper == "all" and overrides:
            raise ConfigError("--set applies to one paper's config: run the papers one by one to override keys")
        for name in papers:  # fail fast, before Prefect starts, on a bad config or a knob the model cannot take
            resolved = load_config(name, profile, overrides or [])
            check_config(resolved)
            expected_minutes[name] = resolved.config.runtime.expected_minutes or 0.0
    except (ConfigError, KeyError) as exc:
        print_error("config error:", exc.args[0] if isinstance(exc, KeyError) else exc)
        raise typer.Exit(2) from exc

    quiet_library_logs()
    if len(papers) > 1 and concurrency > 1:
        # Longest first: whichever starts last should be short, so no long run is left alone on a free core.
        start_order = sorted(papers, key=lambda name: -expected_minutes[name])
        _run_papers_in_processes(papers, start_order, profile, accept_data_change, concurrency)
        return
    summaries = []
    for name in papers:
        summaries.append(_run_pipeline(name, profile, list(overrides or []), accept_data_change))
        print_summary(summaries[-1])
        if summary_file:
            Path(summary_file).write_text(json.dumps(summaries), encoding="utf-8")
    if len(summaries) > 1:
        print_headlines(summaries)
    rejected = [s["paper"] for s in summaries if s["promotion"] and not s["promotion"]["promoted"]]
    if rejected:
        print_verbatim(f"the promotion gate rejected the candidate of {', '.join(rejected)}", "yellow")
        raise typer.Exit(6)


def _run_papers_in_processes(papers: list[str], start_order: list[str], profile: str, accept_data_change: bool,
                             concurrency: int) -> None:
    """`paperops run <paper>` per paper, started in `start_order`, `concurrency` processes at once, the cores shared
    out between them
    (settings.threads_per_process): the tiny profiles' models are too small for two threads to keep two cores
    busy, while one process per core does. The processes share one Prefect API and a store whose tables and
    experiments exist before they start (on a fresh machine, two of them would race to create the same databases).
    Each paper's output is printed whole when it finishes; then the cross-paper table; the exit is the first
    non-zero one in paper order (6: only gate rejections)."""
    import os
    import signal
    import subprocess
    import tempfile
    import time

    from prefect.settings import PREFECT_API_URL

    from settings import threads_per_process
    from tasks.reproduce import prepare_tracking

    for name in papers:
        prepare_tracking(name)
    env = os.environ | {"OMP_NUM_THREADS": threads_per_process(concurrency)}
    server = None
    if not PREFECT_API_URL.value():
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
        env["PREFECT_API_URL"] = server.api_url
    exits: dict[str, int] = {}
    summaries: dict[str, dict[str, Any]] = {}
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the papers
    with tempfile.TemporaryDirectory(prefix="paperops-run-all-") as scratch:
        pending, running = list(start_order), {}
        try:
            while pending or running:
                while pending and len(running) < concurrency:
                    name = pending.pop(0)
                    log = open(Path(scratch) / f"{name}.log", "w+", encoding="utf-8")  # closed when it finishes
                    command = [sys.executable, "-m", "paperops", "run", name, "--profile", profile,
                               "--summary-file", str(Path(scratch) / f"{name}.json"),
                               *(["--accept-data-change"] if accept_data_change else [])]
                    running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
                    print_verbatim(f"{name}: running ({len(running)} of {concurrency} at once, "
                                   f"{env['OMP_NUM_THREADS']} thread(s) each)")
                for name, (process, log) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[name]
                    exits[name] = process.returncode
                    log.seek(0)
                    sys.stdout.write(log.read())
                    sys.stdout.flush()
                    log.close()
                    result = Path(scratch) / f"{name}.json"
                    if result.exists():
                        summaries[name] = json.loads(result.read_text(encoding="utf-8"))[0]
                time.sleep(0.5)
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            for process, log in running.values():  # interrupted: no paper keeps running without its parent
                process.terminate()  # Prefect's engine may outlive a first SIGTERM: killed after 10 s
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                log.close()
            if server is not None:
                server.stop()
    if len(summaries) > 1:
        print_headlines([summaries[name] for name in papers if name in summaries])
    failed = [name for name in papers if exits[name] not in (0, 6)]
    if failed:
        print_verbatim(f"run all: {', '.join(f'{name} exited {exits[name]}' for name in failed)} (output above)",
                       "red")
        raise typer.Exit(exits[failed[0]])
    rejected = [name for name in papers if exits[name] == 6]
    if rejected:
        print_verbatim(f"the promotion gate rejected the candidate of {', '.join(rejected)}", "yellow")
        raise typer.Exit(6)


def _run_pipeline(paper: str, profile: str, overrides: list[str], accept_data_change: bool) -> dict[str, Any]:
    """One paper's pipeline with progress bars; a config error exits 2, data errors 3 (validation) or 4 (stage)."""
    from flows.pipeline import paper_pipeline
    from settings.config import ConfigError
    from tasks.data import DataInfrastructureError, DataStageError
    from tasks.progress import add_progress_listener, remove_progress_listener
    from tasks.validate import DataReferenceError, DataValidationError

    quiet_library_logs()  # after the imports: mlflow sets its own log level when it is imported
    hide_handled_failures(ConfigError, DataValidationError, DataReferenceError, DataStageError, DataInfrastructureError)
    with Progress(TextColumn("{task.fields[step]:<10}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False) as bars:
        rows: dict[str, Any] = {}

        def show(step: str, done: int, total: int, description: str) -> None:
            if step not in rows:
                rows[step] = bars.add_task(description, total=total, step=step)
            bars.update(rows[step], completed=done, total=total, description=description)

        add_progress_listener(show)
        try:
            return paper_pipeline(paper, profile, overrides, accept_data_change=accept_data_change)
        except ConfigError as exc:
            print_error(f"{paper}: config error — nothing was trained or registered:", exc, on_new_line=True)
            raise typer.Exit(2) from exc
        except (DataValidationError, DataReferenceError) as exc:
            print_error(f"{paper}: data validation failed — nothing was trained or registered:", exc, on_new_line=True)
            if isinstance(exc, DataValidationError) and exc.drifted:
                print_verbatim("the dataset drifted from its last validated version; if the change is intended, run "
                               "again with --accept-data-change", "yellow")
            raise typer.Exit(3) from exc
        except (DataStageError, DataInfrastructureError) as exc:
            print_error(f"{paper}: the dataset could not be prepared — nothing was trained or registered:", exc,
                        on_new_line=True)
            raise typer.Exit(4) from exc
        finally:
            remove_progress_listener(show)


@app.command()
def promote(
    paper: str = typer.Argument(..., help="registered paper, see `paperops list`"),
    version: Optional[str] = typer.Option(None, "--version", "-v", help="registry version; default: newest compressed"),
) -> None:
    """Run the promotion gate on a version: data valid, metric within threshold of its parent, cost ratio below
    threshold, serving smoke request answered. Passing moves @challenger and @champion to it."""
    apply_runtime_defaults()
    from recipes import get_recipe
    from settings.config import ConfigError

    try:
        get_recipe(paper)
    except KeyError as exc:
        print_error("cannot promote:", exc.args[0])
        raise typer.Exit(2) from exc
    from flows.promote import promote_flow
    from tasks.promote import PromotionRequestError

    quiet_library_logs()
    hide_handled_failures(PromotionRequestError, ConfigError)
    try:
        decision = promote_flow(paper, version)
    except PromotionRequestError as exc:
        print_error("cannot promote:", exc)
        raise typer.Exit(5) from exc
    except ConfigError as exc:  # the profile the version was trained with is no longer in the config
        print_error("cannot promote:", exc)
        raise typer.Exit(2) from exc
    print_verbatim(f"gate: {decision['evidence']}")
    if decision["promoted"]:
        console.print(f"[green]@{decision['alias']} -> v{decision['version']}[/] (was "
                      f"{('v' + decision['previous_version']) if decision['previous_version'] else 'unset'})")
        return
    console.print(f"[yellow]v{decision['version']} rejected; @{decision['alias']} stays at "
                  f"{('v' + decision['previous_version']) if decision['previous_version'] else 'unset'}:[/]")
    for reason in decision["reasons"]:
        print_verbatim(f"  - {reason}")
    raise typer.Exit(6)


@app.command()
def reproduce(
    paper: str = typer.Argument(..., help="registered paper, see `paperops list`"),
    seeds: Optional[int] = typer.Option(None, "--seeds", "-n", help="seeds 0..N-1, one pipeline run each; default: "
                                        "the profile's reproduce.seeds (5 unless the config says otherwise)"),
    profile: str = typer.Option("tiny", "--profile", "-p", help="profile of configs/<paper>.yaml"),
    overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="config override key=value for every "
                                                  "seed (repeatable), after the profile's reproduce.overrides"),
    deployed: bool = typer.Option(False, "--deployed", help="run every seed as a deployment child on the gpu pool "
                                  "(needs PREFECT_API_URL and `paperops deploy`); default: in this process"),
    concurrency: int = typer.Option(2, "--concurrency", min=1, help="seeds at once in process, each in its own "
                                    "worker process"),
) -> None:
    """Run the paper's profile once per seed as parallel Prefect flow runs that register nothing, then aggregate them
    into one `reproduction` MLflow run: every variant's mean and 95 % t interval over seeds, and every decisive
    criterion and the headline on the paired per-seed differences, with their verdicts."""
    apply_runtime_defaults()
    from settings.config import ConfigError
    from tasks.reproduce import ReproductionError, reproduction_plan

    try:
        plan = reproduction_plan(paper, profile, seeds, overrides or [])  # fail fast, before Prefect starts
    except (ConfigError, KeyError) as exc:
        print_error("config error:", exc.args[0] if isinstance(exc, KeyError) else exc)
        raise typer.Exit(2) from exc
    from flows.reproduce import reproduce as run_reproduction

    quiet_library_logs()  # after the imports: mlflow sets its own log level when it is imported
    hide_handled_failures(ReproductionError)
    console.print(f"{paper} / {profile}: seeds {plan.seeds}"
                  + (f", overrides {plan.overrides}" if plan.overrides else "")
                  + (" as deployment children on the gpu pool" if deployed else f", {concurrency} at a time"))
    try:
        result = run_reproduction(paper, profile, seeds, list(overrides or []), deployed, concurrency)
    except ReproductionError as exc:
        print_error("reproduction failed:", exc)
        raise typer.Exit(7) from exc
    print_reproduction(paper, result)


@app.command()
def report(
    out: str = typer.Option("docs/results.md", "--out", "-o", help="where to write the page (relative to the "
                            "project root unless absolute)"),
    profile: str = typer.Option("tiny", "--profile", "-p", help="the profile whose reproduction runs it reads"),
) -> None:
    """Write the results page from the reproduction runs and the registry only: per paper the paper's figure and
    its source, ours with its interval over seeds, the baseline in the same runs, the verdict, the decisive
    criteria, seeds, profile, data md5 and run ids."""
    apply_runtime_defaults()
    import datetime as dt

    from settings import project_root
    from tasks.report import collect_results, results_page

    quiet_library_logs()  # after the imports: mlflow sets its own log level when it is imported
    results = collect_results(profile)
    path = Path(out) if Path(out).is_absolute() else project_root() / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(results_page(results, dt.datetime.now(dt.timezone.utc), profile))
    reproduced = [r.paper for r in results if r.reproduction is not None]
    missing = [r.paper for r in results if r.reproduction is None]
    console.print(f"wrote {path}: reproduction runs of {', '.join(reproduced) or 'no paper'}"
                  + (f"; none yet for {', '.join(missing)} (`paperops reproduce <paper>`)" if missing else ""))


@app.command()
def lineage(
    paper: str = typer.Argument(..., help="registered paper, see `paperops list`"),
    version: Optional[str] = typer.Option(None, "--version", "-v", help="registry version; default @champion"),
) -> None:
    """Print a version's chain: DVC stage -> GX -> runs -> registered version -> aliases -> endpoint."""
    apply_runtime_defaults()
    from rich.markdown import Markdown

    from tasks.lineage_view import LineageError, version_lineage

    try:
        view = version_lineage(paper, version)
    except LineageError as exc:
        print_error("no lineage:", exc)
        raise typer.Exit(5) from exc
    console.print(Markdown(view.markdown()))


@app.command()
def serve(
    paper: str = typer.Argument(..., help="registered paper, see `paperops list`"),
    alias: str = typer.Option("champion", "--alias", "-a", help="registry alias of the version to serve"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(5001, "--port", **PORT),
    workers: int = typer.Option(1, "--workers", min=1),
    max_request_bytes: int = typer.Option(4 * 1024 * 1024, "--max-request-bytes", min=1,
                                          help="largest request body; a larger one is refused with 413"),
) -> None:
    """Serve paperops-<paper>@<alias> over REST (POST /invocations), pickle-free: MLflow's pyfunc behind a body
    limit and validation of every request against the logged signature (tasks/model_server.py)."""
    apply_runtime_defaults()
    import os

    from tasks.serve import ServingError, check_address, resolve_served_model, serve_command

    try:
        check_address(host, port)
    except ServingError as exc:
        print_error("cannot serve:", exc)
        raise typer.Exit(2) from exc
    try:
        model = resolve_served_model(paper, alias)
    except ServingError as exc:
        print_error("cannot serve:", exc)
        raise typer.Exit(5) from exc
    command, env = serve_command(model, host, port, workers, max_request_bytes)
    print_verbatim(f"serving {model.model_name} v{model.version} (@{model.alias} at start) on http://{host}:{port}"
                   "/invocations; if the alias moves, it refuses requests until restarted")
    os.execvpe(command[0], command, env)


@app.command("serve-llm")
def serve_llm(
    paper: str = typer.Argument(..., help="registered paper whose model is a LLaMA language model"),
    alias: str = typer.Option("champion", "--alias", "-a", help="registry alias of the version to serve"),
    policy: str = typer.Option("infercept", "--policy",
                               help="vllm, improved_discard, preserve, swap, heuristic, infercept, infercept_oracle"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(5002, "--port", **PORT),
    gpu_blocks: int = typer.Option(256, "--gpu-blocks", help="KV blocks in the device pool"),
    host_blocks: int = typer.Option(1024, "--host-blocks", help="KV blocks in the host (swap) pool"),
    block_size: int = typer.Option(16, "--block-size", help="tokens per KV block"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len",
                                                help="context limit; default: the model's, capped by the pool"),
    max_pending: int = typer.Option(64, "--max-pending", help="requests in flight before new ones get 503"),
    max_returned_tokens: int = typer.Option(64, "--max-returned-tokens", help="a tool result is cut to this"),
    a_ms: Optional[float] = typer.Option(None, "--a-ms", help="iteration time per token (ms); default: measured"),
    c_ms: Optional[float] = typer.Option(None, "--c-ms", help="iteration time constant (ms); with --a-ms"),
    saturation: Optional[int] = typer.Option(None, "--saturation", help="saturation point S (tokens); with --a-ms"),
) -> None:
    """Serve paperops-<paper>@<alias> with the APIServe engine: POST /v1/completions (tool calls, NDJSON
    streaming), GET /health, GET /metrics. Requests pause at their tool calls; the policy decides how their KV
    waits (preserve, swap to host, or discard and recompute)."""
    apply_runtime_defaults()
    from tasks.serve import ServingError
    from tasks.serve_llm import load_language_model, training_corpus

    given = [v is not None for v in (a_ms, c_ms, saturation)]
    if any(given) and not all(given):
        print_error("--a-ms, --c-ms and --saturation go together", "(or leave all three out to measure)")
        raise typer.Exit(2)
    try:
        served, model = load_language_model(paper, alias)
    except ServingError as exc:
        print_error("cannot serve:", exc)
        raise typer.Exit(5) from exc

    import uvicorn

    from models.apiserve.costs import IterationTimeModel
    from paperops.serve_llm import EngineOptions, create_app, engine_for_model

    time_model = IterationTimeModel(a_ms, c_ms, saturation) if all(given) else None  # type: ignore[arg-type]
    options = EngineOptions(policy=policy, gpu_blocks=gpu_blocks, host_blocks=host_blocks, block_size=block_size,
                            max_model_len=max_model_len, max_pending=max_pending,
                            max_returned_tokens=max_returned_tokens, time_model=time_model,
                            retrieval_corpus=training_corpus(served))
    try:
        engine, notes = engine_for_model(model, options)
    except ValueError as exc:
        print_error("cannot serve:", exc)
        raise typer.Exit(2) from exc
    for note in notes:
        print_verbatim(note)
    print_verbatim(f"serving {served.model_name} v{served.version} (@{served.alias} at start) on "
                   f"http://{host}:{port}/v1/completions")
    uvicorn.run(create_app(engine, model=f"{served.model_name}/{served.version}", policy=policy),
                host=host, port=port, log_level="warning")


@app.command()
def deploy(
    profile: str = typer.Option("tiny", "--profile", "-p", help="config profile every deployment runs"),
    schedule: Optional[bool] = typer.Option(None, "--schedule/--no-schedule",
                                            help="activate the cron schedules; default: on, except for tiny"),
    cron: str = typer.Option("0 3 * * *", "--cron", help="cron (UTC) of every paper's schedule"),
    print_only: bool = typer.Option(False, "--print", help="print the deployments file `prefect deploy` gets "
                                    "and stop (no server needed)"),
) -> None:
    """Register work pools `gpu` and `cpu`, the deployments (one per registered paper on `gpu`, expanded from
    prefect.yaml's template and the recipe's declarations; `all-papers` on `cpu`) and the crash-detection
    automation on the Prefect server in PREFECT_API_URL."""
    apply_runtime_defaults()
    from settings.config import ConfigError
    from tasks.scaleout import DeployOptions, ScaleOutError, deploy_project, expanded_prefect_file, prefect_file_text

    options = DeployOptions(profile=profile, schedule_active=schedule, cron=cron)
    try:
        if print_only:
            typer.echo(prefect_file_text(expanded_prefect_file(), options.environment()), nl=False)
            return
        deployments = deploy_project(options)
    except (ScaleOutError, ConfigError) as exc:
        print_error("deploy failed:", exc)
        raise typer.Exit(2) from exc
    table = Table(title="deployments")
    for column in ("deployment", "work pool", "parameters", "schedule (UTC)"):
        table.add_column(column)
    for deployment in deployments:
        table.add_row(deployment.name, deployment.work_pool,
                      ", ".join(f"{k}={v}" for k, v in deployment.parameters.items()),
                      ", ".join(deployment.schedules) or "-")
    console.print(table)
    console.print("Start workers with [bold]paperops worker --pool gpu[/] and [bold]paperops worker --pool cpu[/].")


@app.command()
def worker(
    pool: str = typer.Option("gpu", "--pool", help="work pool to serve: gpu (pipelines) or cpu (fan-out)"),
    slot: Optional[str] = typer.Option(None, "--slot", help="GPU slot this worker owns (gpu pool); the global "
                                       "concurrency limit gpu:<slot> keeps one heavy step on it at a time; "
                                       "default <hostname>-0"),
    name: Optional[str] = typer.Option(None, "--name", help="worker name shown in the Prefect UI"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="most flow runs this worker runs at once"),
) -> None:
    """Start a Prefect process worker with this project's environment (stop it with two SIGTERMs)."""
    apply_runtime_defaults()
    from tasks.scaleout import ScaleOutError, exec_worker

    try:
        exec_worker(pool, slot, name, limit)
    except ScaleOutError as exc:
        print_error("cannot start a worker:", exc)
        raise typer.Exit(2) from exc


def quiet_library_logs() -> None:
    """The progress bars and the summary are the run's output; library INFO chatter goes to the MLflow runs."""
    import warnings

    for name in ("mlflow", "great_expectations", "alembic", "dvc"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)


class _HandledFailureFilter(logging.Filter):
    def __init__(self, handled: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.handled = handled
        # the run's final state, e.g. "Finished in state Failed('Task run encountered an exception DataStageError: ...')"
        # (the repr quotes the message with " where it holds a ')
        names = "|".join(re.escape(error.__name__) for error in handled)
        self.final_state = re.compile(rf"Finished in state Failed\(['\"](Task|Flow) run encountered an exception:? "
                                      rf"({names}): ")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return not isinstance(record.exc_info[1], self.handled)
        return not self.final_state.match(record.getMessage())


def hide_handled_failures(*handled: type[BaseException]) -> None:
    """Prefect logs a failed flow or task run on the console: the exception with its traceback, then the run's final
    state. For the errors the command reports itself, as a clean message and an exit code, both only bury the
    message: the console handler drops them (Prefect's API still gets them, so the UI shows the failure). Any other
    exception, a crash, keeps its traceback."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _HandledFailureFilter) and f.handled == handled for f in handler.filters):
            handler.addFilter(_HandledFailureFilter(handled))


def print_summary(summary: dict[str, Any]) -> None:
    steps = Table(title=f"{summary['paper']} / {summary['profile']}: pipeline steps")
    steps.add_column("step")
    steps.add_column("state")
    for step, state in summary["steps"].items():
        steps.add_row(step, state)
    console.print(steps)
    if summary["variants"]:
        console.print(variants_table(summary))
    if summary.get("decisive") or summary.get("headline"):
        console.print(judgements_table(summary.get("decisive", []), summary.get("headline"),
                      "decisive criteria (fixed in the config before the run), paired over the test items"))
    if not summary.get("registered", True):
        console.print("not registered: reproduction run")
    versions, promotion = summary["versions"], summary["promotion"]
    if versions:
        compressed = f", compressed v{versions['method_version']}" if versions["method_version"] else \
            " (not compressed)"
        console.print(f"registered [bold]{versions['model_name']}[/]: trained v{versions['parent_version']}"
                      + compressed
                      + ("" if versions["created"] else " (already registered: same data, config and code)"))
    if promotion:
        if promotion.get("evidence"):
            console.print(f"gate: {promotion['evidence']}")
        if promotion["promoted"]:
            console.print(f"[green]@{promotion['alias']} -> v{promotion['version']}[/] "
                          f"(was {('v' + promotion['previous_version']) if promotion['previous_version'] else 'unset'})")
        else:
            console.print(f"[yellow]v{promotion['version']} not promoted; @{promotion['alias']} stays at "
                          f"{('v' + promotion['previous_version']) if promotion['previous_version'] else 'unset'}:[/]")
            for reason in promotion["reasons"]:
                print_verbatim(f"  - {reason}")
    console.print(f"MLflow run {summary['pipeline_run_id']} in {tracking_uri()}\n"
                  "Open the MLflow UI with [bold]make ui[/] (http://127.0.0.1:5000).")


# Columns every paper's summary has (recipes.base.COMMON_METRICS), after the paper's own summary_columns.
COMMON_COLUMNS: tuple[SummaryColumn, ...] = (
    ("delta_vs_parent", "Δ vs parent", 1.0), ("size_bytes", "MB on disk", 1e-6), ("throughput_per_s", "items/s", 1.0),
    ("throughput_ratio", "speed ×", 1.0), ("latency_p50_ms", "p50 ms", 1.0), ("latency_p95_ms", "p95 ms", 1.0))


def variants_table(summary: dict[str, Any]) -> Table:
    """The variants of one run side by side: the recipe's declared columns, then the common ones; a column no
    variant filled is left out."""
    from recipes import get_recipe

    declared = get_recipe(summary["paper"]).summary_columns + COMMON_COLUMNS
    columns = [c for c in declared if any(row.get(c[0]) is not None for row in summary["variants"])]
    table = Table(title="evaluated side by side (same run, same machine)")
    table.add_column("variant")
    table.add_column("role")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in summary["variants"]:
        table.add_row(row["variant"], row["role"], *(_cell(row, metric, scale) for metric, _, scale in columns))
    return table


def _cell(row: dict[str, Any], metric: str, scale: float) -> str:
    """A figure of the variants table; the delta vs the parent with its interval paired over the test items."""
    interval = row.get("delta_vs_parent_interval") if metric == "delta_vs_parent" else None
    if interval is None:
        return _fmt(row.get(metric), scale)
    return f"{_fmt(row.get(metric), scale)} [{interval['low']:+.3g}, {interval['high']:+.3g}]"


def judgements_table(criteria: list[dict[str, Any]], headline: dict[str, Any] | None, title: str) -> Table:
    """Each decisive criterion (and the headline) as it came out: the claim, method − baseline with its 95 %
    interval and how it was computed, and holds / does not hold / not measured."""
    from tasks.evidence import interval_text

    table = Table(title=title)
    for column in ("criterion", "claim", "method − baseline [95 %]", "outcome"):
        table.add_column(column)
    rows = [*criteria, *([headline] if headline else [])]
    for row in rows:
        claim = (f"{row['method']} {'better than' if row['claim'] == 'better' else 'not worse than'} "
                 f"{row['baseline']} on {row['metric']}"
                 + (f" (margin {row['margin']:g})" if row["claim"] == "not_worse" else ""))
        outcome = row["outcome"]
        colour = "green" if row["holds"] else ("yellow" if row["holds"] is None else "red")
        table.add_row(row["name"], claim, interval_text(row), f"[{colour}]{outcome}[/]")
    return table


def print_reproduction(paper: str, result: dict[str, Any]) -> None:
    """The reproduction run: every variant's figures over seeds, then the criteria on the paired differences."""
    seeds = result["seeds"]
    table = Table(title=f"{paper} / {result['profile']}: mean [95 % t interval] over seeds {seeds}")
    metrics = sorted({m for by_metric in result["variants"].values() for m in by_metric})
    table.add_column("variant")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for name, by_metric in result["variants"].items():
        table.add_row(name, *(_over_seeds(by_metric.get(metric)) for metric in metrics))
    console.print(table)
    console.print(judgements_table(result["criteria"], result["headline"],
                                   f"decisive criteria over {len(seeds)} seeds (paired per-seed differences)"))
    console.print(f"reproduction run {result['run_id']} in {tracking_uri()} (experiment paperops-{paper}); seed "
                  f"pipeline runs {', '.join(result['pipeline_run_ids'].values())}, none registered")


def _over_seeds(over_seeds: dict[str, Any] | None) -> str:
    if over_seeds is None:
        return ""
    i = over_seeds["interval"]
    return f"{i['estimate']:.4g} [{i['low']:.4g}, {i['high']:.4g}]"


def headline_row(summary: dict[str, Any]) -> dict[str, str]:
    """The paper's method against its main baseline from one pipeline summary (same run, same machine); the verdict
    is the headline's judgement on the paired per-item scores: "beats" only when its interval excludes zero."""
    from recipes import get_recipe
    from tasks.evidence import judgement_text

    recipe = get_recipe(summary["paper"])
    row = {"paper": summary["paper"], "metric": recipe.primary_metric, "ours": "", "baseline": "",
           "paper figure": "", "verdict": "no headline declared"}
    headline = recipe.headline
    if headline is None:
        return row
    by_name = {v["variant"]: v for v in summary["variants"]}
    ours = by_name.get(headline.method_variant, {}).get(headline.metric)
    base = by_name.get(headline.baseline_variant, {}).get(headline.metric)
    row |= {"metric": headline.metric,
            "ours": f"{_fmt(ours)} ({headline.method_variant})" if ours is not None else "not measured",
            "baseline": f"{_fmt(base)} ({headline.baseline_variant})" if base is not None else "not measured",
            "paper figure": (f"{headline.paper_value:g}: " if headline.paper_value is not None else "")
            + headline.paper_note,
            "verdict": judgement_text(summary.get("headline")) if summary.get("headline") else "not judged"}
    return row


def print_headlines(summaries: list[dict[str, Any]]) -> None:
    table = Table(title="every paper: the method against its baseline, measured in the same run (95 % intervals "
                  "paired over the test items)")
    rows = [headline_row(summary) for summary in summaries]
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


def _fmt(value: Any, scale: float = 1.0) -> str:
    if isinstance(value, float):
        return f"{value * scale:.4g}"
    return "" if value is None else str(value)


def main() -> None:
    sys.exit(app())
