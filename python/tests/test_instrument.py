"""The instrumenting recorder (Python < 3.12): the transform keeps the
module's meaning, qualnames are the compiler's, and whatever it cannot see
becomes a whole-file dependency instead of a miss."""

import ast
import importlib
import runpy
import sys
import textwrap
import types

import pytest

from pytest_tim._instrument import HITS, Instrumenter, instrument
from pytest_tim._recorder import Recorder, project_filter

# Every kind of scope the compiler names: nested functions and classes,
# lambdas in defaults, in class bodies and in comprehensions, `global`
# declarations, decorators, generators and coroutines, name mangling.
TRICKY = '''
"""module doc"""
from __future__ import annotations
import functools

X = [lambda: 1 for _ in range(2)]
Y = (lambda a=lambda: 2: a)


def plain(a, b=lambda: 3):
    "docstring"
    def inner():
        class Local:
            def m(self):
                return [lambda: k for k in range(3)]
        return Local
    g = (lambda q: q)
    return inner, g, {k: (lambda: k) for k in range(2)}, (lambda: z for z in [lambda: 0])


class A:
    attr = (lambda s: s)
    squares = [i * i for i in range(3)]

    class B:
        def deep(self):
            global plain2
            def plain2():
                pass
            return plain2

    @functools.lru_cache
    def cached(self):
        return 1

    async def co(self):
        yield 1

    def __private(self):
        pass


def only_doc():
    """only a docstring"""
'''


def code_objects(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="the instrumenting recorder is 3.11's; 3.12 inlines comprehensions (PEP 709), so their qualnames differ",
)
def test_qualnames_are_the_compilers_and_docstrings_stay():
    tree = ast.parse(TRICKY)
    names = instrument(tree)
    code = compile(tree, "tricky.py", "exec")
    compiled = {c.co_qualname for c in code_objects(compile(TRICKY, "tricky.py", "exec"))}
    assert {c.co_qualname for c in code_objects(code)} == compiled
    # Every function and lambda has a hit; class bodies and comprehensions
    # run as part of what encloses them.
    runs_alone = {n for n in compiled if n.endswith(("comp>", "<genexpr>"))} | {"A", "A.B", "plain.<locals>.inner.<locals>.Local"}
    assert set(names) == compiled - runs_alone
    namespace = {HITS: bytearray(len(names)), "__name__": "tricky"}
    exec(code, namespace)
    assert namespace["__doc__"] == "module doc"
    assert namespace["plain"].__doc__ == "docstring"
    assert namespace["only_doc"].__doc__ == "only a docstring"
    hits = namespace[HITS]
    assert [names[i] for i, b in enumerate(hits) if b] == ["<module>"]
    hits[:] = bytes(len(hits))
    inner, g, _, _ = namespace["plain"](1)
    inner()().m()[0]()
    namespace["A"]().cached()
    assert sorted(names[i] for i, b in enumerate(hits) if b) == [
        "A.cached",
        "plain",
        "plain.<locals>.inner",
        "plain.<locals>.inner.<locals>.Local.m",
        "plain.<locals>.inner.<locals>.Local.m.<locals>.<listcomp>.<lambda>",
    ]


def test_a_function_keeps_working_when_its_module_globals_are_gone():
    tree = ast.parse("def f(x):\n    return x + 1\n")
    names = instrument(tree)
    namespace = {HITS: bytearray(len(names))}
    exec(compile(tree, "m.py", "exec"), namespace)
    f = namespace["f"]
    namespace[HITS] = None  # what interpreter shutdown does to a module
    assert f(1) == 2


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / ".tim").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("TIM_RECORDER", "instrument")
    added = []

    def start(preimport=()):
        for name in preimport:
            importlib.import_module(name)
            added.append(name)
        real, is_project = project_filter(str(root))
        instrumenter = Instrumenter(real, is_project, str(root / ".tim" / "pycache"))
        recorder = Recorder(str(root), instrumenter)
        recorder.start()
        started.append(recorder)
        return recorder

    started = []
    yield root, start
    for recorder in started:
        recorder.stop()
    for name in list(sys.modules):
        if name == "pkg" or name.startswith("pkg."):
            del sys.modules[name]
    importlib.invalidate_caches()


def write(root, rel, text):
    (root / rel).write_text(textwrap.dedent(text))


def recorded(recorder, action):
    ctx = recorder.push()
    action()
    recorder.pop(ctx)
    return {f: sorted(names) for f, names in ctx.to_wire(recorder.root)["code"].items()}


def test_closures_and_lambdas_made_earlier_are_recorded_where_they_run(project):
    root, start = project
    write(
        root,
        "pkg/factory.py",
        """
        def make_adder(n):
            return lambda x: x + n

        def make_counter():
            def count():
                return 1
            return count

        ADD_ONE = make_adder(1)
        COUNT = make_counter()
        """,
    )
    recorder = start()
    factory = importlib.import_module("pkg.factory")
    assert recorded(recorder, lambda: factory.ADD_ONE(1)) == {"pkg/factory.py": ["make_adder.<locals>.<lambda>"]}
    assert recorded(recorder, factory.COUNT) == {"pkg/factory.py": ["make_counter.<locals>.count"]}


@pytest.mark.parametrize("dont_write_bytecode", [False, True])
def test_no_importable_bytecode_is_written_and_the_cache_is_keyed_by_the_source(project, monkeypatch, dont_write_bytecode):
    import pytest_tim._instrument as instrument_module

    root, start = project
    monkeypatch.setattr(sys, "dont_write_bytecode", dont_write_bytecode)
    write(root, "pkg/mod.py", "def f():\n    return 1\n")
    recorder = start()
    importlib.import_module("pkg.mod")
    pycache = root / "pkg" / "__pycache__"
    # Nothing a plain import would load: no `.pyc` at all.
    assert not list(root.rglob("*.pyc"))
    if dont_write_bytecode:
        assert not pycache.exists()
        cached = list((root / ".tim" / "pycache").iterdir())
    else:
        cached = list(pycache.iterdir())
    assert len(cached) == 2  # pkg/__init__.py and pkg/mod.py

    # A re-import of the same source is served from the cache: no parsing.
    del sys.modules["pkg.mod"]
    with monkeypatch.context() as m:
        m.setattr(instrument_module.ast, "parse", None)
        mod = importlib.import_module("pkg.mod")
    assert recorded(recorder, mod.f) == {"pkg/mod.py": ["f"]}

    # A corrupt cache entry is compiled again.
    del sys.modules["pkg.mod"]
    for path in cached:
        path.write_bytes(path.read_bytes()[:32] + b"corrupt")
    mod = importlib.import_module("pkg.mod")
    assert mod.f() == 1

    # An edited source is never served from the cache of the old one.
    del sys.modules["pkg.mod"]
    write(root, "pkg/mod.py", "def f():\n    return 2\n\ndef g():\n    return 3\n")
    importlib.invalidate_caches()
    mod = importlib.import_module("pkg.mod")
    assert recorded(recorder, lambda: (mod.f(), mod.g())) == {"pkg/mod.py": ["f", "g"]}


def test_project_code_run_without_the_import_hook_is_a_whole_file_dependency(project):
    root, start = project
    write(root, "pkg/script.py", "def main():\n    return 1\n\nmain()\n")
    write(root, "pkg/mod.py", "def f():\n    return 1\n")
    recorder = start()
    mod = importlib.import_module("pkg.mod")
    assert recorded(recorder, lambda: runpy.run_path(str(root / "pkg" / "script.py"))) == {"pkg/script.py": ["*"]}
    # And of every test after it: its functions may be called from anywhere.
    assert recorded(recorder, mod.f) == {"pkg/mod.py": ["f"], "pkg/script.py": ["*"]}


def test_modules_imported_before_recording_are_whole_file_dependencies(project):
    root, start = project
    write(root, "pkg/early.py", "def f():\n    return 1\n")
    recorder = start(preimport=["pkg.early"])
    assert recorded(recorder, lambda: None) == {"pkg/__init__.py": ["*"], "pkg/early.py": ["*"]}


def test_assertion_rewriting_still_explains_failures(pytester, monkeypatch):
    # A pytest session with the import hook in place: the test module goes
    # through tim's loader, and pytest's rewritten asserts still say why.
    from conftest import PYTHON_DIR

    monkeypatch.setenv("PYTHONPATH", str(PYTHON_DIR))
    pytester.makeconftest(
        textwrap.dedent(
            """
            import os
            from pytest_tim._instrument import Instrumenter
            from pytest_tim._recorder import project_filter

            root, is_project = project_filter(os.getcwd())
            INSTRUMENTER = Instrumenter(root, is_project, os.path.join(root, ".tim", "pycache"))
            INSTRUMENTER.install()
            """
        )
    )
    pytester.makepyfile(
        test_it="""
        import sys

        def test_values():
            a = [1, 2]
            assert a == [1, 3]

        def test_instrumented():
            assert "__tim_hits__" in sys.modules[__name__].__dict__
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "assert [1, 2] == [1, 3]" in out and "At index 1 diff: 2 != 3" in out


@pytest.mark.parametrize("instrument", [True, False])
def test_each_module_import_is_recorded_with_what_it_ran(project, monkeypatch, instrument):
    # `VALUE = build()` runs `build` once, while the first importer is
    # collected: every later importer depends on it all the same.
    root, _ = project
    write(root, "pkg/helpers.py", "def build():\n    return 1\n\n\ndef unused():\n    return 2\n")
    write(root, "pkg/m.py", "from pkg.helpers import build\n\nVALUE = build()\n")
    monkeypatch.setenv("TIM_RECORDER", "instrument" if instrument else "profile")
    real, is_project = project_filter(str(root))
    instrumenter = Instrumenter(real, is_project, str(root / ".tim" / "pycache"), instrument=instrument)
    instrumenter.install()
    recorder = Recorder(str(root), instrumenter if instrument else None)
    recorder.start()
    instrumenter.recorder = recorder
    try:
        test = recorder.push()
        importlib.import_module("pkg.m")
        recorder.pop(test)
    finally:
        recorder.stop()
    imports = {
        p[len(str(root.resolve())) + 1 :]: {f: sorted(n) for f, n in ctx.to_wire(recorder.root)["code"].items()} for p, ctx in instrumenter.imports.items()
    }
    # The package `__init__` ran before, in an import context of its own.
    assert imports["pkg/m.py"] == {"pkg/helpers.py": ["<module>", "build"], "pkg/m.py": ["<module>"]}
    assert imports["pkg/__init__.py"] in ({}, {"pkg/__init__.py": ["<module>"]})  # empty: nothing ran
    assert imports["pkg/helpers.py"] == {"pkg/helpers.py": ["<module>"]}
    # The test that imported it saw all of it too.
    assert "build" in test.to_wire(recorder.root)["code"]["pkg/helpers.py"]
