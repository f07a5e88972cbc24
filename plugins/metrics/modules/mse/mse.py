"""Mean squared error of numeric predictions."""

import datasets
import evaluate
from sklearn.metrics import mean_squared_error


class MSE(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: numbers",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"mse": float(mean_squared_error(references, predictions))}
