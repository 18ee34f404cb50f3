"""The import hook: what each project module's import runs, and (Python
3.11) function-entry recording by instrumenting the project's own source.

Every project module is executed inside a recorder context of its own, so
the daemon learns what its import-time code ran (a function called at
module level, `CONFIG = build_config()`): tests that import the module
depend on that too, whichever test file happened to import it first.

Python 3.11 has no per-code-object events, and a profiler pays for every
call in the process, pytest's included. So on 3.11 the project's modules
(and only they) are compiled with one extra statement at the top of every
function and lambda body, `__tim_hits__[i] = 1`: a store into a bytearray
that belongs to the module. The recorder reads and clears the set bytes at
every context boundary (`harvest`). The cost is a few bytecodes per call of
a project function, nothing for anyone else's.

How modules get instrumented: a finder at the front of `sys.meta_path` asks
the other finders for the spec, and when the module is a project source file
loaded by the plain source loader or by pytest's assertion-rewriting hook,
puts its own loader in front. That loader parses the source, applies
pytest's assertion rewriting when pytest would have, adds the hit
statements, compiles and executes. Nothing lands in `__pycache__` or in
pytest's cache of rewritten modules: the instrumented code is cached in
`__pycache__` under a name of its own (`mod.cpython-311-tim-1.instrumented`,
or in `.tim/pycache/` when bytecode is not to be written), keyed by the
source, the interpreter and this transform's version, so a plain run never
loads it.

What this cannot see is listed by the recorder as whole-file dependencies:
project modules imported before the finder was installed, and project code
executed by any other means (`runpy`, a hand-made loader).
"""

import ast
import hashlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys

# Bump when the transform changes: cached code of older versions is ignored.
# Bumped whenever the instrumented code changes: older cache entries are
# then never loaded.
VERSION = 2
HITS = "__tim_hits__"
# A qualname that stands for the whole file (`docs/protocol.md`).
WHOLE_FILE = "*"

_COMPREHENSION_NAMES = {
    ast.ListComp: "<listcomp>",
    ast.SetComp: "<setcomp>",
    ast.DictComp: "<dictcomp>",
    ast.GeneratorExp: "<genexpr>",
}
# Python 3.12 inlines list, set and dict comprehensions (PEP 709).
_INLINED = (ast.ListComp, ast.SetComp, ast.DictComp) if sys.version_info >= (3, 12) else ()


def instrument(tree):
    """Adds the hit statements to a parsed module, in place. Returns the
    qualname of every instrumented code object, by hit index; index 0 is the
    module itself (`<module>`)."""
    transformer = _Transformer()
    transformer.visit(tree)
    return transformer.names


class _Transformer(ast.NodeTransformer):
    """Computes `__qualname__` the way the compiler does, while adding a hit
    statement to each function body (after its docstring, so `__doc__`
    stays) and a hit expression to each lambda."""

    def __init__(self):
        self.names = ["<module>"]
        # (kind, qualname, names declared `global` in that scope[, hit
        # index of a function])
        self._scopes = [("module", "", frozenset())]

    def _qualname(self, name):
        kind, parent, explicit_globals = self._scopes[-1][:3]
        if kind == "module" or name in explicit_globals:
            return name
        if kind in ("class", "comprehension"):
            return f"{parent}.{name}"
        return f"{parent}.<locals>.{name}"

    def _index(self, qualname):
        self.names.append(qualname)
        return len(self.names) - 1

    def visit_Module(self, node):
        self.generic_visit(node)
        body = node.body
        at = _docstring_end(body)
        while at < len(body) and isinstance(body[at], ast.ImportFrom) and body[at].module == "__future__":
            at += 1
        anchor = body[at] if at < len(body) else (body[-1] if body else None)
        if anchor is not None:
            body.insert(at, _hit_statement(0, anchor))
        return node

    def _function(self, node):
        # Decorators, defaults and annotations run in the enclosing scope.
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args = self.visit(node.args)
        if node.returns is not None:
            node.returns = self.visit(node.returns)
        qualname = self._qualname(node.name)
        index = self._index(qualname)
        self._scopes.append(("function", qualname, _explicit_globals(node.body), index))
        node.body = self._statements(node.body)
        self._scopes.pop()
        at = _docstring_end(node.body)
        anchor = node.body[at] if at < len(node.body) else node.body[-1]
        node.body.insert(at, _hit_statement(index, anchor))
        return node

    def _resumption(self, node):
        """A generator or coroutine resumed after `yield` or `await` runs its
        body again, maybe in another test: `(yield x, hit)[0]` records that
        too (the hit at the top runs only on the first entry)."""
        node = self.generic_visit(node)
        scope = self._scopes[-1]
        if scope[0] != "function" or len(scope) < 4:
            return node
        hit = ast.Call(
            func=ast.Attribute(value=ast.Name(id=HITS, ctx=ast.Load()), attr="__setitem__", ctx=ast.Load()),
            args=[ast.Constant(scope[3]), ast.Constant(1)],
            keywords=[],
        )
        wrapped = ast.Subscript(
            value=ast.Tuple(elts=[node, hit], ctx=ast.Load()),
            slice=ast.Constant(0),
            ctx=ast.Load(),
        )
        ast.copy_location(wrapped, node)
        ast.fix_missing_locations(wrapped)
        return wrapped

    visit_Yield = _resumption
    visit_YieldFrom = _resumption
    visit_Await = _resumption

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        qualname = self._qualname(node.name)
        # A class body runs once, at import: it is part of the module block,
        # recorded through `<module>`.
        self._scopes.append(("class", qualname, _explicit_globals(node.body)))
        node.body = self._statements(node.body)
        self._scopes.pop()
        return node

    def visit_Lambda(self, node):
        node.args = self.visit(node.args)
        qualname = self._qualname("<lambda>")
        self._scopes.append(("function", qualname, frozenset()))
        body = self.visit(node.body)
        self._scopes.pop()
        # `__tim_hits__.__setitem__(i, 1) or body`: the call returns None.
        hit = ast.Call(
            func=ast.Attribute(value=ast.Name(id=HITS, ctx=ast.Load()), attr="__setitem__", ctx=ast.Load()),
            args=[ast.Constant(self._index(qualname)), ast.Constant(1)],
            keywords=[],
        )
        node.body = ast.BoolOp(op=ast.Or(), values=[hit, body])
        ast.copy_location(node.body, body)
        ast.fix_missing_locations(node.body)
        return node

    def _comprehension(self, node):
        if isinstance(node, _INLINED):
            return self.generic_visit(node)
        # The first iterable is evaluated in the enclosing scope.
        first = node.generators[0]
        first.iter = self.visit(first.iter)
        qualname = self._qualname(_COMPREHENSION_NAMES[type(node)])
        self._scopes.append(("comprehension", qualname, frozenset()))
        first.target = self.visit(first.target)
        first.ifs = [self.visit(i) for i in first.ifs]
        node.generators[1:] = [self.visit(g) for g in node.generators[1:]]
        for field in ("elt", "key", "value"):
            if hasattr(node, field):
                setattr(node, field, self.visit(getattr(node, field)))
        self._scopes.pop()
        return node

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_DictComp = _comprehension
    visit_GeneratorExp = _comprehension

    def _statements(self, statements):
        out = []
        for statement in statements:
            result = self.visit(statement)
            if result is None:
                continue
            if isinstance(result, list):
                out.extend(result)
            else:
                out.append(result)
        return out


def _docstring_end(body):
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        return 1
    return 0


def _explicit_globals(body):
    """Names declared `global` directly in a scope's body (not in nested
    scopes): a function defined under such a name gets it as its qualname."""
    names = set()
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Global):
            names.update(node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        else:
            stack.extend(ast.iter_child_nodes(node))
    return frozenset(names)


def _hit_statement(index, anchor):
    """`try: __tim_hits__[index] = 1` / `except Exception: pass`, located at
    `anchor` so tracebacks and line events are unchanged. The `try` costs
    nothing on 3.11 and keeps a function callable when its module's globals
    are gone (interpreter shutdown clears them)."""
    store = ast.Assign(
        targets=[ast.Subscript(value=ast.Name(id=HITS, ctx=ast.Load()), slice=ast.Constant(index), ctx=ast.Store())],
        value=ast.Constant(1),
    )
    statement = ast.Try(
        body=[store],
        handlers=[ast.ExceptHandler(type=ast.Name(id="Exception", ctx=ast.Load()), name=None, body=[ast.Pass()])],
        orelse=[],
        finalbody=[],
    )
    ast.copy_location(statement, anchor)
    # The whole statement sits on the anchor's first line.
    statement.end_lineno = anchor.lineno
    statement.end_col_offset = anchor.col_offset
    for node in ast.walk(statement):
        node.lineno = anchor.lineno
        node.col_offset = anchor.col_offset
        node.end_lineno = anchor.lineno
        node.end_col_offset = anchor.col_offset
    return statement


class Instrumenter:
    """The import hook and the hit tables of every instrumented module."""

    def __init__(self, root, is_project, cache_dir, instrument=True):
        """`root` ends with a separator; `is_project(real_path)` says whether
        a source file is the project's code. Without `instrument`, modules
        are executed by their own loader, only inside an import context."""
        self.root = root
        self._is_project = is_project
        self._cache_dir = cache_dir
        self.instrument = instrument
        self._finder = _Finder(self)
        # The recorder that import contexts are pushed on (set once it
        # exists), and what each module's import ran: real path -> Context.
        self.recorder = None
        self.imports = {}
        self._real_dirs = {}
        # (hits, keys) per module execution; keys[i] = (filename, qualname)
        self.tables = []
        # The module code object being executed by our loader right now: the
        # `exec` audit event for it is expected.
        self.executing = None
        self.preimported = []

    def install(self):
        """Puts the finder first in `sys.meta_path`. Project modules imported
        before the first install are listed in `preimported`."""
        if self._finder in sys.meta_path:
            return
        self.preimported = sorted(
            path
            for path in (getattr(m, "__file__", None) for m in list(sys.modules.values()))
            if isinstance(path, str) and path.endswith(".py") and self._is_project(os.path.realpath(path))
        )
        sys.meta_path.insert(0, self._finder)

    def uninstall(self):
        try:
            sys.meta_path.remove(self._finder)
        except ValueError:
            pass

    def realpath(self, path):
        """`os.path.realpath`, resolving each directory once: every import
        of the session asks, and `realpath` stats every path component."""
        directory, name = os.path.split(path)
        real = self._real_dirs.get(directory)
        if real is None:
            real = self._real_dirs[directory] = os.path.realpath(directory)
        return os.path.join(real, name)

    def harvest(self, sink):
        """Calls `sink(key)` for every function that ran since the last
        harvest, and clears the hits."""
        for hits, keys in self.tables:
            i = hits.find(1)
            while i != -1:
                hits[i] = 0
                sink(keys[i])
                i = hits.find(1, i + 1)

    def clear(self):
        self.harvest(lambda key: None)

    # -- loading --------------------------------------------------------------

    def wrap(self, spec):
        """`spec` with our loader when it is a project source file we know
        how to load; else unchanged."""
        origin = spec.origin
        loader = spec.loader
        if not isinstance(origin, str) or not origin.endswith(".py") or loader is None:
            return spec
        if type(loader) is importlib.machinery.SourceFileLoader:
            rewriter = None
        elif type(loader).__name__ == "AssertionRewritingHook" and type(loader).__module__ == "_pytest.assertion.rewrite":
            rewriter = loader
        elif not self.instrument and hasattr(loader, "exec_module"):
            rewriter = None  # executed by its own loader: any will do
        else:
            return spec
        if not self._is_project(self.realpath(origin)):
            return spec
        spec.loader = _Loader(self, loader, rewriter)
        return spec

    def execute(self, module, rewriter):
        origin = module.__spec__.origin
        code, names = self._code(origin, rewriter)
        keys = [(origin, name) for name in names]
        previous = module.__dict__.get(HITS)
        if isinstance(previous, bytearray) and len(previous) > len(keys):
            # A reload of an edited module: functions of the old version may
            # still be called, with their indices. They count as the whole
            # file.
            keys += [(origin, WHOLE_FILE)] * (len(previous) - len(keys))
        hits = bytearray(len(keys))
        module.__dict__[HITS] = hits
        self.tables.append((hits, keys))
        self.executing = code
        exec(code, module.__dict__)

    def _code(self, origin, rewriter):
        with open(origin, "rb") as f:
            source = f.read()
        key = hashlib.blake2b(digest_size=32)
        key.update(f"{VERSION}\0{origin}\0{sys.version}\0{sys.flags.optimize}\0".encode())
        key.update(importlib.util.MAGIC_NUMBER)
        if rewriter is not None:
            key.update(_rewrite_tag(rewriter).encode())
        key.update(b"\0")
        key.update(source)
        digest = key.digest()
        places = self._cache_places(origin, rewriter)
        for place in places:
            try:
                with open(place, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if data[:32] == digest:
                try:
                    code, names = marshal.loads(data[32:])
                    return code, names
                except (ValueError, EOFError, TypeError):
                    pass
        tree = ast.parse(source, filename=origin)
        if rewriter is not None:
            from _pytest.assertion.rewrite import rewrite_asserts

            rewrite_asserts(tree, source, origin, rewriter.config)
        names = instrument(tree)
        code = compile(tree, origin, "exec", dont_inherit=True)
        data = digest + marshal.dumps((code, names))
        for place in places:
            if _write_atomic(place, data):
                break
        return code, names

    def _cache_places(self, origin, rewriter):
        """Where instrumented code is cached, in order: next to pytest's own
        cache in `__pycache__` (so it outlives `.tim/`, as a checkout's
        bytecode does), under a name no import ever loads; or in
        `.tim/pycache/` when bytecode is not to be written or the source
        directory is read-only."""
        own = os.path.join(self._cache_dir, hashlib.blake2b(origin.encode(), digest_size=16).hexdigest() + ".instrumented")
        if sys.dont_write_bytecode:
            return [own]
        directory, name = os.path.split(origin)
        tag = sys.implementation.cache_tag + f"-tim-{VERSION}" + ("-pytest" if rewriter is not None else "")
        return [os.path.join(directory, "__pycache__", f"{name[:-3]}.{tag}.instrumented"), own]


def _rewrite_tag(rewriter):
    try:
        import _pytest

        version = getattr(_pytest, "__version__", "")
        passes = rewriter.config.getini("enable_assertion_pass_hook")
    except Exception:  # an unknown pytest: still a stable tag
        version, passes = "", ""
    return f"pytest-rewrite {version} {passes}"


def _write_atomic(path, data):
    """A cache write: never a partial file, and never an error for the run.
    Whether it was written."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False


class _Finder:
    """First in `sys.meta_path`: finds through the finders after it, then
    puts our loader on project modules."""

    def __init__(self, instrumenter):
        self._instrumenter = instrumenter

    def find_spec(self, name, path=None, target=None):
        try:
            after = sys.meta_path[sys.meta_path.index(self) + 1 :]
        except ValueError:
            return None
        for finder in after:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                return self._instrumenter.wrap(spec)
        return None

    def invalidate_caches(self):
        pass


class _Loader:
    """Executes a project module instrumented; everything else (source,
    resources, `is_package`) is the original loader's."""

    def __init__(self, instrumenter, original, rewriter):
        self._instrumenter = instrumenter
        self._original = original
        self._rewriter = rewriter

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        instrumenter = self._instrumenter
        recorder = instrumenter.recorder
        ctx = recorder.push() if recorder is not None else None
        try:
            if not instrumenter.instrument:
                self._original.exec_module(module)
                return
            if self._rewriter is not None:
                # What pytest's own loader records, for its warnings and for
                # `importlib.resources` on rewritten modules.
                names = getattr(self._rewriter, "_rewritten_names", None)
                if isinstance(names, dict):
                    import pathlib

                    names[module.__name__] = pathlib.Path(module.__spec__.origin)
            instrumenter.execute(module, self._rewriter)
        finally:
            if ctx is not None:
                recorder.pop(ctx)
                path = instrumenter.realpath(module.__spec__.origin)
                previous = instrumenter.imports.get(path)
                if previous is not None:
                    ctx.merge(previous)
                instrumenter.imports[path] = ctx

    def __getattr__(self, name):
        return getattr(self._original, name)
