"""Perplexity from token losses: exp(sum of token negative log-likelihoods / number of tokens).

predictions: each row's summed token loss (nats); references: each row's number of predicted tokens.
Weighting by tokens makes it the exact corpus perplexity, not a mean of per-batch means.
"""

import math

import datasets
import evaluate


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: summed token losses; references: token counts",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        tokens = sum(references)
        if tokens <= 0:
            return {"perplexity": float("nan")}
        return {"perplexity": float(math.exp(sum(predictions) / tokens))}
