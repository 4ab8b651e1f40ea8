//! Secrets and the `${env:NAME}` / `${file:/path}` references that produce them.
//!
//! A [`Secret`] never prints its value: `Debug` shows `[redacted]` and there is no `Display` or
//! `Serialize`. The only way to the bytes is [`Secret::expose`], used where a credential is
//! written into a request. File references are re-read on every config load, which is how
//! rotated Kubernetes Secret volumes are picked up (the reload watcher triggers a load).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A credential value. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret's value. Call it only where the value is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Equal values (used to keep state across reloads when a credential did not change).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A config string that may hold secret references, e.g. `"Token ${env:API_TOKEN}"`.
///
/// The literal parts are treated as secret too: a key pasted straight into the YAML is still a key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretTemplate(")?;
        for part in &self.parts {
            match part {
                Part::Literal(_) => f.write_str("[redacted]")?,
                Part::Env(name) => write!(f, "${{env:{name}}}")?,
                Part::File(path) => write!(f, "${{file:{}}}", path.display())?,
            }
        }
        f.write_str(")")
    }
}

/// Why a reference could not be parsed or resolved. Messages name the variable or the file,
/// never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("unterminated secret reference (a `${{` without its `}}`)")]
    Unterminated,
    #[error("unknown secret reference `${{{0}:…}}` (use `${{env:NAME}}` or `${{file:/path}}`)")]
    UnknownKind(String),
    #[error("invalid environment variable name in `${{env:{0}}}`")]
    BadEnvName(String),
    #[error("empty file path in `${{file:}}`")]
    EmptyPath,
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("secret file {0} is empty")]
    FileEmpty(String),
}

impl SecretTemplate {
    /// Parse a config string. `$${` stands for a literal `${`.
    pub fn parse(input: &str) -> Result<Self, SecretError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = input;
        while let Some(start) = rest.find('$') {
            literal.push_str(&rest[..start]);
            let after = &rest[start..];
            if let Some(tail) = after.strip_prefix("$${") {
                literal.push_str("${");
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix("${") else {
                literal.push('$');
                rest = &after[1..];
                continue;
            };
            let end = body.find('}').ok_or(SecretError::Unterminated)?;
            let reference = &body[..end];
            rest = &body[end + 1..];
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(parse_reference(reference)?);
        }
        literal.push_str(rest);
        if !literal.is_empty() || parts.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(SecretTemplate { parts })
    }

    /// Resolve every reference; relative file paths are taken from `base_dir`.
    pub fn resolve(&self, base_dir: &Path) -> Result<Secret, SecretError> {
        if let [Part::Literal(value)] = self.parts.as_slice() {
            return Ok(Secret::new(value.as_str()));
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(value) => out.push_str(value),
                Part::Env(name) => match std::env::var(name) {
                    Ok(value) if value.is_empty() => {
                        return Err(SecretError::EnvEmpty(name.clone()))
                    }
                    Ok(value) => out.push_str(&value),
                    Err(_) => return Err(SecretError::EnvMissing(name.clone())),
                },
                Part::File(path) => {
                    let full = base_dir.join(path);
                    let value = read_secret_file(&full)?;
                    out.push_str(&value);
                }
            }
        }
        Ok(Secret::new(out))
    }

    /// Files this template reads (watched for rotation).
    pub fn files<'a>(&'a self, base_dir: &'a Path) -> impl Iterator<Item = PathBuf> + 'a {
        self.parts.iter().filter_map(move |part| match part {
            Part::File(path) => Some(base_dir.join(path)),
            _ => None,
        })
    }

    /// True when the string holds at least one `${…}` reference.
    pub fn has_references(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Literal(_)))
    }

    /// A printable description: references by name, literal text as `…`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(_) => out.push('…'),
                Part::Env(name) => {
                    out.push_str("${env:");
                    out.push_str(name);
                    out.push('}');
                }
                Part::File(path) => {
                    out.push_str("${file:");
                    out.push_str(&path.display().to_string());
                    out.push('}');
                }
            }
        }
        out
    }
}

fn parse_reference(reference: &str) -> Result<Part, SecretError> {
    let (kind, arg) = reference
        .split_once(':')
        .ok_or_else(|| SecretError::UnknownKind(reference.chars().take(16).collect()))?;
    match kind {
        "env" => {
            let valid = !arg.is_empty()
                && !arg.starts_with(|c: char| c.is_ascii_digit())
                && arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if valid {
                Ok(Part::Env(arg.to_string()))
            } else {
                Err(SecretError::BadEnvName(arg.chars().take(64).collect()))
            }
        }
        "file" if arg.trim().is_empty() => Err(SecretError::EmptyPath),
        "file" => Ok(Part::File(PathBuf::from(arg.trim()))),
        other => Err(SecretError::UnknownKind(other.chars().take(16).collect())),
    }
}

/// Largest secret file read (a key, a token, a PEM key or a service-account JSON is far
/// smaller): a bigger one, or one that is not a regular file, is a config error.
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Read a whole file of at most `max` bytes. Only regular files are read (after symlinks): a
/// FIFO would block the reader until someone writes to it and `/dev/zero` never ends, so
/// both are refused before they are opened. The reason names no content.
pub fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.kind().to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "larger than the {} limit",
            super::units::format_size(max)
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| e.kind().to_string())?;
    // Replaced by something else between the two looks: refuse it too.
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| e.kind().to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "larger than the {} limit",
            super::units::format_size(max)
        ));
    }
    Ok(bytes)
}

fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let shown = path.display().to_string();
    let bytes =
        read_regular_file(path, MAX_SECRET_FILE_BYTES).map_err(|reason| SecretError::File {
            path: shown.clone(),
            reason,
        })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretError::File {
        path: shown.clone(),
        reason: "not valid UTF-8".into(),
    })?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(SecretError::FileEmpty(shown));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("sk_live_123");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let t = SecretTemplate::parse("Token sk_live_123 ${env:X}").unwrap();
        let shown = format!("{t:?} {}", t.describe());
        assert!(!shown.contains("sk_live_123"), "{shown}");
        assert!(shown.contains("${env:X}"));
    }

    #[test]
    fn parses_references_inside_strings() {
        std::env::set_var("OUTPOST_TEST_SECRET_A", "abc");
        let t = SecretTemplate::parse("Token ${env:OUTPOST_TEST_SECRET_A}!").unwrap();
        assert!(t.has_references());
        assert_eq!(t.resolve(Path::new(".")).unwrap().expose(), "Token abc!");
        let plain = SecretTemplate::parse("literal").unwrap();
        assert!(!plain.has_references());
        assert_eq!(plain.resolve(Path::new(".")).unwrap().expose(), "literal");
        let escaped = SecretTemplate::parse("a $${env:X} $5").unwrap();
        assert_eq!(
            escaped.resolve(Path::new(".")).unwrap().expose(),
            "a ${env:X} $5"
        );
    }

    #[test]
    fn rejects_bad_references() {
        assert_eq!(
            SecretTemplate::parse("${env:A"),
            Err(SecretError::Unterminated)
        );
        assert!(matches!(
            SecretTemplate::parse("${vault:x}"),
            Err(SecretError::UnknownKind(_))
        ));
        assert!(matches!(
            SecretTemplate::parse("${env:1A}"),
            Err(SecretError::BadEnvName(_))
        ));
        assert!(matches!(
            SecretTemplate::parse("${env:}"),
            Err(SecretError::BadEnvName(_))
        ));
        assert_eq!(
            SecretTemplate::parse("${file:}"),
            Err(SecretError::EmptyPath)
        );
        assert!(matches!(
            SecretTemplate::parse("${nocolon}"),
            Err(SecretError::UnknownKind(_))
        ));
    }

    #[test]
    fn missing_env_names_the_variable_only() {
        let t = SecretTemplate::parse("${env:OUTPOST_TEST_DEFINITELY_UNSET}").unwrap();
        let err = t.resolve(Path::new(".")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable OUTPOST_TEST_DEFINITELY_UNSET is not set"
        );
    }

    #[test]
    fn file_secret_trims_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("outpost-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "s3cr3t\r\n").unwrap();
        let t = SecretTemplate::parse("${file:key}").unwrap();
        assert_eq!(t.resolve(&dir).unwrap().expose(), "s3cr3t");
        assert_eq!(t.files(&dir).collect::<Vec<_>>(), vec![dir.join("key")]);
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let e = SecretTemplate::parse("${file:empty}")
            .unwrap()
            .resolve(&dir)
            .unwrap_err();
        assert!(matches!(e, SecretError::FileEmpty(_)));
        let e = SecretTemplate::parse("${file:missing}")
            .unwrap()
            .resolve(&dir)
            .unwrap_err();
        assert!(e.to_string().contains("cannot read secret file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("outpost-secret-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        for (path, reason) in [
            (fifo.clone(), "not a regular file"),
            (PathBuf::from("/dev/zero"), "not a regular file"),
            (dir.clone(), "not a regular file"),
        ] {
            let started = std::time::Instant::now();
            let t = SecretTemplate::parse(&format!("${{file:{}}}", path.display())).unwrap();
            let e = t.resolve(&dir).unwrap_err().to_string();
            assert!(e.contains(reason), "{e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        std::fs::write(
            dir.join("big"),
            vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1],
        )
        .unwrap();
        let e = SecretTemplate::parse("${file:big}")
            .unwrap()
            .resolve(&dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than the 1MiB limit"), "{e}");
        std::fs::write(dir.join("ok"), vec![b'a'; MAX_SECRET_FILE_BYTES as usize]).unwrap();
        let t = SecretTemplate::parse("${file:ok}").unwrap();
        assert_eq!(
            t.resolve(&dir).unwrap().expose().len(),
            MAX_SECRET_FILE_BYTES as usize
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_never_echoes_literals(input in "\\PC{0,64}|.{0,2048}") {
            if let Ok(t) = SecretTemplate::parse(&input) {
                let shown = format!("{t:?} {}", t.describe());
                // Literal text is never displayed: only `…` and reference names.
                for part in &t.parts {
                    if let Part::Literal(lit) = part {
                        if lit.len() >= 4 && !lit.contains("env:") && !lit.contains("file:") {
                            proptest::prop_assert!(!shown.contains(lit.as_str()), "{} shown in {}", lit, shown);
                        }
                    }
                }
            }
        }
    }
}
