"""A text classifier written as Label Studio's ML SDK (label-studio-ml 1.0.9) asks: a subclass of
LabelStudioMLBase whose predict() returns one prediction per task, in order, with no model_version of
its own, and the SDK's own fit(), which makes a new model version on every annotation event.

It labels the Choices control of the project's config from the words of the Text it names: a real
answer the test can check against the words the test wrote. PREDICT_DELAY (seconds per task) makes
a run slow enough to restart the operator in the middle of it."""

import os
import time

from label_studio_ml.model import LabelStudioMLBase

POSITIVE = {"good", "great", "love", "excellent", "happy"}
NEGATIVE = {"bad", "awful", "hate", "poor", "sad"}


class WordSentiment(LabelStudioMLBase):
    def predict(self, tasks: list[dict], **kwargs: object) -> list[dict]:
        from_name, info = next((name, c) for name, c in self.parsed_label_config.items() if c["type"] == "Choices")
        to_name, value = info["to_name"][0], info["inputs"][0]["value"]
        positive, negative = info["labels"][0], info["labels"][1]
        delay = float(os.environ.get("PREDICT_DELAY", "0"))
        predictions = []
        for task in tasks:
            time.sleep(delay)
            words = set(str(task["data"].get(value, "")).lower().split())
            score = len(words & POSITIVE) - len(words & NEGATIVE)
            choice = positive if score >= 0 else negative
            predictions.append({
                "result": [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}],
                "score": min(1.0, 0.5 + 0.1 * abs(score)),
            })
        return predictions
