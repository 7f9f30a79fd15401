"""MLflow "models from code" entry point of every paper model: rebuilds the recipe's module from the logged
config and files (architecture + recorded compression), loads the safetensors weights into it, and predicts
with the recipe.
Nothing is unpickled, so serving works with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false. `paperops serve`
(tasks/model_server.py) validates requests against the logged signature and watches the served alias before a
request reaches `predict`."""
from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


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

    # np.ndarray is a hint MLflow accepts without deriving a schema from it: the logged signature is the schema.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> Any:
        return self.recipe.predict(self.module, model_input, params)


mlflow.models.set_model(PaperModel())
