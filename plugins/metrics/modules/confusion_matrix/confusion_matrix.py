"""Confusion matrix of single-label classification: entry [i][j] counts the rows whose reference is
class i and whose prediction is class j (scikit-learn's convention: rows are references).

`labels` fixes the classes and their order (default: every class seen in either list, sorted), so
that a class no row has still gets its row and column. `normalize` divides counts over the
references ("true"), the predictions ("pred") or all rows ("all").
"""

import datasets
import evaluate
from sklearn.metrics import confusion_matrix


class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: class ids; labels: the classes, in order; normalize",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, normalize=None):
        matrix = confusion_matrix(references, predictions, labels=labels, normalize=normalize)
        return {"confusion_matrix": matrix.tolist()}
