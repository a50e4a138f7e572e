"""A gold scorer for real text: the sentiment of a response, by VADER (a lexicon and rules, no model).

Why VADER: it is deterministic, offline (the lexicon ships inside the package) and independent of any
model the workbench trains, so a policy cannot learn it from a reward model's mistakes; the DPO paper's
controlled-sentiment task judges methods by a sentiment classifier the same way. Name it in a recipe as
`eval.gold_reward: {function: workbench.rewards.sentiment:sentiment}` or `reward_model: {function: ...}`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from workbench.errors import WorkbenchError

try:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
except ImportError:  # raised at import, so `validate` reports it before anything runs
    raise WorkbenchError(
        "workbench.rewards.sentiment needs the vaderSentiment package: pip install -c constraints.txt -e '.[sentiment]'"
    ) from None


@lru_cache(maxsize=1)
def analyzer() -> Any:
    """One analyzer per process: building it reads the 7,500-word lexicon."""
    return SentimentIntensityAnalyzer()


def text_of(completion: Any) -> str:
    """A completion as text: a string, or chat messages (their contents joined)."""
    if isinstance(completion, str):
        return completion
    return " ".join(str(m.get("content", "")) for m in completion)


def sentiment(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """VADER's compound score of each completion, in [-1, 1] (0: neutral or empty); the prompt is not scored."""
    score = analyzer().polarity_scores
    return [float(score(text_of(c))["compound"]) for c in completions]
