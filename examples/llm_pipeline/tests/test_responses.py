"""Finer-grained caching: one cache entry per prompt, through `tim_cache`."""

import json

from pipeline.provider import generate

FOLLOW_UPS = [
    "Shipping costs by weight band for the grocery checkout.",
    "Handicap adjustments for bowling scores.",
]


def test_follow_up_answers_are_specs(tim_cache):
    hits, misses = tim_cache.cache_hits, tim_cache.cache_misses
    answers = {
        prompt: tim_cache.get_or_create(
            ("generate", prompt), lambda prompt=prompt: generate(prompt), serializer="json", code_independent=True
        )
        for prompt in FOLLOW_UPS
    }
    # All misses on the first run, all hits after it: one lookup per prompt either way.
    assert (tim_cache.cache_hits - hits) + (tim_cache.cache_misses - misses) == len(FOLLOW_UPS)
    assert 0.0 <= tim_cache.hit_rate <= 1.0
    for prompt, text in answers.items():
        spec = json.loads(text)
        assert spec["prompt"] == prompt
        assert 3 <= len(spec["functions"]) <= 5
