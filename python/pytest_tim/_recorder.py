"""Recording what a test depends on: the code it runs and the files it reads.

Code is recorded at function granularity from function-entry events, never
by line tracing:

* Python >= 3.12: `sys.monitoring` PY_START and PY_RESUME events (a
  generator resumed in a later test runs its body without a PY_START). A
  code object's first
  call since the last re-arm is recorded and its second returns DISABLE,
  so each costs at most two events until the next test (or fixture
  context) re-arms the ones disabled.
* Python 3.11: the project's own modules are compiled with a hit statement
  at the top of every function (`_instrument.py`), read at every context
  boundary. Nobody else's code pays anything; threads need nothing extra.
  Measured against the alternatives in `bench/README.md`.
* Python 3.11 when the import hook could not be installed before the
  project's first import (or `TIM_RECORDER=profile`): the C profiler
  (`cProfile`), read at every context boundary. Its per-call cost is paid
  in C, but for every call in the process. Threads started by the code
  under test get a call-only `sys.settrace` function. An already installed
  tracer (coverage, a debugger) keeps working: the profiler uses the
  separate profile hook.

Files are recorded with an audit hook: `open` for reads, `os.listdir` and
`os.scandir` for directory listings (a glob over a data directory), under
the project root only.

Recording happens into *contexts* (sets); several can be active at once (a
test and the session fixture it is setting up), and every event goes into
all of them.
"""

import os
import sys
import threading

from pytest_tim._instrument import WHOLE_FILE

_WRITE_ONLY = os.O_WRONLY
_CODE = type(compile("", "", "exec"))
_MACHINERY = os.sep + "_pytest" + os.sep
_IMPORTLIB = os.sep + "importlib" + os.sep
_PYCACHE = os.sep + "__pycache__"
_PYCACHE_DIR = _PYCACHE + os.sep


class Context:
    __slots__ = ("code", "files", "dirs", "artifacts", "incomplete")

    def __init__(self):
        self.code = set()
        self.files = set()
        self.dirs = set()
        # Keys of artifact cache entries used: what produced them counts.
        self.artifacts = set()
        # Why recording may have missed something while this context was
        # open (None: nothing known to be missed).
        self.incomplete = None

    def merge(self, other):
        self.code |= other.code
        self.files |= other.files
        self.dirs |= other.dirs
        self.artifacts |= other.artifacts
        self.incomplete = self.incomplete or other.incomplete

    def to_wire(self, root):
        """`{"code": {file: [qualname, ...]}, "files": [...], "dirs": [...]}`
        with root-relative, `/`-separated paths; empty lists are left out,
        and names come in no particular order (the daemon sorts)."""
        code = {}
        rel_of = _WIRE_FILES
        # Every backend records (filename, qualname) pairs, never code
        # objects: those compare by value, and identical functions in two
        # files are equal.
        for filename, qualname in self.code:
            try:
                rel = rel_of[filename]
            except KeyError:
                rel = rel_of[filename] = _project_relative(root, filename)
            if rel is None:
                continue
            names = code.get(rel)
            if names is None:
                code[rel] = [qualname]
            else:
                names.append(qualname)
        wire = {"code": code}
        if self.files:
            wire["files"] = sorted(r for r in map(lambda p: _project_relative(root, p), self.files) if r)
        if self.dirs:
            wire["dirs"] = sorted(r for r in map(lambda p: _project_relative(root, p), self.dirs) if r is not None)
        if self.artifacts:
            wire["artifacts"] = sorted(self.artifacts)
        if self.incomplete:
            wire["incomplete"] = self.incomplete
        return wire


def _environment_prefixes(root):
    """Root-relative prefixes of the interpreter's own trees when they lie
    inside the root (a `.venv/` in the project): installed packages are
    tracked as the environment, not as project code."""
    out = [".tim/"]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        rel = _relative(root, os.path.realpath(prefix))
        if rel:
            out.append(rel.rstrip("/") + "/")
    return tuple(out)


_EXCLUDED = (".tim/",)


def _excluded(rel):
    return rel.startswith(_EXCLUDED) or "/site-packages/" in rel or "/dist-packages/" in rel


_PROJECT_RELATIVE = {}
# Filename -> root-relative path or None, for `Context.to_wire`. One root
# per process (`project_filter` clears it).
_WIRE_FILES = {}


def _project_relative(root, path):
    """`_relative` for the project's own files (None for others), memoized:
    every test reports the same few files."""
    key = (root, path)
    try:
        return _PROJECT_RELATIVE[key]
    except KeyError:
        pass
    rel = _relative(root, path)
    if rel is not None and _excluded(rel):
        rel = None
    _PROJECT_RELATIVE[key] = rel
    return rel


def _relative(root, path):
    if path == root.rstrip(os.sep):
        return ""
    if not path.startswith(root):
        return None
    rel = path[len(root):]
    if os.sep != "/":
        rel = rel.replace(os.sep, "/")
    return rel


def project_filter(root):
    """`root` with a trailing separator, and a predicate telling whether a
    real path is the project's own source (under the root, outside `.tim/`
    and any environment inside the root)."""
    root = os.path.realpath(root).rstrip(os.sep) + os.sep
    global _EXCLUDED
    _EXCLUDED = _environment_prefixes(root)
    _PROJECT_RELATIVE.clear()
    _WIRE_FILES.clear()

    def is_project(path):
        rel = _relative(root, path)
        return rel is not None and not _excluded(rel)

    return root, is_project


# `TIM_RECORDER` forces a backend (for benchmarks and tests): `monitoring`
# (>= 3.12), `instrument` or `profile`.
ENV_BACKEND = "TIM_RECORDER"


def backend_choice():
    """The backend to use on this interpreter: `TIM_RECORDER`, or the best
    one available."""
    forced = os.environ.get(ENV_BACKEND)
    if forced in ("monitoring", "instrument", "profile"):
        if forced != "monitoring" or hasattr(sys, "monitoring"):
            return forced
    return "monitoring" if hasattr(sys, "monitoring") else "instrument"


# The sys.monitoring events recorded: entering a function, and resuming a
# generator or coroutine.
_EVENTS = (sys.monitoring.events.PY_START | sys.monitoring.events.PY_RESUME) if hasattr(sys, "monitoring") else 0

_AUDITED = frozenset(("exec", "open", "sqlite3.connect", "os.listdir", "os.scandir"))


class Recorder:
    """One per process. `push()` starts a context, `pop()` ends it.

    `instrumenter` is the installed import hook (`_instrument.Instrumenter`)
    when the instrumenting backend is wanted; without one, Python 3.11 falls
    back to the profiler."""

    def __init__(self, root, instrumenter=None):
        self.root, self.is_project = project_filter(root)
        self._root_dir = self.root.rstrip(os.sep)
        self._state_dir = self.root + ".tim" + os.sep
        self._active = []  # the contexts receiving events; mutated in place
        choice = backend_choice()
        if choice == "monitoring":
            self._backend = _MonitoringBackend(self)
        elif choice == "instrument" and instrumenter is not None:
            self._backend = _InstrumentBackend(self, instrumenter)
        else:
            self._backend = _ProfileBackend(self)
        self.backend_name = self._backend.name
        self._on_exec = getattr(self._backend, "on_exec", None)
        sys.addaudithook(self._audit)

    def start(self):
        self._backend.start()

    def stop(self):
        self._backend.stop()

    def push(self):
        ctx = Context()
        self._backend.boundary()
        self._active.append(ctx)
        # Code objects already seen must be reported again to this context.
        self._backend.rearm()
        return ctx

    def pop(self, ctx):
        self._backend.boundary()
        try:
            self._active.remove(ctx)
        except ValueError:
            pass
        lost = self._backend.lost()
        if lost:
            ctx.incomplete = lost
            for other in self._active:
                other.incomplete = other.incomplete or lost
        return ctx

    def add_artifact(self, key, blob):
        """Every open context used the artifact cache entry `key`, holding
        the artifact whose digest is `blob`."""
        entry = f"{key}@{blob}"
        for ctx in self._active:
            ctx.artifacts.add(entry)

    def _audit(self, event, args):
        # Called for every audit event of the process (`id()`, attribute
        # access on code objects, `putenv`...): one set lookup for those.
        if event not in _AUDITED:
            return
        if event == "exec":
            # A module (or code given to exec) is about to run.
            if self._on_exec is not None and isinstance(args[0], _CODE):
                self._on_exec(args[0])
            return
        # Audit hooks cannot be removed; when nothing records, return fast.
        if not self._active:
            return
        if event == "open":
            path, mode, flags = args
            kind = "files"
            if mode is not None:
                if "r" not in mode and "+" not in mode:
                    return
            elif flags is not None and flags & os.O_ACCMODE == _WRITE_ONLY:
                return
        elif event == "sqlite3.connect":
            # SQLite opens its file in C, past the `open` event.
            path, kind = args[0], "files"
            if not isinstance(path, (str, bytes, os.PathLike)) or path in (":memory:", "", b""):
                return
        elif event in ("os.listdir", "os.scandir"):
            # The import system and pytest's own discovery list directories
            # all the time; only listings made by the code under test (a
            # glob over a data directory) are dependencies.
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith("<frozen") or _MACHINERY in caller or _IMPORTLIB in caller:
                return
            path = args[0]
            kind = "dirs"
        else:
            return
        if path is None or isinstance(path, int):
            return
        try:
            path = os.fsdecode(path)
        except TypeError:
            return
        path = os.path.abspath(path)
        if not (path.startswith(self.root) or path == self._root_dir) or path.startswith(self._state_dir):
            return
        # Bytecode caches (`.pyc`, pytest's rewritten modules, the 3.11
        # instrumenter's own) are derived from sources tracked as code.
        if _PYCACHE_DIR in path or path.endswith(_PYCACHE):
            return
        if kind == "files":
            # Python sources are tracked as code.
            if path.endswith((".py", ".pyc")):
                return
            for ctx in self._active:
                ctx.files.add(path)
        else:
            for ctx in self._active:
                ctx.dirs.add(path)


class _MonitoringBackend:
    """PY_START events as *local* events on the project's code objects only:
    pytest's and the standard library's functions never call back, so
    re-arming them all for every test costs nothing. Code objects are found
    when their module executes (the `exec` audit event, which every import
    raises) and, for modules imported before recording started, through the
    live function objects."""

    name = "sys.monitoring"

    def __init__(self, recorder):
        self._recorder = recorder
        self._tool = None
        # The code objects armed, to arm again if our tool id is taken
        # back. (A list: code objects compare by value, and two identical
        # functions in two files are equal.)
        self._instrumented = []
        self._on_start = None
        # Code objects recorded since the last re-arm, and those of them
        # whose event was disabled.
        self._seen = set()
        self._fired = []

    def start(self):
        mon = sys.monitoring
        for tool in (mon.PROFILER_ID, 3, 4, 5, mon.OPTIMIZER_ID):
            if mon.get_tool(tool) is None:
                mon.use_tool_id(tool, "tim")
                self._tool = tool
                break
        else:
            raise RuntimeError("no free sys.monitoring tool id")
        active = self._recorder._active
        disable = mon.DISABLE
        seen = self._seen
        fired = self._fired

        # The first call of a code object since the last re-arm is
        # recorded; the second disables its event until the next re-arm. A
        # function called once per test (most of them) then costs one
        # callback and no re-arming at all, and one called in a loop costs
        # two callbacks.
        def on_start(code, offset):
            key = (code.co_filename, code.co_qualname)
            if key in seen:
                fired.append(code)
                return disable
            seen.add(key)
            for ctx in active:
                ctx.code.add(key)

        self._on_start = on_start
        mon.register_callback(self._tool, mon.events.PY_START, on_start)
        # A generator or coroutine resumed in a later test runs its body
        # again without a PY_START. (One resumed by `throw()` raises
        # PY_THROW, which cannot be a local event, so it is not seen: the
        # code it runs was entered in some test, which depends on it.)
        mon.register_callback(self._tool, mon.events.PY_RESUME, on_start)
        if self._instrumented:
            # Taken back after the code under test freed our tool id.
            for code in self._instrumented:
                mon.set_local_events(self._tool, code, _EVENTS)
            return
        # Modules the project imported before recording started (the
        # conftest files, what they import): arm their functions, found
        # through module and class namespaces. Later imports are armed on
        # `exec`.
        root = self._recorder.root
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None) or ""
            if path.startswith(root):
                self._arm_namespace(vars(module), set())

    def _arm_namespace(self, namespace, seen):
        import types

        for value in list(namespace.values()):
            if id(value) in seen:
                continue
            seen.add(id(value))
            while isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                for f in (value.fget, value.fset, value.fdel):
                    if isinstance(f, types.FunctionType):
                        self.instrument(f.__code__)
                continue
            wrapped = getattr(value, "__wrapped__", None)
            if isinstance(wrapped, types.FunctionType):
                self.instrument(wrapped.__code__)
            if isinstance(value, types.FunctionType):
                self.instrument(value.__code__)
            elif isinstance(value, type) and value.__module__ in sys.modules:
                self._arm_namespace(vars(value), seen)

    def on_exec(self, code):
        if self._tool is not None:
            self.instrument(code)

    def instrument(self, code):
        """Arms `code` and the code objects nested in it, if they are the
        project's."""
        mon = sys.monitoring
        tool = self._tool
        armed = mon.get_local_events
        root = self._recorder.root
        stack = [code]
        while stack:
            c = stack.pop()
            # Armed already (with the code nested in it)? Asked of the code
            # object itself: a set of `id()`s would raise an audit event
            # per lookup.
            if armed(tool, c) == _EVENTS:
                continue
            rel = _relative(root, c.co_filename)
            if rel is None or _excluded(rel):
                continue
            self._instrumented.append(c)
            mon.set_local_events(tool, c, _EVENTS)
            stack.extend(k for k in c.co_consts if type(k) is _CODE)

    def boundary(self):
        pass

    def rearm(self):
        # Only the code objects in `fired` are disabled; re-arming them one
        # by one leaves every other code object of the process alone, where
        # `restart_events()` makes each of them (pytest's included) update
        # its instrumentation on its next call.
        self._seen.clear()
        fired = self._fired
        if not fired or self._tool is None:
            return
        set_local = sys.monitoring.set_local_events
        tool = self._tool
        try:
            # Popped one by one: another thread may disable a code object
            # (and append it) while this runs.
            while fired:
                code = fired.pop()
                set_local(tool, code, 0)
                set_local(tool, code, _EVENTS)
        except ValueError:
            # Our tool id was freed by the code under test: `lost()` notices
            # and takes it back at the end of the context.
            pass

    def lost(self):
        """Why events may have been missed since the last check, or None."""
        mon = sys.monitoring
        intact = False
        if self._tool is not None and mon.get_tool(self._tool) == "tim":
            try:
                intact = mon.register_callback(self._tool, mon.events.PY_START, self._on_start) is self._on_start
            except ValueError:
                intact = False
        if intact:
            return None
        # Someone freed our tool id or replaced our callback: take it back.
        try:
            self.stop()
        except ValueError:
            self._tool = None
        self.start()
        return "recording was switched off by the code under test"

    def stop(self):
        if self._tool is None:
            return
        mon = sys.monitoring
        tool, self._tool = self._tool, None
        if mon.get_tool(tool) == "tim":
            mon.register_callback(tool, mon.events.PY_START, None)
            mon.register_callback(tool, mon.events.PY_RESUME, None)
            mon.free_tool_id(tool)


class _InstrumentBackend:
    """Hits from the project's instrumented modules (`_instrument.py`),
    harvested at every boundary into the contexts open since the last one."""

    name = "source instrumentation (function entry)"

    def __init__(self, recorder, instrumenter):
        self._recorder = recorder
        self._instrumenter = instrumenter
        # Project files whose code runs uninstrumented: dependencies of every
        # context as a whole.
        self._whole = set()

    def start(self):
        self._instrumenter.install()
        for path in self._instrumenter.preimported:
            self._whole.add(path)
        self._instrumenter.clear()

    def on_exec(self, code):
        if code is self._instrumenter.executing:
            return
        path = code.co_filename
        if path.endswith(".py") and self._recorder.is_project(os.path.realpath(path)):
            self._whole.add(path)
            for ctx in self._recorder._active:
                ctx.code.add((path, WHOLE_FILE))

    def boundary(self):
        active = self._recorder._active
        if not active:
            self._instrumenter.clear()
            return
        if len(active) == 1:
            sink = active[0].code.add
        else:

            def sink(key):
                for ctx in active:
                    ctx.code.add(key)

        self._instrumenter.harvest(sink)
        for path in self._whole:
            for ctx in active:
                ctx.code.add((path, WHOLE_FILE))

    def rearm(self):
        pass

    def lost(self):
        return None

    def stop(self):
        self._instrumenter.uninstall()


class _ProfileBackend:
    """Python 3.11: `cProfile` while a context is open, harvested whenever
    the set of open contexts changes, so each code object goes to exactly
    the contexts that were open when it ran."""

    name = "cProfile (function calls)"

    def __init__(self, recorder):
        self._recorder = recorder
        self._prof = None
        self._lost = None
        self._thread_seen = set()

    def start(self):
        import cProfile

        # No C functions, no caller-callee pairs: only which Python
        # functions ran, which also makes reading the stats cheap.
        self._prof = cProfile.Profile(subcalls=False, builtins=False)
        root = self._recorder.root
        active = self._recorder._active
        seen = self._thread_seen

        # New threads: the profiler only covers the thread that enabled it.
        def thread_trace(frame, event, arg):
            code = frame.f_code
            key = (code.co_filename, code.co_qualname)
            if key not in seen:
                seen.add(key)
                if key[0].startswith(root):
                    for ctx in active:
                        ctx.code.add(key)
            return None

        threading.settrace(thread_trace)

    def boundary(self):
        """Hands what ran since the last boundary to the open contexts."""
        prof = self._prof
        if prof is None:
            return
        active = self._recorder._active
        if active:
            if sys.getprofile() is not prof:
                self._lost = "the profiler was switched off by the code under test"
            prof.disable()
            root = self._recorder.root
            for entry in prof.getstats():
                code = entry.code
                if type(code) is _CODE and code.co_filename.startswith(root):
                    key = (code.co_filename, code.co_qualname)
                    for ctx in active:
                        ctx.code.add(key)
            prof.clear()

    def rearm(self):
        self._thread_seen.clear()
        # Profile while any context is open (push appended one already).
        if self._recorder._active and self._prof is not None:
            self._prof.enable()

    def lost(self):
        lost, self._lost = self._lost, None
        if self._recorder._active and self._prof is not None:
            self._prof.enable()
        return lost

    def stop(self):
        if self._prof is not None:
            self._prof.disable()
            self._prof = None
        threading.settrace(None)
