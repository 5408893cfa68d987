//! Configuration errors in the operator's words: every one names the file, the line, the column and
//! the key, so `fulcrum check` output can be acted on without reading the source.

use std::path::{Path, PathBuf};

/// Why a configuration file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but a key in it is wrong (syntax, type, or a semantic rule).
    #[error("error in {} at line {line}, column {column}, key `{key}`: {message}", path.display())]
    Invalid {
        /// The file that holds the mistake.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column (in characters) of the offending key or value.
        column: usize,
        /// The key, dotted from the top of the file where known (`upstreams.app.servers[0].weight`).
        key: String,
        /// What is wrong, and what would be right.
        message: String,
    },
}

/// The source text of a config file, able to turn byte offsets into line and column numbers.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// An [`Error::Invalid`] located at byte offset `at`.
    pub fn error(&self, at: usize, key: impl Into<String>, message: impl Into<String>) -> Error {
        let (line, column) = self.line_column(at);
        Error::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Converts a TOML parse or type error, recovering the key from the message or the text.
    pub fn toml_error(&self, err: &toml::de::Error) -> Error {
        let at = err.span().map(|s| s.start).unwrap_or(0);
        let mut message = err.message().trim().to_string();
        let key = match field_named(&message) {
            // A missing field is reported at its table's header, which says whose field it is.
            Some(field) if message.starts_with("missing") => match self.header_at(at) {
                Some(table) => format!("{table}.{field}"),
                None => field,
            },
            Some(field) => field,
            None => self
                .key_before(at)
                .or_else(|| self.statement_key(at))
                .unwrap_or_else(|| "?".to_string()),
        };
        if message.starts_with("invalid inline table") {
            message.push_str(
                "\n(TOML inline tables `{ ... }` must fit on one line; \
                 write a long server as a [[upstreams.NAME.servers]] table)",
            );
        }
        self.error(at, key, message)
    }

    fn line_column(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// The key whose value starts at `at` (`key = <value>`), found by reading backwards.
    fn key_before(&self, at: usize) -> Option<String> {
        let before = self.text.get(..at)?.trim_end();
        let before = before.strip_suffix('=')?.trim_end();
        let start = before
            .char_indices()
            .rev()
            .find(|&(_, c)| !is_key_char(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let key = &before[start..];
        (!key.is_empty()).then(|| key.to_string())
    }

    /// The dotted name of the table whose header starts at `at` (`[upstreams.app]`), with the index
    /// of an array-of-tables entry (`[[upstreams.app.servers]]` the second time: `...servers[1]`).
    fn header_at(&self, at: usize) -> Option<String> {
        let rest = self.text.get(at..)?;
        let line = rest.lines().next()?.trim_end();
        let (many, name) = match line.strip_prefix("[[") {
            Some(inner) => (true, inner.split("]]").next()?),
            None => (false, line.strip_prefix('[')?.split(']').next()?),
        };
        let name: String = name.split('.').map(str::trim).collect::<Vec<_>>().join(".");
        if !many {
            return Some(name);
        }
        let index = self.text[..at]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("[["))
            .filter_map(|l| l.split("]]").next())
            .filter(|n| n.split('.').map(str::trim).eq(name.split('.')))
            .count();
        Some(format!("{name}[{index}]"))
    }

    /// The key of the statement that `at` is inside (`servers = [` for an error on a later line
    /// of that array), found as the nearest earlier line that starts with `key =`.
    fn statement_key(&self, at: usize) -> Option<String> {
        let before = self.text.get(..at)?;
        for line in before.lines().rev() {
            let line = line.trim_start();
            if line.trim_start_matches('[').starts_with(is_key_char) && line.starts_with('[') {
                return None; // a table header: the statement would have been below it
            }
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && key.chars().all(is_key_char) {
                    return Some(key.to_string());
                }
            }
        }
        None
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

/// The field a serde message is about ("unknown field `wieght`, expected ...", "missing field
/// `servers`"); other backticked words (a value: "integer `-1`", a token: "expected `}`") are not
/// keys.
fn field_named(message: &str) -> Option<String> {
    let rest = [
        "unknown field `",
        "missing field `",
        "duplicate field `",
        "duplicate key `",
    ]
    .iter()
    .find_map(|p| message.strip_prefix(p))?;
    let len = rest.find('`')?;
    Some(rest[..len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = Source {
            path: Path::new("f.toml"),
            text: "a = 1\nbb = 2\n",
        };
        assert_eq!(src.line_column(0), (1, 1));
        assert_eq!(src.line_column(6), (2, 1));
        assert_eq!(src.line_column(11), (2, 6));
    }

    #[test]
    fn multibyte_text_before_a_value_is_no_problem() {
        let text = "é = 0";
        let src = Source {
            path: Path::new("f.toml"),
            text,
        };
        assert_eq!(src.key_before(text.len() - 1), None);
        assert_eq!(
            src.line_column(1),
            (1, 1),
            "an offset inside a character rounds down"
        );
    }

    #[test]
    fn key_is_read_back_from_a_value_offset() {
        let text = "servers = [ { address = \"x\", weight = 0 } ]";
        let src = Source {
            path: Path::new("f.toml"),
            text,
        };
        let at = text.find('0').unwrap();
        assert_eq!(src.key_before(at).as_deref(), Some("weight"));
    }
}
