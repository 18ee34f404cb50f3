import pytest

try:
    from pytest_tim import cached_fixture
except ImportError:
    # Without tim's plugin (plain `pytest`): cached fixtures are ordinary
    # fixtures and `tim_cache` computes every value, counting misses. The
    # tests pass either way; only the time differs.
    def cached_fixture(fn=None, *, serializer=None, inputs=None, code_independent=False, **kwargs):
        kwargs.setdefault("scope", "session")
        return pytest.fixture(fn, **kwargs) if fn else pytest.fixture(**kwargs)

    class _NoCache:
        cache_hits = 0
        cache_misses = 0

        @property
        def hit_rate(self):
            calls = self.cache_hits + self.cache_misses
            return self.cache_hits / calls if calls else 0.0

        def get_or_create(self, key, producer, **options):
            self.cache_misses += 1
            return producer()

    @pytest.fixture
    def tim_cache():
        return _NoCache()


PROMPTS = [
    "Pricing rules for a grocery checkout: discounts, deposits and bag fees.",
    "Scoring helpers for a ten-pin bowling frame.",
    "Unit conversions for a bicycle computer.",
    "Monthly interest and fees for a savings account.",
]


@cached_fixture(scope="session", serializer="json", code_independent=True)
def responses():
    # The recorded "API responses": expensive, and independent of our code,
    # so they are cached by their inputs only (see the README).
    from pipeline.provider import generate

    return {p: generate(p) for p in PROMPTS}


@cached_fixture(scope="session")  # pickled; recomputed when the translator changes
def irs(responses):
    from pipeline.translator import translate

    return {p: translate(r) for p, r in responses.items()}
