"""Mean absolute error of numeric predictions."""

import datasets
import evaluate
from sklearn.metrics import mean_absolute_error


class MAE(evaluate.Metric):
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
        return {"mae": float(mean_absolute_error(references, predictions))}
