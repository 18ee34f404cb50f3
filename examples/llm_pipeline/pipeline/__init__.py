"""A toy code-generation pipeline: prompt -> model response -> IR -> Python.

`provider` stands in for a hosted model (slow, deterministic, offline),
`translator` turns a response into an IR, `codegen` turns the IR into
Python source. `unrelated` takes no part in any of that.
"""
