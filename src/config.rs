//! `proxy.yaml`: parsing and validation, in two stages (sozu style): `raw.rs` (stage one),
//! `validate.rs` (stage two), `model.rs` (the typed result). Loading and error reporting live
//! here; `bounds.rs` bounds the text before the YAML parser sees it, `forms.rs` holds the
//! pure checks of secret and file shapes, `secret.rs` the `${env:…}`/`${file:…}` references.
//! `config` is a leaf of the module graph: it imports no other Outpost module.
//!
//! Stage one deserializes the YAML into `Raw*` structs (`deny_unknown_fields`, durations and
//! sizes as strings); serde reports position and field path for type errors and unknown keys.
//! Stage two, [`validate`], turns the raw structs into the typed [`Config`] the proxy runs on:
//! presets merged, secrets resolved, URLs and header names parsed, cross-field rules checked.
//! Every stage-two error names the field path and is located in the file by [`Locator`].
//! No error message ever contains a secret's value.

pub mod bounds;
pub mod capture;
pub mod forms;
pub mod locate;
mod model;
pub mod preset;
mod raw;
pub mod secret;
pub mod units;
mod validate;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use self::locate::Locator;
pub use self::preset::{Preset, PresetDefaults, ResetHeader};
pub use self::secret::{Secret, SecretError, SecretTemplate};
use self::units::{Dur, Size};

pub use self::model::*;
pub use self::raw::UniqueMap;
use self::raw::*;
pub use self::validate::is_hop_by_hop;
use self::validate::Validator;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";
pub const DEFAULT_WEBHOOK_LISTEN: &str = "0.0.0.0:8081";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Burst a quota-paced limit without a configured rate allows while the budget is ample.
pub const DEFAULT_QUOTA_BURST: u32 = 10;
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(100);
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
pub const DEFAULT_RETRY_MAX_BODY_BYTES: u64 = 64 * 1024;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(30);
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
pub const DEFAULT_WEBHOOK_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_EXPECTED_REPLICAS: u32 = 2;
pub const DEFAULT_WEBHOOK_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_WEBHOOK_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest header value (static header or credential) the config may set: every request
/// carries it, and upstreams refuse large header sections.
pub const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;
/// hyper cannot read a header section into a smaller buffer than this.
pub const MIN_MAX_HEADER_BYTES: u64 = 8 * 1024;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in the config, located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Field path such as `upstreams.stripe.auth.token` (empty for the whole file).
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config, one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// The one place YAML is parsed, so a move to a maintained `serde_yaml` fork is a one-line change.
fn parse_yaml<T: DeserializeOwned>(source: &str) -> Result<T, serde_yaml::Error> {
    serde_yaml::from_str(source)
}

/// Errors listed at most (a generated file can hold thousands of the same mistake).
pub const MAX_REPORTED_ISSUES: usize = 100;

/// Largest config file read (60 000 upstreams fit in a few MiB).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Read and validate the config file at `path` (a regular file of at most
/// [`MAX_CONFIG_BYTES`], UTF-8).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let at = |line: usize, column: usize, message: String| {
        ConfigError(vec![ConfigIssue {
            file: file.clone(),
            line,
            column,
            path: String::new(),
            message,
        }])
    };
    let bytes = secret::read_regular_file(path, MAX_CONFIG_BYTES)
        .map_err(|reason| at(1, 1, format!("cannot read config file: {reason}")))?;
    let source = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
        let start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let column = 1 + String::from_utf8_lossy(&valid[start..]).chars().count();
        at(line, column, "the config file is not valid UTF-8".into())
    })?;
    load_str(&source, path)
}

/// Validate config text as if read from `path` (used for messages and relative secret files).
/// `outpost run --record DIR` / `--replay DIR`: every upstream's `mode` and the cassette
/// directory, for every config this process loads (start and reloads).
static MODE_OVERRIDE: std::sync::OnceLock<(capture::Mode, PathBuf)> = std::sync::OnceLock::new();

/// Set the process-wide mode override (once, before the first load).
pub fn set_mode_override(mode: capture::Mode, dir: PathBuf) {
    let _ = MODE_OVERRIDE.set((mode, dir));
}

pub fn load_str(source: &str, path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    // Bounded work before the YAML parser sees the text (deep nesting, alias bombs).
    bounds::check(source).map_err(|refused| {
        ConfigError(vec![ConfigIssue {
            file: file.clone(),
            line: refused.line,
            column: refused.column,
            path: String::new(),
            message: refused.message,
        }])
    })?;
    let raw: RawConfig = parse_yaml(source)
        .map_err(|e| ConfigError(vec![locate_duplicate(serde_issue(&file, &e), source)]))?;
    let mut v = Validator {
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        issues: Vec::new(),
        watched: BTreeSet::new(),
    };
    let config = v.config(raw, path);
    if v.issues.is_empty() {
        if let Some(mut config) = config {
            config.watched_files = v.watched.into_iter().collect();
            if let Some((mode, dir)) = MODE_OVERRIDE.get() {
                config.cassette_dir = Some(dir.clone());
                for upstream in &mut config.upstreams {
                    if let Some(upstream) = Arc::get_mut(upstream) {
                        upstream.mode = *mode;
                    }
                }
            }
            return Ok(config);
        }
    }
    let locator = Locator::new(source);
    let more = v.issues.len().saturating_sub(MAX_REPORTED_ISSUES);
    let mut issues: Vec<ConfigIssue> = v
        .issues
        .into_iter()
        .take(MAX_REPORTED_ISSUES)
        .map(|issue| {
            let (line, column) = if issue.at_value {
                locator.value(&issue.path)
            } else {
                locator.key(&issue.path)
            };
            ConfigIssue {
                file: file.clone(),
                line,
                column,
                path: issue.path,
                message: issue.message,
            }
        })
        .collect();
    if more > 0 {
        issues.push(ConfigIssue {
            file: file.clone(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!("… and {more} more errors (fix these first)"),
        });
    }
    Err(ConfigError(issues))
}

/// serde_yaml places a duplicate-key error at the mapping's start: point at the repeated key.
fn locate_duplicate(mut issue: ConfigIssue, source: &str) -> ConfigIssue {
    let key = issue
        .message
        .strip_prefix("duplicate key `")
        .and_then(|k| k.strip_suffix('`'));
    if let Some(key) = key {
        let full = if issue.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", issue.path)
        };
        if let Some((line, column)) = Locator::new(source).duplicate(&full) {
            issue.line = line;
            issue.column = column;
        }
    }
    issue
}

fn serde_issue(file: &str, e: &serde_yaml::Error) -> ConfigIssue {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    // serde_yaml renders "path: message at line L column C"; keep path and message apart.
    let mut text = e.to_string();
    if let Some(cut) = text.rfind(" at line ") {
        text.truncate(cut);
    }
    let (path, message) = match text.split_once(": ") {
        Some((path, message))
            if !path.contains(' ') && path.chars().next().is_some_and(|c| c.is_alphabetic()) =>
        {
            (path.to_string(), message.to_string())
        }
        _ => (String::new(), text),
    };
    ConfigIssue {
        file: file.to_string(),
        line,
        column,
        path,
        message,
    }
}

#[cfg(test)]
mod tests;
