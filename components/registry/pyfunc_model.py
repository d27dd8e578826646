"""MLflow "model from code" wrapper around a fineship model package.

MLflow logs this file as source instead of pickling a Python object; the weights stay in the
package directory (safetensors) that is logged as the `package` artifact.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd


class FineshipClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a `text` column (or a list of strings) -> label and score per row."""

    def load_context(self, context: Any) -> None:
        from components.package import load_package

        self.clf = load_package(context.artifacts["package"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        preds = self.clf.predict(texts)
        return pd.DataFrame({"label": [p.label for p in preds], "score": [p.score for p in preds]})


mlflow.models.set_model(FineshipClassifier())
