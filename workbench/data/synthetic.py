"""A generated preference task with a known ground-truth rule, for offline demos, tests and benchmarks.

`vowels`: responses are short word sequences; the preferred one has the higher share of vowels
among its letters. The rule is also a reward function (`vowel_reward`), so the gold reward of a
policy trained on this data is known exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

# Words spanning low to high vowel share, so that sampled responses differ in the rule.
WORDS = [
    "aurora",
    "audio",
    "area",
    "idea",
    "iou",
    "eau",
    "aloe",
    "oasis",
    "queue",
    "aeon",
    "louie",
    "eerie",
    "ooze",
    "amino",
    "piano",
    "radio",
    "opera",
    "video",
    "cameo",
    "rodeo",
    "patio",
    "ratio",
    "banana",
    "tomato",
    "potato",
    "ocean",
    "alone",
    "above",
    "alive",
    "image",
    "unit",
    "open",
    "over",
    "only",
    "echo",
    "house",
    "water",
    "apple",
    "table",
    "river",
    "stone",
    "light",
    "green",
    "small",
    "large",
    "happy",
    "quiet",
    "bright",
    "strength",
    "twelfth",
    "rhythm",
    "crypts",
    "myth",
    "lynx",
    "sphynx",
    "glyph",
    "shrubs",
    "strict",
    "script",
    "splint",
    "sprints",
    "brunch",
    "crumbs",
    "blast",
    "trust",
    "flask",
    "prompt",
]

TOPICS = (
    "the sea",
    "a garden",
    "the city",
    "music",
    "the mountains",
    "a journey",
    "the night sky",
    "winter",
    "a library",
    "the market",
    "friendship",
    "the forest",
    "rain",
    "a kitchen",
    "the river",
    "an old house",
    "the desert",
    "a festival",
    "the harbor",
    "morning",
)
TEMPLATES = (
    "Write a few words about {}.",
    "Describe {} briefly.",
    "Say something about {}.",
    "Give me a short line on {}.",
)
VOWELS = frozenset("aeiouAEIOU")


def vowel_share(text: str) -> float:
    """Share of vowels among the letters of `text` (0.0 when it has no letters)."""
    letters = [c for c in text if c.isalpha()]
    return sum(c in VOWELS for c in letters) / len(letters) if letters else 0.0


def vowel_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """TRL-style reward function: the vowel share of each completion."""
    return [vowel_share(c if isinstance(c, str) else " ".join(m["content"] for m in c)) for c in completions]


def _response(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))


def _prompt(rng: random.Random, topics: int) -> str:
    """One prompt naming `topics` distinct topics (1: the original 80 prompts; 2: 1,520, so held-out prompts abound)."""
    template, first = rng.choice(TEMPLATES), rng.choice(TOPICS)
    if topics == 1:
        return template.format(first)
    second = rng.choice([t for t in TOPICS if t != first])
    return template.format(f"{first} and {second}")


def generate(spec: Any) -> Iterator[dict[str, Any]]:
    """`spec.num_pairs` rows {prompt, chosen, rejected}, deterministic for `spec.seed`."""
    rng = random.Random(spec.seed)
    made = 0
    while made < spec.num_pairs:
        prompt = _prompt(rng, getattr(spec, "topics_per_prompt", 1))
        a, b = _response(rng), _response(rng)
        sa, sb = vowel_share(a), vowel_share(b)
        if abs(sa - sb) < 0.05:
            continue  # keep the preference unambiguous
        chosen, rejected = (a, b) if sa > sb else (b, a)
        made += 1
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def corpus() -> list[str]:
    """Text the tiny tokenizer is trained on, covering the synthetic task's vocabulary."""
    lines = [" ".join(WORDS)]
    lines += [t.format(topic) for t in TEMPLATES for topic in TOPICS]
    return lines
