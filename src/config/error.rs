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
        let message = err.message().trim().to_string();
        let key = backticked(&message)
            .or_else(|| self.key_before(at))
            .unwrap_or_else(|| "?".to_string());
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
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let key = &before[start..];
        (!key.is_empty()).then(|| key.to_string())
    }
}

/// The first `quoted` name in a serde message ("unknown field `wieght`, expected ...").
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
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
