"""The MLflow model the pipeline registers: images in, class names and probabilities out. It wraps a model file the
pipeline wrote (its classes, input channels and size) and predicts with :func:`labelnoise.api.predict`, so the
registered model, ``labelnoise predict`` and the file agree. MLflow logs it from this file's code (it runs the file,
which sets the model), not as a pickled object.

    model = mlflow.pyfunc.load_model("models:/labelnoise-digits@champion")
    model.predict(pd.DataFrame({"path": ["a.png", "b.jpg"]}))   # or a list of paths, or uint8 images of any size
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """``predict``: image files (a DataFrame with a ``path`` column, or a list of paths) or a uint8 array of images
    of any size ((N, H, W), (N, H, W, C) or (N, C, H, W)), each converted as the training images were → a
    DataFrame with ``path``, ``predicted`` (the class name), ``probability`` and ``top_k`` (the three likeliest)."""

    # the input is files or images of any shape, which predict checks itself: no schema from type hints (MLflow
    # otherwise wraps predict to validate by them, and warns at every import that there are none)
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        self.model_file = context.artifacts["model"]

    def classify(self, images: Any, *, top_k: int = 3) -> Any:
        from labelnoise.api import predict

        if hasattr(images, "columns"):  # a DataFrame
            if "path" not in images.columns:
                raise ValueError(f"a DataFrame of images needs a `path` column, got {list(images.columns)}")
            images = [str(p) for p in images["path"]]
        elif not isinstance(images, np.ndarray):
            images = [str(p) for p in images]
        return predict(self.model_file, images, top_k=top_k)

    def predict(self, context, model_input, params=None):
        return self.classify(model_input)


mlflow.models.set_model(ImageClassifier())
