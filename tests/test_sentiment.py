"""The sentiment gold scorer on fixed sentences, through the same reward-source path recipes use."""

from __future__ import annotations

import math

import pytest


def compound(valence: float) -> float:
    """VADER's normalisation of a summed valence: x / sqrt(x^2 + 15)."""
    return valence / math.sqrt(valence * valence + 15)


def test_single_words_score_their_lexicon_valence_normalised():
    from workbench.rewards.sentiment import sentiment

    # lexicon valences: good 1.9, bad -2.5, happy 2.7
    scores = sentiment(["p"] * 4, ["It is good.", "It is bad.", "happy", "The capital of France is Paris."])
    assert scores[0] == pytest.approx(compound(1.9), abs=1e-4)  # 0.4404
    assert scores[1] == pytest.approx(compound(-2.5), abs=1e-4)  # -0.5423
    assert scores[2] == pytest.approx(compound(2.7), abs=1e-4)  # 0.5719
    assert scores[3] == 0.0


def test_the_prompt_is_not_scored_and_chat_messages_are_read_as_text():
    from workbench.rewards.sentiment import sentiment

    plain = sentiment(["I hate everything"], ["It is good."])
    messages = sentiment(["neutral"], [[{"role": "assistant", "content": "It is good."}]])
    assert plain == messages == [pytest.approx(compound(1.9), abs=1e-4)]
    assert sentiment(["p"], [""]) == [0.0]


def test_named_in_a_recipe_it_scores_through_the_reward_source():
    from workbench.config import RewardModelConfig
    from workbench.scoring import reward_source

    score = reward_source(RewardModelConfig(function="workbench.rewards.sentiment:sentiment"), max_length=64)
    happy, sad = score(["q", "q"], ["What a wonderful, happy day!", "This is terrible and sad."])
    assert happy > 0.5 > 0 > -0.5 > sad


def test_without_the_package_validate_says_how_to_install_it(monkeypatch):
    import sys

    from workbench.validate import reward_function_problem

    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    monkeypatch.delitem(sys.modules, "workbench.rewards.sentiment", raising=False)
    problem = reward_function_problem("workbench.rewards.sentiment:sentiment")
    assert problem is not None and "pip install" in problem and "[sentiment]" in problem
