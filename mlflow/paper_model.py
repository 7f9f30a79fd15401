"""MLflow "models from code" entry point of every paper model: rebuilds the recipe's module from the logged
config and files (architecture + recorded compression), loads the safetensors weights into it, and predicts
with the recipe.
Nothing is unpickled, so serving works with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false.

Served by `paperops serve`, it also knows which alias it was started for (PAPEROPS_SERVED_ALIAS =
"<model>@<alias>=<version>") and refuses requests, with a message saying so, once that alias points elsewhere: a
server never keeps answering for an alias that has moved."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


ALIAS_CHECK_SECONDS = 2.0


class PaperModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from safetensors.torch import load_model

        from recipes import get_recipe

        with open(context.artifacts["spec"]) as f:
            spec = json.load(f)
        with open(context.artifacts["files"]) as f:
            files = json.load(f)
        self.recipe = get_recipe(spec["paper"])
        config = self.recipe.config_model.model_validate(spec["config"])
        module = self.recipe.module_for_loading(config, files, spec["compression"])
        load_model(module, context.artifacts["weights"], strict=True)
        self.module = module.eval()
        self.served_alias = os.environ.get("PAPEROPS_SERVED_ALIAS")
        self.alias_checked_at = 0.0

    def check_alias(self) -> None:
        """Raises when the alias this server was started for has moved (checked at most every few seconds)."""
        if not self.served_alias or time.monotonic() - self.alias_checked_at < ALIAS_CHECK_SECONDS:
            return
        name_alias, _, version = self.served_alias.rpartition("=")
        name, _, alias = name_alias.partition("@")
        current = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        if current != version:
            raise RuntimeError(f"{name}@{alias} moved from v{version} to v{current} after this server started: "
                               f"restart `paperops serve` to serve v{current}")
        self.alias_checked_at = time.monotonic()

    # np.ndarray is a hint MLflow accepts without deriving a schema from it: the logged signature is the schema.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> Any:
        self.check_alias()
        return self.recipe.predict(self.module, model_input, params)


mlflow.models.set_model(PaperModel())
