//! Python source → fingerprinted blocks and import statements.
//!
//! Architecture invariant: this is the only module that uses tree-sitter. It
//! is pure: bytes in, blocks out, no IO.
//!
//! A file is cut into blocks, each hashed on its own:
//! * one block per function or method body, named by the function's
//!   `__qualname__` (`parse`, `Parser.parse`, `Outer.Inner.method`);
//!   functions nested in functions, lambdas and comprehensions belong to the
//!   enclosing function's block, as their code only runs when it does;
//! * the module block, `<module>`: everything that runs at import time, which
//!   is the file with those bodies left out: module-level statements, class
//!   bodies, decorators, default arguments, annotations.
//!
//! So editing a method body changes that method's block only; editing a
//! class attribute, a default argument or a decorator argument changes the
//! module block.
//!
//! Test files and conftest files are parsed in [`Mode::Pytest`]: pytest finds
//! their test functions, test classes and fixtures by name, nothing imports
//! them, so each top-level function and `Test*` class is a block of its own
//! *including* its decorators and signature, and is left out of the module
//! block. Adding a test or a fixture then affects no other test, while a
//! changed `parametrize` list affects exactly the test it decorates. Hashes are over the token stream with nesting made
//! explicit and comments dropped, so comment and whitespace edits change no
//! block while an indentation change that moves a statement does.

use crate::index::ContentHash;
use std::collections::{BTreeMap, BTreeSet};
use tree_sitter::{Node, Parser};

/// The module block's name.
pub const MODULE_BLOCK: &str = "<module>";

/// How a file's definitions are cut into blocks (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Library,
    Pytest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    pub hash: ContentHash,
    /// 1-based, inclusive; for messages. The module block spans the file.
    pub first_line: u32,
    pub last_line: u32,
}

/// An import statement outside function bodies (imports inside functions
/// run when the function runs, and are recorded then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// Dotted module path as written, without leading dots.
    pub module: String,
    /// Leading dots of a relative import (`from ..x import y` → 2).
    pub level: u32,
    /// For `from M import a, b`: `["a", "b"]` (they may be submodules);
    /// `["*"]` for a star import; empty for `import M`.
    pub names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: u32,
    pub column: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedModule {
    pub blocks: Vec<Block>,
    /// Imports that run at import time (module level, class bodies).
    pub imports: Vec<Import>,
    /// Imports inside function bodies, by the block whose execution runs
    /// them: a test that runs the block depends on what they import.
    pub lazy_imports: Vec<(String, Import)>,
    /// Set when the source does not parse; the blocks are then not to be
    /// trusted, and everything depending on the file counts as changed.
    pub syntax_error: Option<SyntaxError>,
    /// Names the code of each block mentions (identifiers, attribute names,
    /// words inside strings), by block; pytest-mode decorators and
    /// signatures under `NAME#header`. See [`LITERAL_PREFIX`].
    pub mentions: BTreeMap<String, BTreeSet<String>>,
    /// Blocks that reach names in ways mentions cannot see (`dir()`,
    /// `vars()`, `getattr` with a computed name, `__dict__`, ...).
    pub reflective: BTreeSet<String>,
    /// Module-level names bound once, to a literal (`LIMIT = 10`), each with
    /// a block of its own, `<module>.NAME`.
    pub literals: Vec<String>,
}

/// Blocks of literal module-level assignments are named `<module>.NAME`.
///
/// `LIMIT = 10` at module level binds a name to a value that has no effect
/// but through that name. Its value is left out of the module block (the
/// name stays in), so a test depends on it only when code it can observe
/// mentions `LIMIT`: code it ran, the import-time code of the modules it
/// imports, what those imports called, and (for collection) the decorators
/// and signatures of its file. Code that reaches names reflectively counts
/// as mentioning every name.
pub const LITERAL_PREFIX: &str = "<module>.";

/// Identifiers whose presence makes a block reflective.
const REFLECTIVE: &[&str] = &[
    "dir",
    "vars",
    "globals",
    "locals",
    "eval",
    "exec",
    "__dict__",
    "__defaults__",
    "__kwdefaults__",
    "__globals__",
    "getmembers",
    "signature",
    "getfullargspec",
    "getargspec",
    "attrgetter",
    "__getattribute__",
];

impl ParsedModule {
    pub fn block(&self, name: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.name == name)
    }
}

struct Acc {
    hasher: blake3::Hasher,
    first_line: u32,
    last_line: u32,
}

impl Acc {
    fn new(first_line: u32, last_line: u32) -> Acc {
        Acc {
            hasher: blake3::Hasher::new(),
            first_line,
            last_line,
        }
    }

    fn token(&mut self, text: &[u8]) {
        self.hasher.update(text);
        self.hasher.update(b"\x00");
    }
}

struct Walker<'s> {
    src: &'s [u8],
    /// Function blocks by qualname. Two definitions with one qualname
    /// (property getter and setter, `if`/`else` variants) share a block.
    functions: BTreeMap<String, Acc>,
    imports: Vec<Import>,
    lazy_imports: Vec<(String, Import)>,
    /// The function block being walked, innermost last.
    blocks: Vec<String>,
    /// Literal assignments found by [`literal_assignments`]: start byte of
    /// the statement → name.
    literal_statements: BTreeMap<usize, String>,
    literal_blocks: BTreeMap<String, Acc>,
    mentions: BTreeMap<String, BTreeSet<String>>,
    reflective: BTreeSet<String>,
    /// Where mentions go, innermost last; empty: the module block.
    targets: Vec<String>,
    /// Above 0 while walking what mentions nothing (import statements,
    /// `__all__`).
    muted: u32,
}

/// Parses `src` (Python source bytes) as a library module.
pub fn parse(src: &[u8]) -> ParsedModule {
    parse_as(src, Mode::Library)
}

/// Parses `src` in the given mode.
pub fn parse_as(src: &[u8], mode: Mode) -> ParsedModule {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .expect("the bundled Python grammar matches the tree-sitter version");
    let Some(tree) = parser.parse(src, None) else {
        // Only a cancelled or timed-out parse returns None; neither is set.
        return ParsedModule {
            blocks: Vec::new(),
            imports: Vec::new(),
            lazy_imports: Vec::new(),
            syntax_error: Some(SyntaxError { line: 1, column: 1 }),
            mentions: BTreeMap::new(),
            reflective: BTreeSet::new(),
            literals: Vec::new(),
        };
    };
    let root = tree.root_node();
    let literal_statements = if mode == Mode::Library && !root.has_error() {
        literal_assignments(root, src)
    } else {
        BTreeMap::new()
    };
    let mut walker = Walker {
        src,
        functions: BTreeMap::new(),
        imports: Vec::new(),
        lazy_imports: Vec::new(),
        blocks: Vec::new(),
        literal_statements,
        literal_blocks: BTreeMap::new(),
        mentions: BTreeMap::new(),
        reflective: BTreeSet::new(),
        targets: Vec::new(),
        muted: 0,
    };
    let last_line = root.end_position().row as u32 + 1;
    let mut module = Acc::new(1, last_line);
    let top = Scope::Module {
        prefix: String::new(),
        standalone: mode == Mode::Pytest,
    };
    walker.walk(root, &top, &mut module);
    let mut blocks = vec![Block {
        name: MODULE_BLOCK.to_owned(),
        hash: ContentHash(*module.hasher.finalize().as_bytes()),
        first_line: 1,
        last_line,
    }];
    blocks.extend(walker.functions.into_iter().map(|(name, acc)| Block {
        name,
        hash: ContentHash(*acc.hasher.finalize().as_bytes()),
        first_line: acc.first_line,
        last_line: acc.last_line,
    }));
    let literals: Vec<String> = walker.literal_blocks.keys().cloned().collect();
    blocks.extend(walker.literal_blocks.into_iter().map(|(name, acc)| Block {
        name: format!("{LITERAL_PREFIX}{name}"),
        hash: ContentHash(*acc.hasher.finalize().as_bytes()),
        first_line: acc.first_line,
        last_line: acc.last_line,
    }));
    ParsedModule {
        blocks,
        imports: walker.imports,
        lazy_imports: walker.lazy_imports,
        syntax_error: first_error(root),
        mentions: walker.mentions,
        reflective: walker.reflective,
        literals,
    }
}

/// `a.b` for `a.b as c`; the node itself otherwise.
fn unaliased(node: Node) -> Node {
    if node.kind() == "aliased_import" {
        node.child_by_field_name("name").unwrap_or(node)
    } else {
        node
    }
}

fn first_error(node: Node) -> Option<SyntaxError> {
    if !node.has_error() {
        return None;
    }
    if node.is_error() || node.is_missing() {
        let p = node.start_position();
        return Some(SyntaxError {
            line: p.row as u32 + 1,
            column: p.column as u32 + 1,
        });
    }
    let mut cursor = node.walk();
    let found = node.children(&mut cursor).find_map(first_error);
    found.or({
        let p = node.start_position();
        Some(SyntaxError {
            line: p.row as u32 + 1,
            column: p.column as u32 + 1,
        })
    })
}

/// Where a node sits: at module or class level (definitions there get
/// blocks of their own), or inside a function body (everything inline).
/// `standalone`: definitions here are whole blocks, headers included, and
/// leave no trace in the enclosing block (pytest mode, see the module docs).
enum Scope {
    Module { prefix: String, standalone: bool },
    Function,
}

impl<'s> Walker<'s> {
    fn text(&self, node: Node) -> &'s [u8] {
        &self.src[node.byte_range()]
    }

    fn walk(&mut self, node: Node, scope: &Scope, acc: &mut Acc) {
        if let Scope::Module {
            prefix,
            standalone: true,
        } = scope
            && matches!(
                node.kind(),
                "decorated_definition" | "function_definition" | "class_definition"
            )
            && self.standalone(node, prefix)
        {
            return;
        }
        if let Scope::Module {
            prefix,
            standalone: false,
        } = scope
            && prefix.is_empty()
            && node.kind() == "expression_statement"
        {
            if let Some(name) = self.literal_statements.get(&node.start_byte()).cloned() {
                self.literal(node, &name, acc);
                return;
            }
            if assigns_all(node, self.src) {
                // `__all__` lists names for `import *`, which reads none.
                self.muted += 1;
                self.tokens(node, scope, acc);
                self.muted -= 1;
                return;
            }
        }
        match node.kind() {
            "comment" => return,
            "call" => self.dynamic_attribute(node),
            "function_definition" => {
                if let Scope::Module { prefix, .. } = scope {
                    self.function(node, prefix, acc);
                    return;
                }
            }
            "class_definition" => {
                if let Scope::Module { prefix, .. } = scope {
                    self.class(node, prefix, acc);
                    return;
                }
            }
            "import_statement" | "import_from_statement" | "future_import_statement" => {
                match (scope, self.blocks.last()) {
                    (Scope::Module { .. }, _) => {
                        let found = self.import(node);
                        self.imports.extend(found);
                    }
                    (Scope::Function, Some(block)) => {
                        let block = block.clone();
                        let found = self.import(node);
                        self.lazy_imports
                            .extend(found.into_iter().map(|i| (block.clone(), i)));
                    }
                    // A signature or decorator: evaluated at import time.
                    (Scope::Function, None) => {
                        let found = self.import(node);
                        self.imports.extend(found);
                    }
                }
                // `from m import X` mentions nothing: code that uses X
                // mentions it. `X as Y` does: uses mention only Y.
                self.muted += 1;
                self.tokens(node, scope, acc);
                self.muted -= 1;
                self.mention_aliased(node);
                return;
            }
            _ => {}
        }
        self.tokens(node, scope, acc);
    }

    /// A literal assignment: its name stays in the module block, its value
    /// goes to a block of its own.
    fn literal(&mut self, node: Node, name: &str, acc: &mut Acc) {
        acc.token(name.as_bytes());
        acc.token(b"=");
        acc.token(b"<literal>");
        let mut value = Acc::new(
            node.start_position().row as u32 + 1,
            node.end_position().row as u32 + 1,
        );
        let right = node
            .named_child(0)
            .and_then(|a| a.child_by_field_name("right"));
        if let Some(right) = right {
            self.muted += 1;
            self.tokens(right, &Scope::Function, &mut value);
            self.muted -= 1;
        }
        self.literal_blocks.insert(name.to_owned(), value);
    }

    fn target(&self) -> &str {
        self.targets.last().map_or(MODULE_BLOCK, String::as_str)
    }

    /// Records what a leaf token mentions.
    fn mention(&mut self, node: Node) {
        if self.muted > 0 {
            return;
        }
        let text = String::from_utf8_lossy(self.text(node)).into_owned();
        let target = self.target().to_owned();
        match node.kind() {
            "identifier" => {
                if REFLECTIVE.contains(&text.as_str())
                    || passed_around_attribute_access(node, &text)
                {
                    self.reflective.insert(target.clone());
                }
                self.mentions.entry(target).or_default().insert(text);
            }
            // `getattr(m, "LIMIT")`, `eval("LIMIT + 1")`: every word.
            "string_content" => {
                let words = text
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .filter(|w| {
                        w.chars()
                            .next()
                            .is_some_and(|c| c.is_alphabetic() || c == '_')
                    })
                    .map(str::to_owned);
                self.mentions.entry(target).or_default().extend(words);
            }
            _ => {}
        }
    }

    /// `import a.b as c`, `from m import X as Y`: the original names.
    fn mention_aliased(&mut self, node: Node) {
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            if n.kind() == "aliased_import" {
                if let Some(name) = n.child_by_field_name("name") {
                    let mut leaves = vec![name];
                    while let Some(l) = leaves.pop() {
                        if l.child_count() == 0 {
                            self.mention(l);
                        } else {
                            let mut cursor = l.walk();
                            leaves.extend(l.children(&mut cursor));
                        }
                    }
                }
                continue;
            }
            let mut cursor = n.walk();
            stack.extend(n.children(&mut cursor));
        }
    }

    /// `getattr(obj, name)` (and `hasattr`, `setattr`, `delattr`) with a
    /// name that is not a string literal reaches names mentions cannot see.
    fn dynamic_attribute(&mut self, call: Node) {
        let Some(function) = call.child_by_field_name("function") else {
            return;
        };
        if function.kind() != "identifier"
            || !matches!(
                self.text(function),
                b"getattr" | b"hasattr" | b"setattr" | b"delattr"
            )
        {
            return;
        }
        let literal_name = call
            .child_by_field_name("arguments")
            .and_then(|args| args.named_child(1))
            .is_some_and(|name| name.kind() == "string" && !has_kind(name, "interpolation"));
        if !literal_name && self.muted == 0 {
            let target = self.target().to_owned();
            self.reflective.insert(target);
        }
    }

    /// Emits `node`'s tokens into `acc`, recursing through [`Self::walk`].
    fn tokens(&mut self, node: Node, scope: &Scope, acc: &mut Acc) {
        // A string's content is one token: its escape sequences are child
        // nodes, and the text between them belongs to no node.
        if node.child_count() == 0 || node.kind() == "string_content" {
            acc.token(self.text(node));
            self.mention(node);
            return;
        }
        let is_block = node.kind() == "block";
        if is_block {
            acc.token(b"{");
        }
        let mut cursor = node.walk();
        let children: Vec<Node> = node.children(&mut cursor).collect();
        for child in children {
            self.walk(child, scope, acc);
        }
        if is_block {
            acc.token(b"}");
        }
    }

    /// The accumulator of block `qualname`, grown to cover `node`: a second
    /// definition with the same qualname (a property setter, an `if`/`else`
    /// variant) adds to the first's block.
    fn block_acc(&mut self, qualname: &str, node: Node) -> Acc {
        let first = node.start_position().row as u32 + 1;
        let last = node.end_position().row as u32 + 1;
        let mut acc = self
            .functions
            .remove(qualname)
            .unwrap_or_else(|| Acc::new(first, last));
        acc.first_line = acc.first_line.min(first);
        acc.last_line = acc.last_line.max(last);
        acc
    }

    fn function(&mut self, node: Node, prefix: &str, acc: &mut Acc) {
        let name = node
            .child_by_field_name("name")
            .map(|n| String::from_utf8_lossy(self.text(n)).into_owned())
            .unwrap_or_default();
        let qualname = format!("{prefix}{name}");
        let body = node.child_by_field_name("body");
        // The signature (name, parameters with defaults, annotations) runs
        // at definition time: it belongs to the enclosing block.
        let mut cursor = node.walk();
        let children: Vec<Node> = node.children(&mut cursor).collect();
        // Defaults and annotations are evaluated once, at definition time;
        // what they mention is observed by the function's callers.
        self.targets.push(qualname.clone());
        for child in children {
            if Some(child) == body {
                acc.token(b"<body>");
                acc.token(qualname.as_bytes());
                continue;
            }
            self.walk(child, &Scope::Function, acc);
        }
        if let Some(body) = body {
            let mut fn_acc = self.block_acc(&qualname, node);
            self.blocks.push(qualname.clone());
            self.tokens(body, &Scope::Function, &mut fn_acc);
            self.blocks.pop();
            self.functions.insert(qualname, fn_acc);
        }
        self.targets.pop();
    }

    fn class(&mut self, node: Node, prefix: &str, acc: &mut Acc) {
        let name = node
            .child_by_field_name("name")
            .map(|n| String::from_utf8_lossy(self.text(n)).into_owned())
            .unwrap_or_default();
        let inner = Scope::Module {
            prefix: format!("{prefix}{name}."),
            standalone: false,
        };
        let body = node.child_by_field_name("body");
        let mut cursor = node.walk();
        let children: Vec<Node> = node.children(&mut cursor).collect();
        for child in children {
            if Some(child) == body {
                // The class body runs at import time: it stays in `acc`,
                // but its methods get blocks under the class's prefix.
                self.tokens(child, &inner, acc);
            } else {
                self.walk(child, &Scope::Function, acc);
            }
        }
    }

    /// Pytest mode: a top-level function (or a method of a `Test*` class)
    /// becomes a block with its decorators and signature; a `Test*` class
    /// becomes a block of its class-level code, its methods blocks of their
    /// own. Returns false for anything else (handled as usual).
    fn standalone(&mut self, node: Node, prefix: &str) -> bool {
        let def = if node.kind() == "decorated_definition" {
            match node.child_by_field_name("definition") {
                Some(d) => d,
                None => return false,
            }
        } else {
            node
        };
        let name = def
            .child_by_field_name("name")
            .map(|n| String::from_utf8_lossy(self.text(n)).into_owned())
            .unwrap_or_default();
        let qualname = format!("{prefix}{name}");
        let mut acc = self.block_acc(&qualname, node);
        // Decorators, signatures and class-level code run at collection:
        // their mentions go to `NAME#header`, a body's to `NAME`.
        self.targets.push(format!("{qualname}#header"));
        match def.kind() {
            "function_definition" => {
                self.blocks.push(qualname.clone());
                let body = def.child_by_field_name("body");
                for part in definition_parts(node, def) {
                    let is_body = Some(part) == body;
                    if is_body {
                        self.targets.push(qualname.clone());
                    }
                    self.walk(part, &Scope::Function, &mut acc);
                    if is_body {
                        self.targets.pop();
                    }
                }
                self.blocks.pop();
            }
            "class_definition" if name.starts_with("Test") => {
                let body = def.child_by_field_name("body");
                let inner = Scope::Module {
                    prefix: format!("{qualname}."),
                    standalone: true,
                };
                for part in definition_parts(node, def) {
                    if Some(part) == body {
                        self.tokens(part, &inner, &mut acc);
                    } else {
                        self.walk(part, &Scope::Function, &mut acc);
                    }
                }
            }
            _ => {
                self.targets.pop();
                // Put back what we took: not ours to handle.
                if acc.hasher.count() > 0 || self.functions.contains_key(&qualname) {
                    self.functions.insert(qualname, acc);
                }
                return false;
            }
        }
        self.targets.pop();
        self.functions.insert(qualname, acc);
        true
    }

    fn import(&self, node: Node) -> Vec<Import> {
        let mut found = Vec::new();
        let src = self.src;
        let dotted = |n: Node| {
            String::from_utf8_lossy(&src[n.byte_range()]).replace(char::is_whitespace, "")
        };
        match node.kind() {
            "import_statement" => {
                let mut cursor = node.walk();
                for child in node.children_by_field_name("name", &mut cursor) {
                    let target = unaliased(child);
                    found.push(Import {
                        module: dotted(target),
                        level: 0,
                        names: Vec::new(),
                    });
                }
            }
            "import_from_statement" => {
                let Some(module) = node.child_by_field_name("module_name") else {
                    return found;
                };
                let (path, level) = if module.kind() == "relative_import" {
                    let text = dotted(module);
                    let level = text.chars().take_while(|c| *c == '.').count() as u32;
                    (text[level as usize..].to_owned(), level)
                } else {
                    (dotted(module), 0)
                };
                let mut names = Vec::new();
                let mut cursor = node.walk();
                for child in node.children_by_field_name("name", &mut cursor) {
                    let target = unaliased(child);
                    names.push(dotted(target));
                }
                let mut cursor = node.walk();
                if node
                    .children(&mut cursor)
                    .any(|c| c.kind() == "wildcard_import")
                {
                    names.push("*".to_owned());
                }
                found.push(Import {
                    module: path,
                    level,
                    names,
                });
            }
            // `from __future__ import x` imports nothing from the project.
            _ => {}
        }
        found
    }
}

/// In source order: the decorators of `node` (when it is a decorated
/// definition), then the children of the definition `def` itself.
fn definition_parts<'t>(node: Node<'t>, def: Node<'t>) -> Vec<Node<'t>> {
    let mut parts = Vec::new();
    if node != def {
        let mut cursor = node.walk();
        parts.extend(node.children(&mut cursor).filter(|c| *c != def));
    }
    let mut cursor = def.walk();
    parts.extend(def.children(&mut cursor));
    parts
}

/// Module-level statements `NAME = <literal>` whose name no other
/// statement binds (see [`LITERAL_PREFIX`]): start byte → name. None at all
/// when the module has a star import, which may rebind anything.
fn literal_assignments(root: Node, src: &[u8]) -> BTreeMap<usize, String> {
    let text = |n: Node| String::from_utf8_lossy(&src[n.byte_range()]).into_owned();
    let mut bindings: BTreeMap<String, u32> = BTreeMap::new();
    let mut unsure = false;
    let mut candidates = Vec::new();
    let mut cursor = root.walk();
    for statement in root.named_children(&mut cursor) {
        if statement.kind() == "expression_statement"
            && statement.named_child_count() == 1
            && let Some(assignment) = statement.named_child(0)
            && assignment.kind() == "assignment"
            && assignment.child_by_field_name("type").is_none()
            && let (Some(left), Some(right)) = (
                assignment.child_by_field_name("left"),
                assignment.child_by_field_name("right"),
            )
            && left.kind() == "identifier"
            && is_literal(right)
        {
            candidates.push((statement.start_byte(), text(left)));
        }
        count_bindings(statement, &text, &mut bindings, &mut unsure);
    }
    // `global NAME` in any function may rebind it.
    let mut globals = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if n.kind() == "global_statement" {
            let mut cursor = n.walk();
            globals.extend(n.named_children(&mut cursor).map(text));
        }
        let mut cursor = n.walk();
        stack.extend(n.named_children(&mut cursor));
    }
    if unsure {
        return BTreeMap::new();
    }
    candidates
        .into_iter()
        .filter(|(_, name)| {
            bindings.get(name) == Some(&1) && !globals.contains(name) && name != "__all__"
        })
        .collect()
}

/// Counts the module-level names `node` binds (not inside function or class
/// bodies); sets `unsure` for a star import.
fn count_bindings(
    node: Node,
    text: &dyn Fn(Node) -> String,
    bindings: &mut BTreeMap<String, u32>,
    unsure: &mut bool,
) {
    let bind = |n: Node, bindings: &mut BTreeMap<String, u32>| {
        let mut stack = vec![n];
        while let Some(n) = stack.pop() {
            match n.kind() {
                "identifier" => *bindings.entry(text(n)).or_default() += 1,
                // `a.b = ...`, `a[i] = ...` bind no module name.
                "attribute" | "subscript" => {}
                _ => {
                    let mut cursor = n.walk();
                    stack.extend(n.named_children(&mut cursor));
                }
            }
        }
    };
    match node.kind() {
        "function_definition" | "class_definition" => {
            if let Some(name) = node.child_by_field_name("name") {
                bind(name, bindings);
            }
            // Decorators, defaults and bases may hold walrus bindings.
            let body = node.child_by_field_name("body");
            let mut cursor = node.walk();
            for child in node.named_children(&mut cursor) {
                if Some(child) != body && child.kind() != "identifier" {
                    count_bindings(child, text, bindings, unsure);
                }
            }
        }
        "assignment" | "augmented_assignment" => {
            if let Some(left) = node.child_by_field_name("left") {
                bind(left, bindings);
            }
            if let Some(right) = node.child_by_field_name("right") {
                count_bindings(right, text, bindings, unsure);
            }
        }
        "for_statement" | "for_in_clause" => {
            if let Some(left) = node.child_by_field_name("left") {
                bind(left, bindings);
            }
            let mut cursor = node.walk();
            for child in node.named_children(&mut cursor) {
                count_bindings(child, text, bindings, unsure);
            }
        }
        "as_pattern" | "named_expression" | "delete_statement" | "case_pattern" => {
            bind(node, bindings)
        }
        "import_statement" | "import_from_statement" => {
            let mut cursor = node.walk();
            for child in node.children(&mut cursor) {
                match child.kind() {
                    "wildcard_import" => *unsure = true,
                    "aliased_import" => {
                        if let Some(alias) = child.child_by_field_name("alias") {
                            bind(alias, bindings);
                        }
                    }
                    "dotted_name" => {
                        // `import a.b` binds `a`; `from m import x` binds `x`
                        // (the module path binds nothing, counting it only
                        // makes the answer more careful).
                        if let Some(first) = child.named_child(0) {
                            bind(first, bindings);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {
            let mut cursor = node.walk();
            for child in node.named_children(&mut cursor) {
                count_bindings(child, text, bindings, unsure);
            }
        }
    }
}

/// A value with no effect but itself: numbers, strings without
/// interpolation, `True`/`False`/`None`, and tuples, lists, sets and dicts
/// of those (operators included: `60 * 60`).
fn is_literal(node: Node) -> bool {
    let all = |n: Node| {
        let mut cursor = n.walk();
        let children: Vec<Node> = n.named_children(&mut cursor).collect();
        children
            .into_iter()
            .filter(|c| c.kind() != "comment")
            .all(is_literal)
    };
    match node.kind() {
        "integer" | "float" | "true" | "false" | "none" | "ellipsis" => true,
        "string" => !has_kind(node, "interpolation"),
        "concatenated_string"
        | "tuple"
        | "list"
        | "set"
        | "expression_list"
        | "parenthesized_expression"
        | "unary_operator"
        | "binary_operator"
        | "pair" => all(node),
        "dictionary" => all(node),
        // The operator of `-1`, `60 * 60` is an anonymous node; any named
        // node not listed (a name, a call, a comprehension) is not literal.
        _ => false,
    }
}

fn has_kind(node: Node, kind: &str) -> bool {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if n.kind() == kind {
            return true;
        }
        let mut cursor = n.walk();
        stack.extend(n.children(&mut cursor));
    }
    false
}

/// `getattr` (or `hasattr`, `setattr`, `delattr`) used other than as the
/// function of a call, which [`Walker::dynamic_attribute`] judges:
/// `partial(getattr, module)` may read any name.
fn passed_around_attribute_access(node: Node, text: &str) -> bool {
    matches!(text, "getattr" | "hasattr" | "setattr" | "delattr")
        && !node
            .parent()
            .is_some_and(|p| p.kind() == "call" && p.child_by_field_name("function") == Some(node))
}

/// `__all__ = [...]` or `__all__ += [...]` at module level.
fn assigns_all(statement: Node, src: &[u8]) -> bool {
    statement
        .named_child(0)
        .filter(|a| matches!(a.kind(), "assignment" | "augmented_assignment"))
        .and_then(|a| a.child_by_field_name("left"))
        .is_some_and(|left| &src[left.byte_range()] == b"__all__")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(src: &str) -> BTreeMap<String, ContentHash> {
        let parsed = parse(src.as_bytes());
        assert_eq!(parsed.syntax_error, None, "{src}");
        parsed
            .blocks
            .into_iter()
            .map(|b| (b.name, b.hash))
            .collect()
    }

    /// Which blocks differ between two versions of a file.
    fn changed(before: &str, after: &str) -> Vec<String> {
        let (a, b) = (hashes(before), hashes(after));
        let mut names: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
        names.sort();
        names.dedup();
        names.into_iter().filter(|n| a.get(n) != b.get(n)).collect()
    }

    const BASE: &str = r#""""Module doc."""
import os
from .util import helper as h

LIMIT = 10

def retry(times):
    def wrap(fn):
        return fn
    return wrap

class Parser:
    """Parses."""
    mode = "strict"

    def __init__(self, text, limit=LIMIT):
        self.text = text

    @retry(3)
    def parse(self):
        # a comment
        if self.text:
            return [c for c in self.text]
        return None

    class Inner:
        def method(self):
            return 1

def top(x=1):
    return lambda: x
"#;

    /// The text of a string is hashed whole, escape sequences or not.
    #[test]
    fn every_character_of_a_string_counts() {
        let base = "def f():\n    return 'ab\\ncd'\n";
        for (from, to) in [
            ("ab", "zz"),
            ("cd", "zz"),
            ("\\n", "\\t"),
            ("'ab", "f'{x}ab"),
        ] {
            assert_eq!(
                changed(base, &base.replacen(from, to, 1)),
                ["f"],
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn blocks_are_named_by_qualname() {
        let names: Vec<String> = hashes(BASE).into_keys().collect();
        assert_eq!(
            names,
            [
                "<module>",
                "<module>.LIMIT",
                "Parser.Inner.method",
                "Parser.__init__",
                "Parser.parse",
                "retry",
                "top"
            ]
        );
        let parsed = parse(BASE.as_bytes());
        let parse_block = parsed.block("Parser.parse").unwrap();
        assert_eq!((parse_block.first_line, parse_block.last_line), (20, 24));
    }

    #[test]
    fn edits_change_exactly_the_blocks_they_touch() {
        // (what, replace, with, expected changed blocks)
        let cases: &[(&str, &str, &str, &[&str])] = &[
            ("method body", "return None", "return []", &["Parser.parse"]),
            ("nested function", "return fn", "return None", &["retry"]),
            (
                "comprehension",
                "[c for c in self.text]",
                "[c for c in self.text if c]",
                &["Parser.parse"],
            ),
            (
                "literal module constant: its own block",
                "LIMIT = 10",
                "LIMIT = 11",
                &["<module>.LIMIT"],
            ),
            (
                "a constant renamed",
                "LIMIT = 10",
                "MAX = 10",
                &["<module>", "<module>.LIMIT", "<module>.MAX"],
            ),
            (
                "a constant no longer literal",
                "LIMIT = 10",
                "LIMIT = int(10)",
                &["<module>", "<module>.LIMIT"],
            ),
            (
                "class attribute",
                "mode = \"strict\"",
                "mode = \"lax\"",
                &["<module>"],
            ),
            ("default argument", "limit=LIMIT", "limit=5", &["<module>"]),
            (
                "decorator argument",
                "@retry(3)",
                "@retry(4)",
                &["<module>"],
            ),
            (
                "lambda default in a body",
                "x=1):\n    return lambda: x",
                "x=1):\n    return lambda: x + 1",
                &["top"],
            ),
            (
                "nested class method",
                "return 1",
                "return 2",
                &["Parser.Inner.method"],
            ),
            ("comment only", "# a comment", "# another comment", &[]),
            (
                "blank lines and spacing",
                "LIMIT = 10\n",
                "LIMIT  =  10\n\n\n",
                &[],
            ),
            (
                "docstring",
                "\"\"\"Parses.\"\"\"",
                "\"\"\"Parses text.\"\"\"",
                &["<module>"],
            ),
            ("import", "import os", "import sys", &["<module>"]),
            (
                "indentation moving a statement",
                "            return [c for c in self.text]\n        return None",
                "            return [c for c in self.text]\n            return None",
                &["Parser.parse"],
            ),
            (
                "delete a method",
                "    def __init__(self, text, limit=LIMIT):\n        self.text = text\n",
                "",
                &["<module>", "Parser.__init__"],
            ),
            (
                "add a function",
                "def top(x=1):",
                "def added():\n    pass\n\ndef top(x=1):",
                &["<module>", "added"],
            ),
        ];
        for (what, from, to, expected) in cases {
            assert!(BASE.contains(from), "{what}: pattern not in BASE");
            let after = BASE.replacen(from, to, 1);
            assert_eq!(changed(BASE, &after), *expected, "{what}");
        }
    }

    /// Which module-level assignments get a block of their own: literals
    /// bound once, and only when nothing else can rebind the name.
    #[test]
    fn literal_assignments() {
        let cases: &[(&str, &[&str])] = &[
            (
                "A = 1\nB = 'x'\nC = (1, -2.5, None, True)\nD = {'k': [1, 2]}\nE = 60 * 60\nF = 'a' 'b'\n",
                &["A", "B", "C", "D", "E", "F"],
            ),
            (
                "A = f()\nB = A\nC = [i for i in ()]\nD = f'{A}'\nE: int = 1\nF = G = 1\n",
                &[],
            ),
            ("A = 1\nA = 2\n", &[]),
            ("A = 1\nA += 1\n", &[]),
            ("A = 1\nfor A in (): pass\n", &[]),
            (
                "A = 1\ntry:\n    from x import A\nexcept ImportError:\n    pass\n",
                &[],
            ),
            ("A = 1\ndef f():\n    global A\n    A = 2\n", &[]),
            ("A = 1\nfrom x import *\n", &[]),
            ("A = 1\ndef A(): pass\n", &[]),
            ("A = 1\nimport os as A\n", &[]),
            ("A = 1\nif (A := 2): pass\n", &[]),
            ("__all__ = ['x']\nA = 1\nclass K:\n    A = 2\n", &["A"]),
        ];
        for (src, expected) in cases {
            let parsed = parse(src.as_bytes());
            assert_eq!(parsed.literals, *expected, "{src}");
        }
        // Pytest mode: test files keep everything in their blocks.
        assert!(parse_as(b"A = 1\n", Mode::Pytest).literals.is_empty());
    }

    /// What each block mentions, and which blocks are reflective.
    #[test]
    fn mentions() {
        let src = r#"import os
from pkg import a, b as bee
__all__ = ["hidden"]
LIMIT = 10
OTHER = LIMIT + 1

@deco(DECO_ARG)
def f(x=DEFAULT):
    return helper(x) + CONST.attr + getattr(obj, "by_name")

class K:
    ATTR = CLASS_LEVEL
    def m(self):
        return eval("IN_STRING + 1")

def reflect(mod, name):
    return getattr(mod, name)

def listing(mod):
    return dir(mod)

def literal_name(mod):
    return getattr(mod, "LIMIT")

def passed_around(mod):
    return partial(getattr, mod)
"#;
        let parsed = parse(src.as_bytes());
        let has =
            |block: &str, name: &str| parsed.mentions.get(block).is_some_and(|m| m.contains(name));
        for (block, name, expected) in [
            ("<module>", "LIMIT", true),    // OTHER = LIMIT + 1
            ("<module>", "DECO_ARG", true), // decorators run at import
            ("<module>", "CLASS_LEVEL", true),
            ("<module>", "a", false), // `from pkg import a`: uses mention it
            ("<module>", "b", true),  // `b as bee`: uses mention only bee
            ("<module>", "hidden", false),
            ("<module>", "DEFAULT", false),
            ("f", "DEFAULT", true), // a default: observed by callers
            ("f", "helper", true),
            ("f", "attr", true),
            ("f", "by_name", true),
            ("K.m", "IN_STRING", true),
            ("K.m", "CLASS_LEVEL", false),
        ] {
            assert_eq!(has(block, name), expected, "{block} mentions {name}");
        }
        let reflective: Vec<&str> = parsed.reflective.iter().map(String::as_str).collect();
        assert_eq!(reflective, ["K.m", "listing", "passed_around", "reflect"]);

        let tests = r#"import pytest
from app import CASES

@pytest.mark.parametrize("a", CASES)
def test_x(a, fixture_arg=DEFAULT):
    assert a in BODY_ONLY
"#;
        let parsed = parse_as(tests.as_bytes(), Mode::Pytest);
        let has =
            |block: &str, name: &str| parsed.mentions.get(block).is_some_and(|m| m.contains(name));
        assert!(has("test_x#header", "CASES") && has("test_x#header", "DEFAULT"));
        assert!(has("test_x", "BODY_ONLY") && !has("test_x", "CASES"));
    }

    #[test]
    fn pytest_mode_keeps_tests_and_fixtures_out_of_the_module_block() {
        const TESTS: &str = r#"import pytest
from app import shapes

DATA = [1, 2]

@pytest.fixture(scope="session")
def model():
    return shapes.Square(3)

@pytest.mark.parametrize("x", DATA)
def test_one(x, model):
    assert x

class TestGroup:
    factor = 2

    @pytest.mark.parametrize("y", [1, 2])
    def test_m(self, y):
        assert y * self.factor
"#;
        let blocks = |src: &str| -> BTreeMap<String, ContentHash> {
            parse_as(src.as_bytes(), Mode::Pytest)
                .blocks
                .into_iter()
                .map(|b| (b.name, b.hash))
                .collect()
        };
        let changed = |from: &str, to: &str| -> Vec<String> {
            assert!(TESTS.contains(from), "{from}");
            let (a, b) = (blocks(TESTS), blocks(&TESTS.replacen(from, to, 1)));
            let mut names: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
            names.sort();
            names.dedup();
            names.into_iter().filter(|n| a.get(n) != b.get(n)).collect()
        };
        assert_eq!(
            blocks(TESTS).into_keys().collect::<Vec<_>>(),
            [
                "<module>",
                "TestGroup",
                "TestGroup.test_m",
                "model",
                "test_one"
            ]
        );
        assert_eq!(
            changed(
                "class TestGroup:",
                "def test_new():\n    pass\n\nclass TestGroup:"
            ),
            ["test_new"]
        );
        assert_eq!(changed("\"x\", DATA", "\"x\", DATA[:1]"), ["test_one"]);
        assert_eq!(changed("[1, 2])", "[1, 2, 3])"), ["TestGroup.test_m"]);
        assert_eq!(changed("factor = 2", "factor = 3"), ["TestGroup"]);
        assert_eq!(changed("scope=\"session\"", "scope=\"module\""), ["model"]);
        assert_eq!(changed("DATA = [1, 2]", "DATA = [1, 2, 3]"), ["<module>"]);
        // A library file keeps function names in the module block.
        let lib = |src: &str| parse(src.as_bytes()).block(MODULE_BLOCK).unwrap().hash;
        assert_ne!(
            lib("def f():\n    pass\n"),
            lib("def f():\n    pass\ndef g():\n    pass\n")
        );
    }

    #[test]
    fn imports_outside_functions_are_collected() {
        let src = r#"
import a.b.c, d as e
from . import sibling
from ..pkg.mod import x, y as z
from q import *
from __future__ import annotations
try:
    import fast
except ImportError:
    import slow
class K:
    import inside_class
    def m(self):
        from . import in_method
def f():
    import lazy
    def inner():
        import lazier
"#;
        let parsed = parse(src.as_bytes());
        let got: Vec<(String, u32, Vec<String>)> = parsed
            .imports
            .into_iter()
            .map(|i| (i.module, i.level, i.names))
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                ("a.b.c".into(), 0, vec![]),
                ("d".into(), 0, vec![]),
                ("".into(), 1, s(&["sibling"])),
                ("pkg.mod".into(), 2, s(&["x", "y"])),
                ("q".into(), 0, s(&["*"])),
                ("fast".into(), 0, vec![]),
                ("slow".into(), 0, vec![]),
                ("inside_class".into(), 0, vec![]),
            ]
        );
        let lazy: Vec<(String, String)> = parse(src.as_bytes())
            .lazy_imports
            .into_iter()
            .map(|(block, i)| (block, i.module + &i.names.join(",")))
            .collect();
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            lazy,
            [s("K.m", "in_method"), s("f", "lazy"), s("f", "lazier")]
        );
    }

    #[test]
    fn syntax_errors_are_reported_with_a_line() {
        let parsed = parse(b"x = 1\ndef broken(:\n    pass\n");
        let err = parsed.syntax_error.expect("an error");
        assert_eq!(err.line, 2);
        assert!(parse(b"x = (1,\n").syntax_error.is_some());
        assert!(parse(b"").syntax_error.is_none());
    }
}
