"""pytest-tim: the pytest side of tim, the test-impact daemon.

`pytest --tim` runs only the tests affected by what changed since they last
passed, and records what every test that runs depends on. `tim run` loads
this plugin by itself (`-p pytest_tim`), so it need not be installed.

When the daemon cannot be reached, or speaks another protocol, the plugin
warns once and runs every test: it never deselects on a guess.
"""

import json
import os
import sys
import time

import pytest

from pytest_tim._cache import ArtifactCache, artifact_cache, cached_fixture, mode_of
from pytest_tim._client import Connection, DaemonError, find_root, locate_socket
from pytest_tim._instrument import Instrumenter
from pytest_tim._recorder import Recorder, backend_choice, project_filter

__version__ = "0.1.0"

# Environment set by `tim run` for the pytest it starts.
ENV_MODE = "TIM_MODE"  # "affected" (select) or "all" (record everything)
ENV_COMMAND = "TIM_COMMAND"
ENV_ROOT = "TIM_ROOT"
ENV_ORDER = "TIM_ORDER"  # "quick-feedback" or "longest-first"
ENV_PROGRESS_FD = "TIM_PROGRESS_FD"  # a pipe for `tim run`'s progress display
ENV_SHARD = "TIM_SHARD"  # "I/N": run part I of N duration-balanced parts
ENV_SINCE = "TIM_SINCE"  # a git revision: also select what changed since its merge base
ENV_JOBS = "TIM_JOBS"  # set by `tim run -j N`: xdist workers get parts balanced by history
ORDERS = ("quick-feedback", "longest-first")

# Finished tests are sent in one `record` request per BATCH tests, or
# sooner when FLUSH_SECONDS have passed: the daemon then stores them while
# the next tests run, instead of all at the end.
BATCH = 200
FLUSH_SECONDS = 0.05


def pytest_addoption(parser):
    group = parser.getgroup("tim", "tim test-impact selection")
    group.addoption(
        "--tim",
        action="store_true",
        default=False,
        help="run only the tests affected by changes since they last passed, "
        "and record what each test depends on (needs the tim daemon)",
    )
    group.addoption(
        "--tim-all",
        action="store_true",
        default=False,
        help="run every collected test and record what each depends on",
    )
    group.addoption(
        "--tim-cache",
        choices=("use", "refresh", "replay-only"),
        default=None,
        help="the artifact cache (tim's cached fixtures): use valid entries and compute the rest (default), "
        "refresh (compute everything again), replay-only (compute nothing: a missing entry fails); "
        "default: $TIM_CACHE, else use",
    )
    group.addoption(
        "--tim-since",
        default=None,
        metavar="REV",
        help="also run the tests depending on files that differ from the merge base with REV "
        "(committed or not); default: $TIM_SINCE",
    )
    group.addoption(
        "--tim-shard",
        default=None,
        metavar="I/N",
        help="run only part I of N parts of the selected tests, balanced by their durations in "
        "tim's history (the same parts on every machine with the same history); default: $TIM_SHARD",
    )
    group.addoption(
        "--tim-order",
        choices=ORDERS,
        default=None,
        help="order of the tests: quick-feedback (failed last time, new, then fastest first) "
        "or longest-first (for parallel runs); default: run.order in tim.toml",
    )


def _mode(options):
    if getattr(options, "tim_all", False):
        return "all"
    if getattr(options, "tim", False):
        return "affected"
    return os.environ.get(ENV_MODE) or None


def _order(config):
    order = config.getoption("tim_order") or os.environ.get(ENV_ORDER) or None
    if order is not None and order not in ORDERS:
        _warn(f"{ENV_ORDER}={order!r} is not one of {', '.join(ORDERS)}; using the project's order")
        return None
    return order


def _shard(config):
    """{"index": I, "count": N} from --tim-shard or TIM_SHARD, or None."""
    text = config.getoption("tim_shard") or os.environ.get(ENV_SHARD)
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise pytest.UsageError(f"tim: shard {text!r} must be I/N with 1 <= I <= N, e.g. 2/4")
    return {"index": index, "count": count}


def _root(config):
    return os.environ.get(ENV_ROOT) or find_root(str(config.rootpath))


_INSTRUMENTER = pytest.StashKey()
_RECORDER = pytest.StashKey()
_CACHE = pytest.StashKey()

__all__ = ["ArtifactCache", "artifact_cache", "cached_fixture"]


@pytest.fixture(scope="session")
def tim_cache(request):
    """tim's artifact cache: `tim_cache.get_or_create(key, producer, ...)`,
    with `cache_hits`, `cache_misses` and `hit_rate`."""
    return artifact_cache(request.config)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # The import hook and the recorder must be in place before the first
    # conftest imports any project module: the hook instruments modules on
    # 3.11, and records what every module's import runs.
    if _mode(early_config.known_args_namespace) is None:
        return
    found = _root(early_config)
    if found is None:
        return
    root, is_project = project_filter(found)
    instrumenter = Instrumenter(
        root,
        is_project,
        os.path.join(root, ".tim", "pycache"),
        instrument=backend_choice() == "instrument",
    )
    instrumenter.install()
    early_config.stash[_INSTRUMENTER] = instrumenter
    recorder = Recorder(root, instrumenter if instrumenter.instrument else None)
    recorder.start()
    instrumenter.recorder = recorder
    early_config.stash[_RECORDER] = recorder


def pytest_configure(config):
    mode = _mode(config.option)
    if mode is None:
        return
    plugin = TimPlugin(config, mode)
    config.pluginmanager.register(plugin, "tim-session")


def pytest_unconfigure(config):
    _stop_recording(config)


def _stop_recording(config):
    instrumenter = config.stash.get(_INSTRUMENTER, None)
    if instrumenter is not None:
        instrumenter.uninstall()
        instrumenter.recorder = None
    recorder = config.stash.get(_RECORDER, None)
    if recorder is not None:
        recorder.stop()


class TimPlugin:
    def __init__(self, config, mode):
        self.config = config
        self.mode = mode
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.is_controller = not self.is_worker and _xdist_active(config)
        self.root = _root(config)
        self.conn = None
        self.run_id = None
        self.disabled_reason = None
        self.recorder = None
        self.instrumenter = None
        self.pending = []
        self.current = {}  # nodeid -> per-test state
        self.fixture_deps = {}  # FixtureDef -> Context
        self.collection = {}  # root-relative test file -> Context
        self._collecting = {}  # collector nodeid -> (file, Context)
        self.selected_count = None
        self.shard_seconds = []
        self.scheduler = None
        self.busy = {}  # xdist worker -> seconds of test reports
        self.last_finish = {}  # xdist worker -> when its last report came
        self._rel_cache = {}
        self._parent_markers = {}  # collector -> frozenset of marker names
        self._parent_groups = {}  # collector -> its closest xdist_group name
        self._last_flush = time.monotonic()
        self._collection_sent = set()
        self.estimates = {}  # node id -> seconds expected, from `select`
        # Only the main process reports progress (xdist workers' results
        # reach the controller's hooks too).
        self.progress = None if self.is_worker else _Progress.from_env()
        self._warned = set()
        # Cached fixtures ask the daemon through this plugin's connection
        # (computing everything when there is none).
        config.stash[_CACHE] = ArtifactCache(self, mode_of(config))
        if self.root is None:
            self._disable("no project root (tim.toml, pyproject.toml, Cargo.toml or .git) above the rootdir")
            return
        try:
            self.conn = Connection(locate_socket(self.root), __version__)
            if self.is_worker:
                self.run_id = workerinput.get("tim_run_id")
                if self.run_id is None:
                    raise DaemonError("the xdist controller did not start a tim run")
            else:
                begin = {
                    "command": os.environ.get(ENV_COMMAND) or " ".join(["pytest"] + list(config.invocation_params.args)),
                    "mode": mode,
                    "environment": _environment(self.root),
                    "collection": _collection_config(config, self.root),
                }
                order = _order(config)
                if order is not None:
                    begin["order"] = order
                shard = _shard(config)
                if shard is not None:
                    begin["shard"] = shard
                since = config.getoption("tim_since") or os.environ.get(ENV_SINCE)
                if since:
                    begin["since"] = since
                answer = self.conn.request("begin_run", begin)
                self.run_id = answer["run_id"]
                self._warn_all(self.conn.warnings)
        except DaemonError as e:
            self._disable(str(e))
            return
        if self.is_controller:
            # The workers record; the controller runs no test.
            _stop_recording(config)
            return
        self.instrumenter = config.stash.get(_INSTRUMENTER, None)
        self.recorder = config.stash.get(_RECORDER, None)
        if self.recorder is None:
            # Loaded too late for the import hook: no import records, which
            # the daemon treats conservatively.
            self.recorder = Recorder(self.root)
            self.recorder.start()

    # -- failures ---------------------------------------------------------

    def _disable(self, reason):
        if self.disabled_reason is None:
            self.disabled_reason = reason
            if not self.is_worker:
                _warn(f"{reason}; running every test without recording")
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        _stop_recording(self.config)
        self.recorder = None

    def _warn_once(self, message):
        if message not in self._warned:
            self._warned.add(message)
            _warn(message)

    def _warn_all(self, warnings):
        for w in warnings or ():
            _warn(w)

    # -- xdist --------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config, log):
        if not os.environ.get(ENV_JOBS) or self.conn is None:
            return None
        from pytest_tim._schedule import TimScheduling

        self.scheduler = TimScheduling(config, log, self._partition)
        return self.scheduler

    def _partition(self, collection, workers):
        """Parts of `collection` for `workers` workers, balanced by history,
        and their expected seconds; None when the daemon cannot say."""
        tests = [{"id": i, "file": i.split("::", 1)[0]} for i in collection]
        try:
            answer = self.conn.request(
                "select", {"run_id": self.run_id, "tests": tests, "parts": workers, "selected": True}
            )
        except DaemonError as e:
            self._warn_once(f"could not split the tests by their durations ({e}); using xdist's scheduling")
            return None
        if not answer.get("parts"):
            return None
        return answer["parts"], answer.get("part_seconds") or []

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):
        # Only called in an xdist controller: hand the run to the workers.
        if self.run_id is not None:
            node.workerinput["tim_run_id"] = self.run_id

    # -- collection -----------------------------------------------------------

    def pytest_collectstart(self, collector):
        # Importing a test module runs module-level code (constants,
        # parametrize data, files read at import): dependencies of every
        # test in that file.
        if self.recorder is None or not _is_module(collector):
            return
        rel = self._rel(collector.path)
        if rel is not None:
            self._collecting[collector.nodeid] = (rel, self.recorder.push())

    def pytest_collectreport(self, report):
        entry = self._collecting.pop(report.nodeid, None)
        if entry is None:
            return
        rel, ctx = entry
        self.recorder.pop(ctx)
        previous = self.collection.get(rel)
        if previous is not None:
            ctx.merge(previous)
        self.collection[rel] = ctx
        self._collection_sent.discard(rel)

    def pytest_collection_modifyitems(self, session, config, items):
        # In `all` mode the daemon deselects nothing but still orders.
        if self.conn is None or self.is_controller:
            return
        tests = []
        for item in items:
            test = {"id": item.nodeid, "file": self._rel(item.path) or ""}
            group = self._xdist_group(item)
            if group is not None:
                test["group"] = group
            tests.append(test)
        try:
            answer = self.conn.request("select", {"run_id": self.run_id, "tests": tests})
        except DaemonError as e:
            self._disable(f"selection failed: {e}")
            return
        # The daemon answers in the order to run: failed last time first,
        # then new tests, then the fastest.
        order = {node_id: i for i, node_id in enumerate(answer["run"])}
        self.estimates = dict(zip(answer["run"], answer.get("estimates") or ()))
        selected = sorted((item for item in items if item.nodeid in order), key=lambda i: order[i.nodeid])
        deselected = [item for item in items if item.nodeid not in order]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = selected
        if self.mode == "affected" or answer.get("shard_seconds"):
            self.selected_count = (len(selected), len(selected) + len(deselected))
        self.shard_seconds = answer.get("shard_seconds") or []

    def pytest_report_collectionfinish(self, config, start_path, items):
        if self.selected_count is None or self.is_worker:
            return None
        run, total = self.selected_count
        if self.shard_seconds:
            shard = _shard(config)
            mine = self.shard_seconds[shard["index"] - 1]
            loads = ", ".join(f"{s:.1f}s" for s in self.shard_seconds)
            return (
                f"tim: shard {shard['index']}/{shard['count']}: running {run} of {total} tests, "
                f"about {mine:.1f}s from history (shards: {loads})"
            )
        return f"tim: running {run} of {total} tests ({total - run} unaffected)"

    def pytest_report_header(self, config):
        if self.disabled_reason is not None or self.is_worker:
            return None
        backend = self.recorder.backend_name if self.recorder else "xdist workers"
        return f"tim: run {self.run_id}, mode {self.mode}, recording with {backend}"

    # -- running ----------------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        # Higher-scoped fixtures run once; what they execute is a dependency
        # of every test that uses them, not only of the first one.
        recorder = self.recorder
        if recorder is None or fixturedef.scope == "function":
            yield
            return
        ctx = recorder.push()
        try:
            yield
        finally:
            recorder.pop(ctx)
            # Keyed by the object: `id()` raises an audit event.
            previous = self.fixture_deps.get(fixturedef)
            if previous is not None:
                ctx.merge(previous)
            self.fixture_deps[fixturedef] = ctx

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if self.recorder is not None:
            self.current[item.nodeid] = {
                "ctx": self.recorder.push(),
                "outcome": None,
                "durations": {},
                "item": item,
            }

    def pytest_runtest_logreport(self, report):
        outcome = _outcome(report)
        if self.progress is not None and outcome is not None:
            self.progress.report(report.nodeid, outcome)
        node = getattr(report, "node", None) if self.is_controller else None
        if node is not None:
            # Which worker was busy for how long, for the makespan line.
            worker = node.gateway.id
            self.busy[worker] = self.busy.get(worker, 0.0) + report.duration
            self.last_finish[worker] = time.monotonic()
        state = self.current.get(report.nodeid)
        if state is None:
            return
        state["durations"][report.when] = report.duration
        if outcome is not None:
            state["outcome"] = _worst(state["outcome"], outcome)

    def pytest_runtest_logfinish(self, nodeid, location):
        if self.progress is not None:
            self.progress.finish(nodeid)
        state = self.current.pop(nodeid, None)
        if state is None or self.recorder is None:
            return
        ctx = self.recorder.pop(state["ctx"])
        item = state["item"]
        fixture_deps = self.fixture_deps
        if fixture_deps:
            for fixturedef in _fixturedefs(item):
                extra = fixture_deps.get(fixturedef)
                if extra is not None:
                    ctx.merge(extra)
        rel = self._rel(item.path)
        record = {
            "id": nodeid,
            "file": rel or "",
            "outcome": state["outcome"] or "passed",
            "durations": state["durations"],
            "deps": ctx.to_wire(self.recorder.root),
        }
        # For time budgets by marker (`tim audit`).
        markers = self._markers(item)
        if markers:
            record["markers"] = markers
        self.pending.append(record)
        if len(self.pending) >= BATCH or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self._flush()

    def pytest_collection_finish(self, session):
        if self.progress is not None and not self.is_controller:
            self.progress.start([item.nodeid for item in session.items], self.estimates)
        # What collecting each file depended on is known now: the daemon
        # stores it while the tests run.
        if self.recorder is not None:
            self._flush(self._unsent_collection())

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        # The controller collects nothing itself: its progress starts with
        # the first worker's collection (every worker collects alike), and
        # the daemon's selection for those ids gives their estimates.
        if self.progress is None or self.progress.started:
            return
        estimates = {}
        if self.conn is not None:
            tests = [{"id": i, "file": i.split("::", 1)[0]} for i in ids]
            try:
                answer = self.conn.request("select", {"run_id": self.run_id, "tests": tests, "selected": True})
                estimates = dict(zip(answer["run"], answer.get("estimates") or ()))
            except DaemonError:
                pass  # progress without an ETA; recording is the workers'
        self.progress.start(list(ids), estimates)

    def _unsent_imports(self):
        """What each project module imported since the last flush ran."""
        instrumenter = self.instrumenter
        if instrumenter is None or not instrumenter.imports:
            return []
        out = []
        for path, ctx in sorted(instrumenter.imports.items()):
            rel = self._rel(path)
            if rel is not None:
                out.append({"file": rel, "deps": ctx.to_wire(self.recorder.root)})
        instrumenter.imports.clear()
        return out

    def _unsent_collection(self):
        out = []
        for rel, ctx in sorted(self.collection.items()):
            if rel not in self._collection_sent:
                self._collection_sent.add(rel)
                out.append({"file": rel, "deps": ctx.to_wire(self.recorder.root)})
        return out

    def _flush(self, collection=None):
        self._last_flush = time.monotonic()
        # Imports first: the daemon stores them before the tests that need
        # them, which ran after the import.
        imports = self._unsent_imports() if self.recorder is not None else []
        if self.conn is None or (not self.pending and not collection and not imports):
            self.pending = []
            return
        data = {"run_id": self.run_id, "tests": self.pending}
        if collection:
            data["collection"] = collection
        if imports:
            data["imports"] = imports
        try:
            self.conn.send("record", data)
        except DaemonError as e:
            self._disable(f"recording failed: {e}")
        self.pending = []

    def pytest_terminal_summary(self, terminalreporter):
        if not self.busy or self.scheduler is None:
            return
        # The makespan, explained: how busy each worker was, how long each
        # waited for the last one, and what history expected.
        end = max(self.last_finish.values())
        expected = self.scheduler.expected
        parts = []
        for worker in sorted(self.busy):
            line = f"{worker} busy {self.busy[worker]:.2f}s, idle {end - self.last_finish[worker]:.2f}s at the end"
            if worker in expected:
                line += f" (expected {expected[worker]:.2f}s)"
            parts.append(line)
        terminalreporter.write_line("tim: workers: " + "; ".join(parts))

    def pytest_sessionfinish(self, session, exitstatus):
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.recorder is not None:
            self._flush(self._unsent_collection())
            self.recorder.stop()
            if self.conn is not None:
                try:
                    self.conn.drain()
                except DaemonError as e:
                    self._disable(f"recording failed: {e}")
        if self.conn is not None and not self.is_worker:
            try:
                self.conn.request(
                    "end_run",
                    {"run_id": self.run_id, "exit_status": int(exitstatus)},
                )
            except DaemonError as e:
                _warn(f"could not finish the tim run: {e}")
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- helpers ------------------------------------------------------------------

    def _markers(self, item):
        """The names of `item.iter_markers()` but plumbing, sorted; what
        the item's parents contribute is computed once per parent."""
        parent = item.parent
        inherited = self._parent_markers.get(parent)
        if inherited is None:
            inherited = frozenset(m.name for m in parent.iter_markers()) if parent is not None else frozenset()
            self._parent_markers[parent] = inherited
        own = item.own_markers
        if not own and not inherited:
            return None
        return sorted(inherited.union(m.name for m in own) - _PLUMBING_MARKERS)

    def _xdist_group(self, item):
        """The name of the test's closest `xdist_group` mark, if any; what
        its parents say is looked up once per parent."""
        for mark in item.own_markers:
            if mark.name == "xdist_group":
                return _group_name(mark)
        parent = item.parent
        try:
            return self._parent_groups[parent]
        except KeyError:
            pass
        mark = parent.get_closest_marker("xdist_group") if parent is not None else None
        group = None if mark is None else _group_name(mark)
        self._parent_groups[parent] = group
        return group

    def _rel(self, path):
        # Once per file, not once per test: `realpath` stats every component.
        key = str(path)
        try:
            return self._rel_cache[key]
        except KeyError:
            pass
        real = os.path.realpath(key)
        root = self.root.rstrip(os.sep) + os.sep
        rel = real[len(root):].replace(os.sep, "/") if real.startswith(root) else None
        self._rel_cache[key] = rel
        return rel


class _Progress:
    """Tells `tim run` how far the run is, for its progress bar: JSON lines
    on the pipe `tim run` passed as TIM_PROGRESS_FD.

    `{"event": "start", "tests": N, "seconds": S}` once the tests to run are
    known (S: their expected total from history, or null), then
    `{"event": "done", "count": n, "failed": f, "estimate": seconds}` for
    the tests finished since the last line, at most every 50 ms (a line per
    test would cost a write per test). If `tim` goes away, reporting stops;
    the tests go on."""

    def __init__(self, out):
        self._out = out
        # `TIM_PROGRESS_INTERVAL` (seconds) overrides the 50 ms; 0 writes a
        # line per test (the progress tests use it).
        try:
            self._interval = float(os.environ.get("TIM_PROGRESS_INTERVAL", "0.05"))
        except ValueError:
            self._interval = 0.05
        self._estimates = {}
        self._outcomes = {}
        self.started = False
        self._count = 0
        self._failed = 0
        self._estimate = 0.0
        self._last = 0.0

    @classmethod
    def from_env(cls):
        # Taken out of the environment, so that no process the tests start
        # (xdist workers, a nested pytest) writes to the pipe.
        fd = os.environ.pop(ENV_PROGRESS_FD, None)
        if not fd:
            return None
        try:
            os.set_inheritable(int(fd), False)
            return cls(os.fdopen(int(fd), "w", buffering=1, encoding="utf-8"))
        except (OSError, ValueError) as e:
            _warn(f"{ENV_PROGRESS_FD}={fd!r} is not a pipe to write progress to ({e}); no progress display")
            return None

    def _emit(self, event):
        if self._out is None:
            return
        try:
            self._out.write(json.dumps(event, separators=(",", ":")) + "\n")
        except (OSError, ValueError):
            self.close()

    def start(self, ids, estimates):
        self.started = True
        self._estimates = estimates
        known = [s for s in map(estimates.get, ids) if s is not None]
        seconds = sum(known) if known else None
        self._emit({"event": "start", "tests": len(ids), "seconds": seconds})
        self._last = time.monotonic()

    def report(self, nodeid, outcome):
        self._outcomes[nodeid] = _worst(self._outcomes.get(nodeid), outcome)

    def finish(self, nodeid):
        outcome = self._outcomes.pop(nodeid, None)
        self._count += 1
        if outcome in ("failed", "error", "xpassed"):
            self._failed += 1
        self._estimate += self._estimates.get(nodeid) or 0.0
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._flush()

    def _flush(self):
        if self._count:
            self._emit({"event": "done", "count": self._count, "failed": self._failed, "estimate": self._estimate})
            self._count = self._failed = 0
            self._estimate = 0.0

    def close(self):
        self._flush()
        out, self._out = self._out, None
        if out is not None:
            try:
                out.close()
            except OSError:
                pass


# Markers that say how a test runs, not what kind of test it is.
_PLUMBING_MARKERS = frozenset(("parametrize", "usefixtures", "filterwarnings"))


def _group_name(mark):
    name = mark.args[0] if mark.args else mark.kwargs.get("name")
    return None if name is None else str(name)


def _is_module(collector):
    return isinstance(collector, pytest.Module)


def _xdist_active(config):
    return config.pluginmanager.hasplugin("xdist") and (
        getattr(config.option, "numprocesses", None) or getattr(config.option, "dist", "no") != "no"
    )


def _fixturedefs(item):
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for defs in info.name2fixturedefs.values():
        yield from defs


_ORDER = {"passed": 0, "skipped": 1, "xfailed": 1, "xpassed": 2, "failed": 3, "error": 4}


def _worst(a, b):
    if a is None:
        return b
    return a if _ORDER[a] >= _ORDER[b] else b


def _outcome(report):
    if hasattr(report, "wasxfail"):
        if report.skipped:
            return "xfailed"
        if report.passed:
            return "xpassed"
    if report.when == "call":
        return report.outcome  # passed, failed, skipped
    if report.failed:
        return "error"
    if report.skipped:
        return "skipped"
    return None


def _environment(root):
    """What the daemon needs to notice an environment change by itself: the
    interpreter, and the directories holding installed distributions."""
    rootsep = os.path.realpath(root).rstrip(os.sep) + os.sep
    site_dirs, root_paths = [], []
    for entry in sys.path:
        if not entry:
            entry = os.getcwd()
        real = os.path.realpath(entry)
        if not os.path.isdir(real):
            continue
        if real.startswith(rootsep) or real == rootsep.rstrip(os.sep):
            rel = real[len(rootsep):].replace(os.sep, "/")
            if rel not in root_paths:
                root_paths.append(rel)
        elif real not in site_dirs:
            site_dirs.append(real)
    return {
        "python": _interpreter_identity(),
        "version": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "site_dirs": site_dirs,
        "root_paths": root_paths,
    }


def _collection_config(config, root):
    """pytest's discovery settings: which files hold tests, and where."""
    rootsep = os.path.realpath(root).rstrip(os.sep) + os.sep
    testpaths = []
    for path in config.getini("testpaths") or ():
        real = os.path.realpath(os.path.join(str(config.rootpath), path))
        if real.startswith(rootsep):
            testpaths.append(real[len(rootsep):].replace(os.sep, "/"))
    return {"python_files": list(config.getini("python_files") or ()), "testpaths": testpaths}


def _interpreter_identity():
    """`venv:<prefix>` for a virtualenv, else the interpreter's real path;
    `tim` computes the same from a path without starting Python."""
    if sys.prefix != sys.base_prefix:
        return "venv:" + os.path.realpath(sys.prefix)
    return os.path.realpath(sys.executable)


def _warn(message):
    sys.stderr.write(f"pytest-tim: warning: {message}\n")
