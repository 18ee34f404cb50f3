from pipeline.unrelated import slugify, summarize


def test_slugify():
    assert slugify("Release Notes: v1.2 (draft)") == "release-notes-v1-2-draft"


def test_summarize():
    assert summarize({"fixes": 2, "features": 5, "docs": 0}) == "5 features, 2 fixes"
    assert summarize({}) == "nothing"
