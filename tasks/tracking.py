"""MLflow binding: experiments and runs of a paper, the Reporter that logs to a run, and the pickle-free model
format (weights in safetensors + the resolved config + the code that rebuilds the module)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from recipes import get_recipe
from recipes.base import Companion, Recipe, RecipeConfig
from settings import project_root, state_dir, tracking_uri
from tasks.progress import report_progress

# The MLflow models-from-code file every paper model is logged with (the registry side, in mlflow/).
PYFUNC_MODEL_FILE = Path(__file__).resolve().parents[1] / "mlflow" / "paper_model.py"
# The project packages a logged model carries to rebuild its module: the recipes and everything they import.
MODEL_CODE_PACKAGES = ("settings", "models", "data", "recipes")
# What a served model needs; exact pins so the serving environment matches the one that trained it.
SERVING_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "transformers==5.24.0",
                        "tokenizers==0.23.3", "numpy==2.4.6", "safetensors==0.8.0", "pydantic==2.14.4",
                        "mlflow==3.17.2"]


def configure_tracking() -> MlflowClient:
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name(paper: str) -> str:
    return f"paperops-{paper}"


def registered_model_name(paper: str) -> str:
    return f"paperops-{paper}"


def ensure_experiment(client: MlflowClient, paper: str) -> str:
    name = experiment_name(paper)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps artifacts beside the DB; a tracking server chooses (and proxies) its own location.
    location = (state_dir() / "artifacts" / paper).as_uri() if tracking_uri().startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location, tags={"paperops.paper": paper})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # a run started at the same time created it


def package_sources(*packages: str) -> list[Path]:
    """The .py files of the named project packages, recursively through sub-packages (directories with an
    __init__.py). A DVC output or a download cache beside them (data/mnist5k, data/.cache) is not code."""
    root = project_root()
    files = []
    for package in packages:
        top = root / package
        for path in sorted(top.rglob("*.py")):
            folder = path.parent
            while folder != top and (folder / "__init__.py").is_file():
                folder = folder.parent
            if folder == top:
                files.append(path)
    return files


def source_digest(*packages: str) -> str:
    """sha256 over the Python sources of the named project packages: part of every cache key, so editing a
    recipe or a compression method re-runs the steps that execute it."""
    digest = hashlib.sha256()
    root = project_root()
    for path in package_sources(*packages):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def copy_package_sources(packages: tuple[str, ...], destination: Path) -> list[str]:
    """Copies the packages' sources under `destination` (one folder per package); returns those folders, the
    `code_paths` of a logged model."""
    root = project_root()
    for path in package_sources(*packages):
        target = destination / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return [str(destination / package) for package in packages]


class MlflowReporter:
    """Binds the pure Reporter interface to one MLflow run and to the progress listeners of this process."""

    def __init__(self, client: MlflowClient, run_id: str, step: str, flush_every: int = 50) -> None:
        self.client, self.run_id, self.step, self.flush_every = client, run_id, step, flush_every
        self._pending: list[Metric] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step or 0) for k, v in metrics.items())
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=self._pending[start : start + 1000])
        self._pending = []

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=f"tables/{name}.json")

    def log_figure(self, name: str, figure: Any) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, f"figures/{name}.png")
        plt.close(figure)

    def progress(self, done: int, total: int, description: str) -> None:
        report_progress(self.step, done, total, description)


@contextlib.contextmanager
def child_run(client: MlflowClient, parent_run_id: str, name: str, tags: dict[str, str]) -> Iterator[MlflowReporter]:
    """A child run of the paper's run; marked FAILED (and the error tagged) if the body raises."""
    parent = client.get_run(parent_run_id)
    run = client.create_run(parent.info.experiment_id, run_name=name,
                            tags={"mlflow.parentRunId": parent_run_id, **tags})
    reporter = MlflowReporter(client, run.info.run_id, step=tags.get("paperops.step", name))
    try:
        yield reporter
        reporter.flush()
    except BaseException as exc:
        reporter.flush()
        client.set_tag(run.info.run_id, "paperops.error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def log_params_flat(client: MlflowClient, run_id: str, config: dict[str, Any]) -> None:
    """The resolved config as dotted params (searchable in the UI) plus the exact JSON as an artifact."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    walk("", config)
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    client.log_dict(run_id, config, "config/resolved.json")


def log_paper_model(recipe: Recipe, config: RecipeConfig, module: Any, example: Any,
                    knobs: dict[str, Any] | None, run_id: str) -> str:
    """Logs `module` as a pickle-free pyfunc (models from code) into `run_id`; returns the model URI.
    Tensors go to safetensors (tied weights stored once), the recipe's extra files (e.g. a tokenizer) to JSON."""
    from mlflow.models import infer_signature
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.safetensors"
        save_model(module, str(weights))
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"paper": recipe.name, "config": config.model_dump(mode="json"),
                                    "compression": knobs}, indent=2, sort_keys=True))
        files = Path(tmp) / "files.json"
        files.write_text(json.dumps(recipe.model_files(module), sort_keys=True))
        prediction = recipe.predict(module, example)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_MODEL_FILE),
                artifacts={"weights": str(weights), "spec": str(spec), "files": str(files)},
                code_paths=copy_package_sources(MODEL_CODE_PACKAGES, Path(tmp) / "code"),
                signature=infer_signature(example, prediction, params=recipe.serving_params or None),
                input_example=example,
                pip_requirements=SERVING_REQUIREMENTS,
            )
    return info.model_uri


COMPANIONS_DIR = "companions"


def log_companions(client: MlflowClient, run_id: str, companions: dict[str, Companion]) -> dict[str, Any]:
    """Saves each companion's tensors (safetensors, tied weights once) under `companions/` of `run_id`; returns
    name -> knobs, what `load_companions` needs to rebuild them."""
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as tmp:
        for name, companion in companions.items():
            save_model(companion.module.cpu().eval(), str(Path(tmp) / f"{name}.safetensors"))
        if companions:
            client.log_artifacts(run_id, tmp, COMPANIONS_DIR)
    return {name: companion.knobs for name, companion in companions.items()}


def load_companions(run_id: str, index: dict[str, Any], recipe: Recipe, config: RecipeConfig) -> dict[str, Any]:
    """The companions `log_companions` saved in `run_id`, rebuilt by the recipe and filled strictly."""
    from safetensors.torch import load_model

    modules = {}
    for name, knobs in index.items():
        module = recipe.companion_module(name, config, knobs)
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{COMPANIONS_DIR}/{name}.safetensors")
        load_model(module, path, strict=True)
        modules[name] = module.eval()
    return modules


def load_pyfunc_model(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """`mlflow.pyfunc.load_model` without its side effect on this process: loading prepends the model's code
    directory to sys.path for good, and every later import here — and in every process this one spawns, which
    inherits sys.path — would then resolve `settings`, `recipes`, … to that artifact copy and its paths."""
    saved_path = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        sys.path[:] = saved_path


def load_paper_model(model_uri: str) -> Any:
    """The torch module behind a logged paper model, rebuilt from code + weights (no unpickling)."""
    return load_pyfunc_model(model_uri).unwrap_python_model().module


def recipe_and_config(paper: str, config: dict[str, Any]) -> tuple[Recipe, RecipeConfig]:
    recipe = get_recipe(paper)
    return recipe, recipe.config_model.model_validate(config)


def compute_device() -> str:
    """GPU when this worker has one, else CPU: the same code runs on a laptop and on the gpu pool."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
