//! Project configuration: `tim.toml` at the root, or `[tool.tim]` in
//! `pyproject.toml` (`tim.toml` wins when both exist).
//!
//! ```toml
//! [daemon]
//! idle_timeout = "1h"      # "90s", "30m", "2h", "1d", seconds as a number; 0 = never
//!
//! [watch]
//! exclude = ["data/huge/**", "*.sqlite"]   # gitignore-style globs, root-relative
//! mode = "native"          # or "rescan": no OS notifications; every query rescans
//!
//! [history]
//! keep = 50                # results kept per test (timing and outcome history)
//!
//! [run]
//! order = "quick-feedback" # or "longest-first"
//!
//! [audit]
//! default = "1s"           # budget of a test no rule matches ("unit")
//! warn_at = 0.8            # share of a budget that warns
//! [[audit.budget]]         # rules, first match wins; these two are the
//! marker = "slow"          # defaults when no rule is configured
//! limit = "30s"
//! [[audit.budget]]
//! marker = "integration"
//! limit = "5s"
//! # or path = "tests/e2e/*" (glob, `*` crosses `/`), or id = "*::test_big_*"
//! ```
//!
//! Keys this version does not know are ignored (later versions add
//! sections); a known key with a wrong value is an error that names the file
//! and the key. `TIM_IDLE_TIMEOUT` overrides `daemon.idle_timeout`.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3 * 60 * 60);
pub const DEFAULT_HISTORY_KEEP: u32 = 50;
pub const IDLE_TIMEOUT_ENV: &str = "TIM_IDLE_TIMEOUT";
/// Which tests must run in the same shard or worker (besides an
/// `xdist_group`): each alone, those of a class, or those of a module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeepTogether {
    #[default]
    Test,
    Class,
    Module,
}

impl KeepTogether {
    /// The group of the test with pytest node id `id`.
    pub fn group_of(self, id: &str) -> String {
        let parts: Vec<&str> = id.split("::").collect();
        match self {
            KeepTogether::Test => id.to_owned(),
            KeepTogether::Module => parts[0].to_owned(),
            // `file::Class::test` -> `file::Class`; a function alone.
            KeepTogether::Class if parts.len() > 2 => parts[..parts.len() - 1].join("::"),
            KeepTogether::Class => id.to_owned(),
        }
    }
}

/// The files whose change makes the daemon reload its configuration.
pub const CONFIG_FILES: &[&str] = &["tim.toml", "pyproject.toml"];

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `None`: never shut down when idle.
    pub idle_timeout: Option<Duration>,
    pub exclude: Vec<String>,
    pub watch_mode: WatchMode,
    /// History rows kept per test.
    pub history_keep: u32,
    /// The order of a run's tests when the run does not say.
    pub order: tim_proto::Order,
    pub budgets: Budgets,
    /// `[cache] max_size`: the artifact cache's size cap in bytes.
    pub cache_max_bytes: u64,
    /// `[run] keep_together`: which tests share a shard.
    pub keep_together: KeepTogether,
    /// Where the settings came from, for messages.
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            exclude: Vec::new(),
            watch_mode: WatchMode::Native,
            history_keep: DEFAULT_HISTORY_KEEP,
            order: tim_proto::Order::QuickFeedback,
            budgets: Budgets::default(),
            cache_max_bytes: crate::cache::DEFAULT_MAX_BYTES,
            keep_together: KeepTogether::Test,
            source: None,
        }
    }
}

/// Time budgets for `tim audit`.
#[derive(Clone, Debug, PartialEq)]
pub struct Budgets {
    pub default_seconds: f64,
    pub warn_at: f64,
    /// First match wins.
    pub rules: Vec<BudgetRule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BudgetRule {
    pub matcher: Matcher,
    pub seconds: f64,
}

/// What a budget rule matches.
#[derive(Clone, Debug, PartialEq)]
pub enum Matcher {
    /// A marker name (`@pytest.mark.slow`).
    Marker(String),
    /// A glob on the test's root-relative file.
    Path(String),
    /// A glob on the test id.
    Id(String),
}

impl Matcher {
    pub fn describe(&self) -> String {
        match self {
            Matcher::Marker(m) => format!("marker {m}"),
            Matcher::Path(p) => format!("path {p}"),
            Matcher::Id(i) => format!("id {i}"),
        }
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            default_seconds: 1.0,
            warn_at: 0.8,
            rules: vec![
                BudgetRule {
                    matcher: Matcher::Marker("slow".into()),
                    seconds: 30.0,
                },
                BudgetRule {
                    matcher: Matcher::Marker("integration".into()),
                    seconds: 5.0,
                },
            ],
        }
    }
}

/// How the daemon learns about changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// OS notifications (inotify, FSEvents, ...), synced by cookies.
    Native,
    /// No notifications: every query stats the whole tree first. For file
    /// systems where notifications do not work (some network mounts).
    Rescan,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{IDLE_TIMEOUT_ENV}={value:?}: {problem}")]
    Env { value: String, problem: String },
}

impl Config {
    pub fn load(root: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let tim_toml = root.join("tim.toml");
        let pyproject = root.join("pyproject.toml");
        let table = if tim_toml.is_file() {
            Some((tim_toml.clone(), read_toml(&tim_toml)?))
        } else if pyproject.is_file() {
            let doc = read_toml(&pyproject)?;
            doc.get("tool")
                .and_then(|t| t.get("tim"))
                .and_then(|t| t.as_table())
                .cloned()
                .map(|t| (pyproject.clone(), t))
        } else {
            None
        };
        if let Some((path, table)) = table {
            config.apply(&path, &table)?;
            config.source = Some(path);
        }
        if let Ok(value) = std::env::var(IDLE_TIMEOUT_ENV) {
            config.idle_timeout = parse_duration(&toml::Value::String(value.clone()))
                .map_err(|problem| ConfigError::Env { value, problem })?;
        }
        Ok(config)
    }

    fn apply(&mut self, path: &Path, table: &toml::Table) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        if let Some(value) = table.get("daemon").and_then(|d| d.get("idle_timeout")) {
            self.idle_timeout =
                parse_duration(value).map_err(|p| invalid("daemon.idle_timeout", p))?;
        }
        if let Some(value) = table.get("watch").and_then(|w| w.get("exclude")) {
            let list = value
                .as_array()
                .ok_or_else(|| invalid("watch.exclude", "must be a list of glob strings".into()))?;
            self.exclude = list
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        invalid("watch.exclude", format!("must hold strings, found {v}"))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(value) = table.get("watch").and_then(|w| w.get("mode")) {
            self.watch_mode = match value.as_str() {
                Some("native") => WatchMode::Native,
                Some("rescan") => WatchMode::Rescan,
                _ => {
                    return Err(invalid(
                        "watch.mode",
                        format!("must be \"native\" or \"rescan\", found {value}"),
                    ));
                }
            };
        }
        if let Some(value) = table.get("run").and_then(|r| r.get("order")) {
            self.order = value
                .as_str()
                .and_then(tim_proto::Order::from_name)
                .ok_or_else(|| {
                    invalid(
                        "run.order",
                        format!("must be \"quick-feedback\" or \"longest-first\", found {value}"),
                    )
                })?;
        }
        if let Some(audit) = table.get("audit") {
            self.budgets = parse_budgets(audit).map_err(|(key, problem)| invalid(&key, problem))?;
        }
        if let Some(value) = table.get("run").and_then(|r| r.get("keep_together")) {
            self.keep_together = match value.as_str() {
                Some("test") => KeepTogether::Test,
                Some("class") => KeepTogether::Class,
                Some("module") => KeepTogether::Module,
                _ => {
                    return Err(invalid(
                        "run.keep_together",
                        format!("must be \"test\", \"class\" or \"module\", found {value}"),
                    ));
                }
            };
        }
        if let Some(value) = table.get("cache").and_then(|c| c.get("max_size")) {
            self.cache_max_bytes = match value {
                toml::Value::Integer(n) if *n >= 0 => *n as u64,
                toml::Value::String(s) => {
                    parse_size(s).map_err(|e| invalid("cache.max_size", e))?
                }
                _ => {
                    return Err(invalid(
                        "cache.max_size",
                        format!(
                            "must be a size such as \"2GiB\" or a number of bytes, found {value}"
                        ),
                    ));
                }
            };
        }
        if let Some(value) = table.get("history").and_then(|h| h.get("keep")) {
            self.history_keep = value
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    invalid(
                        "history.keep",
                        format!("must be a whole number of runs, at least 1, found {value}"),
                    )
                })?;
        }
        Ok(())
    }
}

/// The part of a `pyproject.toml` that configures pytest (`[tool.pytest]`
/// and its subtables), canonically serialized: edits elsewhere in the file
/// (dependencies, version) do not change it. `None` when the text is not
/// valid TOML (callers then use the whole file).
pub fn pytest_section(pyproject: &str) -> Option<String> {
    let doc: toml::Table = pyproject.parse().ok()?;
    let section = doc.get("tool").and_then(|t| t.get("pytest"));
    Some(section.map(|v| v.to_string()).unwrap_or_default())
}

/// `123`, `500KB`, `500MB`, `2GB` (powers of 1000) or `KiB`, `MiB`, `GiB`
/// (powers of 1024): `[cache] max_size`, `tim cache gc --max-size`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size: write bytes, or a number with KB, MB, GB, KiB, MiB or GiB")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000 * 1000,
        "gb" | "g" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    Ok((number * scale as f64) as u64)
}

/// `[audit]`: (key, problem) on a bad value.
fn parse_budgets(audit: &toml::Value) -> Result<Budgets, (String, String)> {
    let mut budgets = Budgets::default();
    if let Some(v) = audit.get("default") {
        budgets.default_seconds = parse_seconds(v).map_err(|p| ("audit.default".into(), p))?;
    }
    if let Some(v) = audit.get("warn_at") {
        budgets.warn_at = v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .filter(|f| (0.0..=1.0).contains(f))
            .ok_or_else(|| {
                (
                    "audit.warn_at".to_owned(),
                    format!("must be a share between 0 and 1, like 0.8, found {v}"),
                )
            })?;
    }
    if let Some(list) = audit.get("budget") {
        let key = "audit.budget";
        let list = list.as_array().ok_or_else(|| {
            (
                key.to_owned(),
                "must be a list of [[audit.budget]] tables".to_owned(),
            )
        })?;
        budgets.rules = Vec::new();
        for rule in list {
            let text = |name: &str| rule.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            let matcher = match (text("marker"), text("path"), text("id")) {
                (Some(m), None, None) => Matcher::Marker(m),
                (None, Some(p), None) => Matcher::Path(p),
                (None, None, Some(i)) => Matcher::Id(i),
                _ => {
                    return Err((
                        key.to_owned(),
                        format!(
                            "each rule needs exactly one of marker, path or id (strings), found {rule}"
                        ),
                    ));
                }
            };
            let limit = rule
                .get("limit")
                .ok_or_else(|| (key.to_owned(), format!("the rule {rule} has no limit")))?;
            let seconds = parse_seconds(limit).map_err(|p| (format!("{key}.limit"), p))?;
            budgets.rules.push(BudgetRule { matcher, seconds });
        }
    }
    Ok(budgets)
}

/// A budget: seconds as a number, or `"250ms"`, `"1.5s"`, `"2m"`.
fn parse_seconds(value: &toml::Value) -> Result<f64, String> {
    let bad = || format!("expected a duration like \"250ms\", \"1.5s\" or \"2m\", found {value}");
    let seconds = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        toml::Value::String(s) => {
            let s = s.trim();
            let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = s.strip_suffix('s') {
                (n, 1.0)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 60.0)
            } else {
                (s, 1.0)
            };
            number.trim().parse::<f64>().map_err(|_| bad())? * scale
        }
        _ => return Err(bad()),
    };
    if seconds.is_finite() && seconds > 0.0 {
        Ok(seconds)
    } else {
        Err(bad())
    }
}

fn read_toml(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// `0` / `"0"` → never; a number → seconds; a string with a unit suffix
/// (`s`, `m`, `h`, `d`).
fn parse_duration(value: &toml::Value) -> Result<Option<Duration>, String> {
    let secs = match value {
        toml::Value::Integer(n) if *n >= 0 => *n as u64,
        toml::Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num.parse().map_err(|_| {
                format!("expected a duration like \"90s\", \"30m\" or \"2h\", got {s:?}")
            })?;
            let scale = match unit.trim() {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86400,
                other => {
                    return Err(format!(
                        "unknown duration unit {other:?} in {s:?}; use s, m, h or d"
                    ));
                }
            };
            n * scale
        }
        other => {
            return Err(format!(
                "expected a duration like \"90s\", \"30m\" or \"2h\", got {other}"
            ));
        }
    };
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let s = |x: &str| parse_duration(&toml::Value::String(x.into()));
        assert_eq!(s("90s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(s("30m").unwrap(), Some(Duration::from_secs(1800)));
        assert_eq!(s("2h").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(s("0").unwrap(), None);
        assert_eq!(
            parse_duration(&toml::Value::Integer(5)).unwrap(),
            Some(Duration::from_secs(5))
        );
        assert!(s("5 weeks").unwrap_err().contains("unit"));
        assert!(s("soon").unwrap_err().contains("duration"));
    }

    #[test]
    fn pytest_section_ignores_the_rest_of_pyproject() {
        let base = "[project]\nversion = \"1\"\n[tool.pytest.ini_options]\naddopts = \"-q\"\n";
        let bumped = base.replace("version = \"1\"", "version = \"2\"");
        let changed = base.replace("-q", "-x");
        assert_eq!(pytest_section(base), pytest_section(&bumped));
        assert_ne!(pytest_section(base), pytest_section(&changed));
        assert_eq!(pytest_section("[project]\n").as_deref(), Some(""));
        assert_eq!(pytest_section("[broken"), None);
    }

    #[test]
    fn files_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(Config::load(root).unwrap().exclude, Vec::<String>::new());
        std::fs::write(
            root.join("pyproject.toml"),
            "[project]\nname='x'\n[tool.tim.watch]\nexclude=['a/**']\n[tool.tim.daemon]\nidle_timeout='10m'\n",
        )
        .unwrap();
        let c = Config::load(root).unwrap();
        assert_eq!(c.exclude, ["a/**"]);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(600)));
        std::fs::write(root.join("tim.toml"), "[watch]\nexclude=['b/**']\n").unwrap();
        assert_eq!(Config::load(root).unwrap().exclude, ["b/**"]);
        std::fs::write(root.join("tim.toml"), "[watch]\nexclude='b/**'\n").unwrap();
        let err = Config::load(root).unwrap_err().to_string();
        assert!(
            err.contains("tim.toml") && err.contains("watch.exclude"),
            "{err}"
        );
        std::fs::write(root.join("tim.toml"), "[watch\n").unwrap();
        assert!(
            Config::load(root)
                .unwrap_err()
                .to_string()
                .contains("not valid TOML")
        );
    }

    #[test]
    fn sizes_and_the_cache_cap() {
        for (text, want) in [
            ("123", Some(123)),
            ("500MB", Some(500_000_000)),
            ("2GiB", Some(2 << 30)),
            ("1.5 KiB", Some(1536)),
            ("10 parsecs", None),
            ("MB", None),
        ] {
            assert_eq!(parse_size(text).ok(), want, "{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            std::fs::write(dir.path().join("tim.toml"), text).unwrap();
            Config::load(dir.path()).map(|c| c.cache_max_bytes)
        };
        assert_eq!(load("").unwrap(), crate::cache::DEFAULT_MAX_BYTES);
        std::fs::write(
            dir.path().join("tim.toml"),
            "[run]\nkeep_together = \"module\"\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.keep_together.group_of("t/a.py::T::test_x[1]"), "t/a.py");
        assert_eq!(
            KeepTogether::Class.group_of("t/a.py::T::test_x[1]"),
            "t/a.py::T"
        );
        assert_eq!(
            KeepTogether::Class.group_of("t/a.py::test_x"),
            "t/a.py::test_x"
        );
        std::fs::write(
            dir.path().join("tim.toml"),
            "[run]\nkeep_together = \"package\"\n",
        )
        .unwrap();
        assert!(
            Config::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("run.keep_together")
        );
        assert_eq!(load("[cache]\nmax_size = \"1MiB\"\n").unwrap(), 1 << 20);
        assert_eq!(load("[cache]\nmax_size = 4096\n").unwrap(), 4096);
        let err = load("[cache]\nmax_size = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.max_size"), "{err}");
    }

    #[test]
    fn history_keep() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let load = |text: &str| {
            std::fs::write(root.join("tim.toml"), text).unwrap();
            Config::load(root).map(|c| c.history_keep)
        };
        assert_eq!(load("").unwrap(), DEFAULT_HISTORY_KEEP);
        assert_eq!(load("[history]\nkeep = 5\n").unwrap(), 5);
        std::fs::write(root.join("tim.toml"), "[run]\norder = \"longest-first\"\n").unwrap();
        assert_eq!(
            Config::load(root).unwrap().order,
            tim_proto::Order::LongestFirst
        );
        std::fs::write(root.join("tim.toml"), "[run]\norder = \"random\"\n").unwrap();
        let err = Config::load(root).unwrap_err().to_string();
        assert!(
            err.contains("run.order") && err.contains("longest-first"),
            "{err}"
        );
        for bad in ["keep = 0", "keep = -3", "keep = \"many\"", "keep = 1.5"] {
            let err = load(&format!("[history]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("history.keep") && err.contains("at least 1"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn audit_budgets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let load = |text: &str| {
            std::fs::write(root.join("tim.toml"), text).unwrap();
            Config::load(root).map(|c| c.budgets)
        };
        assert_eq!(load("").unwrap(), Budgets::default());
        let b = load(
            "[audit]\ndefault = \"250ms\"\nwarn_at = 0.5\n[[audit.budget]]\npath = \"tests/e2e/*\"\nlimit = 90\n[[audit.budget]]\nid = \"*::test_big_*\"\nlimit = \"1.5m\"\n",
        )
        .unwrap();
        assert_eq!((b.default_seconds, b.warn_at), (0.25, 0.5));
        assert_eq!(
            b.rules,
            [
                BudgetRule {
                    matcher: Matcher::Path("tests/e2e/*".into()),
                    seconds: 90.0
                },
                BudgetRule {
                    matcher: Matcher::Id("*::test_big_*".into()),
                    seconds: 90.0
                },
            ]
        );
        for (bad, key) in [
            ("[audit]\nwarn_at = 2\n", "audit.warn_at"),
            ("[audit]\ndefault = \"soon\"\n", "audit.default"),
            ("[audit]\ndefault = -1\n", "audit.default"),
            ("[[audit.budget]]\nlimit = \"1s\"\n", "audit.budget"),
            (
                "[[audit.budget]]\nmarker = \"slow\"\npath = \"x\"\nlimit = \"1s\"\n",
                "audit.budget",
            ),
            ("[[audit.budget]]\nmarker = \"slow\"\n", "audit.budget"),
            (
                "[[audit.budget]]\nmarker = \"slow\"\nlimit = \"fast\"\n",
                "audit.budget.limit",
            ),
        ] {
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
