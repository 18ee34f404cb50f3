"""The fixture artifact cache: expensive fixture values computed once and
reused by content, until the code or files that produced them change.

    @pytest_tim.cached_fixture(scope="session")
    def irs(responses):
        return {p: translate(r) for p, r in responses.items()}

    def test_answer(tim_cache):
        text = tim_cache.get_or_create(("generate", prompt), lambda: generate(prompt),
                                       serializer="json", code_independent=True)

An entry is found by the fixture's identity plus its inputs (its
parameter, the values of the fixtures it takes, `inputs=`), and is valid
while everything that ran or was read while producing it is unchanged: the
daemon records it with the same machinery as a test's dependencies.
`code_independent=True` keeps an entry valid whatever the code does
(recorded API responses). Artifacts are files under `.tim/cache/`, named by
their blake3 digest, verified by the daemon on every hit and handed over as
paths. When no daemon is reachable, every call computes.
"""

import functools
import hashlib
import inspect
import json
import os
import pickle
import sys
import time

ENV_CACHE = "TIM_CACHE"
# Command-line spelling -> wire spelling.
MODES = {"use": "use", "refresh": "refresh", "replay-only": "replay_only"}


def _as_bytes(value):
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"serializer='bytes' needs a bytes value, not {type(value).__name__}")
    return bytes(value)


_SERIALIZERS = {
    "pickle": (lambda v: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads),
    "json": (lambda v: json.dumps(v, sort_keys=True).encode(), json.loads),
    "bytes": (_as_bytes, bytes),
}


def _serializer(spec):
    """(name, dumps, loads) for "pickle", "json", "bytes" or an object with
    `dumps(value) -> bytes` and `loads(bytes) -> value`."""
    if isinstance(spec, str):
        try:
            dumps, loads = _SERIALIZERS[spec]
        except KeyError:
            raise ValueError(f"unknown serializer {spec!r}: use pickle, json, bytes or an object with dumps/loads") from None
        return spec, dumps, loads
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        name = getattr(spec, "__name__", None) or type(spec).__qualname__
        return f"custom:{name}", spec.dumps, spec.loads
    raise TypeError(f"serializer must be pickle, json, bytes or an object with dumps/loads, not {spec!r}")


def _canonical(value, path="inputs"):
    """A stable text for a key part: the same value gives the same text in
    every process and run."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value)
    if isinstance(value, (bytes, bytearray)):
        return "b:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(_canonical(v, path) for v in value)) + "}"
    if isinstance(value, dict):
        items = sorted((_canonical(k, path), _canonical(v, f"{path}[{k!r}]")) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    try:
        data = pickle.dumps(value, protocol=4)
    except Exception as e:
        raise TypeError(
            f"cannot use {path} ({type(value).__name__}) in a cache key: {e}; make it plain data "
            "(str, numbers, lists, dicts) or picklable; a cached fixture's key includes the values "
            "of the fixtures it takes"
        ) from None
    return "p:" + hashlib.sha256(data).hexdigest()


class CacheMiss(Exception):
    """Replay-only, and no valid entry."""


class ArtifactCache:
    """Per process. `cache_hits`, `cache_misses` and `hit_rate` count this
    process's lookups (`tim cache stats` has the totals)."""

    def __init__(self, plugin=None, mode="use"):
        self._plugin = plugin
        self.mode = mode
        self.cache_hits = 0
        self.cache_misses = 0
        self._tmp_serial = 0

    @property
    def hit_rate(self):
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0

    def get_or_create(self, key, producer, *, inputs=None, serializer="pickle", code_independent=False, fixture=None):
        """The value stored under `key` (plus `inputs`) if it is still
        valid, else `producer()`, stored for next time."""
        name = _serializer(serializer)[0]
        if fixture is None:
            fixture = _caller(getattr(self._plugin, "root", None))
        # The serializer is part of the key: switching it reads nothing
        # written the other way.
        full_key = f"{fixture}:{hashlib.sha256(_canonical((key, inputs, name)).encode()).hexdigest()[:32]}"
        return self._lookup(full_key, fixture, producer, serializer, code_independent)

    def _lookup(self, key, fixture, producer, serializer, code_independent):
        name, dumps, loads = _serializer(serializer)
        plugin = self._plugin
        conn = getattr(plugin, "conn", None)
        if conn is None:
            self.cache_misses += 1
            return producer()
        from pytest_tim._client import DaemonError

        try:
            answer = conn.request(
                "cache_get",
                {"run_id": plugin.run_id, "key": key, "fixture": fixture, "mode": MODES[self.mode]},
            )
        except DaemonError as e:
            plugin._warn_once(f"the artifact cache is unavailable ({e}); computing {fixture}")
            self.cache_misses += 1
            return producer()
        status = answer.get("status")
        if status == "hit":
            try:
                with open(answer["path"], "rb") as f:
                    value = loads(f.read())
            except Exception as e:
                # Unreadable here (a class that moved, a module not
                # installed): computed and stored again, never a failure.
                plugin._warn_once(f"cannot read the cached {fixture} ({type(e).__name__}: {e}); computing it")
                try:
                    answer = conn.request(
                        "cache_get",
                        {"run_id": plugin.run_id, "key": key, "fixture": fixture, "mode": "refresh"},
                    )
                except DaemonError:
                    answer = {"status": "compute"}
                status = answer.get("status")
                if status == "hit":
                    # Someone else refreshed it meanwhile; compute anyway.
                    answer = {"status": "compute"}
            else:
                self.cache_hits += 1
                # What produced it, and what it holds, are what the tests
                # using it depend on.
                recorder = plugin.recorder
                if recorder is not None:
                    recorder.add_artifact(key, _blob_of(answer))
                return value
        if status == "missing":
            raise CacheMiss(
                f"tim cache (replay-only): no valid entry for {fixture}: {answer.get('why', 'no entry')}; "
                "record it where it can be computed (TIM_CACHE=use or refresh) and import that cache"
            )
        self.cache_misses += 1
        lease = answer.get("lease")
        recorder = plugin.recorder
        ctx = recorder.push() if recorder is not None and not code_independent else None
        started = time.perf_counter()
        try:
            value = producer()
        except BaseException:
            if ctx is not None:
                recorder.pop(ctx)
            if lease is not None:
                try:
                    conn.request("cache_abandon", {"lease": lease})
                except DaemonError:
                    pass
            raise
        took = time.perf_counter() - started
        if ctx is not None:
            recorder.pop(ctx)
        if lease is None:
            return value
        tmp_dir = answer.get("path") or os.path.join(plugin.root, ".tim", "cache", "tmp")
        self._tmp_serial += 1
        tmp = os.path.join(tmp_dir, f"{os.getpid()}-{self._tmp_serial}-{time.monotonic_ns()}")
        stored = False
        try:
            data = dumps(value)
            with open(tmp, "wb") as f:
                f.write(data)
            params = {
                "run_id": plugin.run_id,
                "lease": lease,
                "key": key,
                "fixture": fixture,
                "tmp": tmp,
                "serializer": name,
                "produce_seconds": took,
            }
            if ctx is not None:
                params["deps"] = ctx.to_wire(recorder.root)
            stored_answer = conn.request("cache_put", params)
            stored = True
            if recorder is not None:
                recorder.add_artifact(key, _blob_of(stored_answer))
        except Exception as e:
            # Any failure to serialize or store (pickle raises
            # AttributeError for local objects; a custom serializer raises
            # anything): the value is still good, the lease is given back.
            plugin._warn_once(f"could not store {fixture} in the artifact cache ({type(e).__name__}: {e})")
        finally:
            if not stored:
                try:
                    conn.request("cache_abandon", {"lease": lease})
                except DaemonError:
                    pass
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        return value


def _blob_of(answer):
    """The artifact's digest: the name of the file a `cache_entry` names."""
    return os.path.basename(answer.get("path") or "")


def _caller(root):
    """`path/to/file.py::function` (root-relative) of whoever called
    `get_or_create`, skipping comprehensions and lambdas."""
    frame = sys._getframe(2)
    while frame.f_back is not None and frame.f_code.co_name.startswith("<") and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    code = frame.f_code
    path = code.co_filename
    if root:
        path = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    return f"{path.replace(os.sep, '/')}::{getattr(code, 'co_qualname', code.co_name)}"


_NO_PARAM = object()


def cached_fixture(fn=None, *, scope="session", serializer="pickle", inputs=None, code_independent=False, **fixture_kwargs):
    """`pytest.fixture` whose value comes from tim's artifact cache.

    The key is the fixture (file and name), its parameter, the values of
    the fixtures it takes, and `inputs` (a value, or a function of
    `request`). Generator fixtures cannot be cached (their teardown would
    never run on a hit)."""
    import pytest

    def wrap(func):
        if inspect.isgeneratorfunction(func):
            raise TypeError(
                f"{func.__qualname__}: a yield fixture cannot be cached (its teardown would not run on a hit); "
                "cache a fixture that returns the value, and keep set-up and teardown in a plain fixture using it"
            )
        sig = inspect.signature(func)
        wants_request = "request" in sig.parameters
        params = list(sig.parameters.values())
        if not wants_request:
            params.append(inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(func)
        def fixture_impl(*args, **kwargs):
            request = kwargs["request"] if wants_request else kwargs.pop("request")
            cache = artifact_cache(request.config)
            rel = os.path.relpath(func.__code__.co_filename, str(request.config.rootpath)).replace(os.sep, "/")
            ident = f"{rel}::{func.__qualname__}"
            param = getattr(request, "param", _NO_PARAM)
            args_key = {k: v for k, v in kwargs.items() if k != "request"}
            extra = inputs(request) if callable(inputs) else inputs
            key = (None if param is _NO_PARAM else param, args_key, extra)
            try:
                return cache.get_or_create(
                    key,
                    lambda: func(*args, **kwargs),
                    serializer=serializer,
                    code_independent=code_independent,
                    fixture=ident,
                )
            except CacheMiss as e:
                missing = str(e)
            pytest.fail(missing, pytrace=False)

        fixture_impl.__signature__ = sig.replace(parameters=params)
        return pytest.fixture(fixture_impl, scope=scope, **fixture_kwargs)

    return wrap if fn is None else wrap(fn)


def artifact_cache(config):
    """The run's cache: the tim plugin's, or one that always computes."""
    from pytest_tim import _CACHE

    cache = config.stash.get(_CACHE, None)
    if cache is None:
        cache = ArtifactCache(None, mode_of(config))
        config.stash[_CACHE] = cache
    return cache


def mode_of(config):
    mode = config.getoption("tim_cache", None) or os.environ.get(ENV_CACHE) or "use"
    if mode not in MODES:
        raise ValueError(f"{ENV_CACHE}={mode!r}: use one of {', '.join(MODES)}")
    return mode
