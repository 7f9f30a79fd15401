"""MLflow "models from code" entry point of every paper model: rebuilds the recipe's module from the logged
config, loads the safetensors weights, re-applies the recorded compression, and predicts with the recipe.
Nothing is unpickled, so serving works with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false."""
from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PaperModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from safetensors.torch import load_file

        from models.common.recipe import get_recipe

        with open(context.artifacts["spec"]) as f:
            spec = json.load(f)
        self.recipe = get_recipe(spec["paper"])
        config = self.recipe.config_model.model_validate(spec["config"])
        module = self.recipe.build_model(config)
        module.load_state_dict(load_file(context.artifacts["weights"]))
        if spec["compression"]:
            module = self.recipe.restore_compression(module, spec["compression"])
        self.module = module.eval()

    # np.ndarray is a hint MLflow accepts without deriving a schema from it: the logged signature is the schema.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        return self.recipe.predict(self.module, np.asarray(model_input, dtype=np.float32))


mlflow.models.set_model(PaperModel())
