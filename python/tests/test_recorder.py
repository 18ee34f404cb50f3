"""The recorder: code objects into nested contexts, files through the audit
hook, and nothing outside the root or inside .tim."""

import importlib
import sys

import pytest

from pytest_tim._instrument import Instrumenter
from pytest_tim._recorder import Recorder, project_filter

# Every backend this interpreter can run.
BACKENDS = ["monitoring"] if hasattr(sys, "monitoring") else ["instrument", "profile"]


def wire_of(ctx, recorder):
    """`ctx.to_wire`, with its lists sorted and the empty ones present."""
    wire = ctx.to_wire(recorder.root)
    wire["code"] = {f: sorted(names) for f, names in wire["code"].items()}
    wire.setdefault("files", [])
    wire.setdefault("dirs", [])
    return wire


@pytest.fixture(params=BACKENDS)
def project(request, tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text(
        "def first():\n    return 1\n\n\ndef second():\n    def inner():\n        return 2\n    return inner()\n"
    )
    (root / "data.json").write_text("{}")
    (root / ".tim").mkdir()
    (root / ".tim" / "state").write_text("x")
    monkeypatch.syspath_prepend(str(root))
    for name in ("pkg", "pkg.mod"):
        sys.modules.pop(name, None)
    monkeypatch.setenv("TIM_RECORDER", request.param)
    instrumenter = None
    if request.param == "instrument":
        real, is_project = project_filter(str(root))
        instrumenter = Instrumenter(real, is_project, str(root / ".tim" / "pycache"))
        instrumenter.install()
    recorder = Recorder(str(root), instrumenter)
    assert request.param in recorder.backend_name or (request.param == "profile" and "cProfile" in recorder.backend_name)
    recorder.start()
    yield root, recorder
    recorder.stop()


def test_nested_contexts_each_see_what_ran_while_they_were_open(project):
    root, recorder = project
    mod = importlib.import_module("pkg.mod")
    test = recorder.push()
    mod.first()
    fixture = recorder.push()
    mod.first()  # seen before by the test; the fixture must still get it
    mod.second()
    recorder.pop(fixture)
    recorder.pop(test)
    wire = wire_of(test, recorder)
    assert wire["code"] == {"pkg/mod.py": ["first", "second", "second.<locals>.inner"]}
    assert wire_of(fixture, recorder)["code"] == {"pkg/mod.py": ["first", "second", "second.<locals>.inner"]}


def test_identical_functions_in_two_files_are_both_recorded(project):
    # Code objects compare by value: these two are equal.
    root, recorder = project
    for name in ("twin_a", "twin_b"):
        (root / "pkg" / f"{name}.py").write_text("def helper():\n    return 1\n")
        sys.modules.pop(f"pkg.{name}", None)
    importlib.invalidate_caches()
    ctx = recorder.push()
    a = importlib.import_module("pkg.twin_a")
    b = importlib.import_module("pkg.twin_b")
    recorder.pop(ctx)
    assert a.helper.__code__ == b.helper.__code__
    test = recorder.push()
    a.helper()
    b.helper()
    recorder.pop(test)
    assert wire_of(test, recorder)["code"] == {"pkg/twin_a.py": ["helper"], "pkg/twin_b.py": ["helper"]}


def test_files_read_are_recorded_writes_and_outside_paths_are_not(project, tmp_path):
    root, recorder = project
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    ctx = recorder.push()
    (root / "data.json").read_text()
    (root / "out.txt").write_text("written, not read")
    outside.read_text()
    (root / ".tim" / "state").read_text()
    sorted((p.name for p in root.iterdir()))
    recorder.pop(ctx)
    wire = wire_of(ctx, recorder)
    assert wire["files"] == ["data.json"]
    assert wire["dirs"] == [""]


def test_nothing_is_recorded_outside_contexts(project):
    root, recorder = project
    mod = importlib.import_module("pkg.mod")
    mod.first()
    (root / "data.json").read_text()
    ctx = recorder.push()
    recorder.pop(ctx)
    assert wire_of(ctx, recorder) == {"code": {}, "files": [], "dirs": []}


def test_installed_packages_inside_the_root_are_not_project_code(project, monkeypatch):
    root, recorder = project
    site = root / ".venv" / "lib" / "python3" / "site-packages" / "vendored"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("def helper():\n    return 1\n")
    (site / "DATA.txt").write_text("x")
    monkeypatch.syspath_prepend(str(site.parent))
    sys.modules.pop("vendored", None)
    vendored = importlib.import_module("vendored")
    mod = importlib.import_module("pkg.mod")
    ctx = recorder.push()
    vendored.helper()
    mod.first()
    (site / "DATA.txt").read_text()
    recorder.pop(ctx)
    wire = wire_of(ctx, recorder)
    assert list(wire["code"]) == ["pkg/mod.py"]
    assert wire["files"] == []


def test_imports_list_directories_without_creating_dependencies(project):
    root, recorder = project
    (root / "pkg" / "late.py").write_text("X = 1\n")
    sys.modules.pop("pkg.late", None)
    importlib.invalidate_caches()
    ctx = recorder.push()
    importlib.import_module("pkg.late")
    recorder.pop(ctx)
    assert wire_of(ctx, recorder)["dirs"] == []


def test_sqlite_databases_opened_by_tests_are_files_read(project):
    import sqlite3

    root, recorder = project
    db = root / "fixtures.sqlite"
    sqlite3.connect(str(db)).close()
    ctx = recorder.push()
    sqlite3.connect(str(db)).close()
    sqlite3.connect(":memory:").close()
    recorder.pop(ctx)
    assert wire_of(ctx, recorder)["files"] == ["fixtures.sqlite"]


def test_recording_switched_off_by_the_code_under_test_is_noticed_and_restored(project):
    root, recorder = project
    mod = importlib.import_module("pkg.mod")
    ctx = recorder.push()
    backend = recorder._backend
    if hasattr(sys, "monitoring"):
        tool = backend._tool
        sys.monitoring.register_callback(tool, sys.monitoring.events.PY_START, None)
        sys.monitoring.free_tool_id(tool)
    elif "cProfile" in recorder.backend_name:
        sys.setprofile(None)
    else:
        # Instrumented code records whatever happens to hooks; what the code
        # under test can switch off is the import hook. A module imported
        # after that runs uninstrumented: a whole-file dependency, not a gap.
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Finder"]
        (root / "pkg" / "late.py").write_text("def late():\n    return 3\n")
        sys.modules.pop("pkg.late", None)
        importlib.invalidate_caches()
        importlib.import_module("pkg.late").late()
        recorder.pop(ctx)
        assert wire_of(ctx, recorder)["code"]["pkg/late.py"] == ["*"]
        return
    mod.first()
    recorder.pop(ctx)
    assert "switched off" in wire_of(ctx, recorder)["incomplete"]
    again = recorder.push()
    mod.second()
    recorder.pop(again)
    wire = wire_of(again, recorder)
    assert "incomplete" not in wire
    assert "second" in wire["code"]["pkg/mod.py"]


def test_a_recursion_error_in_a_test_does_not_end_recording(project):
    root, recorder = project
    mod = importlib.import_module("pkg.mod")

    def deep(n):
        return deep(n + 1)

    ctx = recorder.push()
    try:
        deep(0)
    except RecursionError:
        pass
    recorder.pop(ctx)
    after = recorder.push()
    mod.first()
    recorder.pop(after)
    assert wire_of(after, recorder)["code"]["pkg/mod.py"] == ["first"]


def test_code_run_by_a_thread_the_test_started_is_recorded(project):
    import threading

    root, recorder = project
    mod = importlib.import_module("pkg.mod")
    ctx = recorder.push()
    worker = threading.Thread(target=mod.second)
    worker.start()
    worker.join()
    recorder.pop(ctx)
    assert "second" in wire_of(ctx, recorder)["code"]["pkg/mod.py"]
