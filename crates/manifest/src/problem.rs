//! Manifest problems: each names the file, the line and what would be valid.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one manifest; `check` shows them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Collects problems against one source text, turning byte spans into lines.
pub(crate) struct Collector<'a> {
    file: &'a Path,
    source: &'a str,
    pub problems: Vec<Problem>,
}

impl<'a> Collector<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Self {
            file,
            source,
            problems: Vec::new(),
        }
    }

    /// The manifest's text.
    pub fn source(&self) -> &str {
        self.source
    }

    /// 1-based line and column where `span` starts.
    pub fn location(&self, span: Range<usize>) -> (usize, usize) {
        line_and_column(self.source, span.start)
    }

    pub fn at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let location = span.map(|s| self.location(s));
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            location,
            message: message.into(),
        });
    }
}

impl Collector<'_> {
    /// A problem in another file the manifest names (a body schema).
    pub fn in_file(&mut self, file: &Path, location: Option<(usize, usize)>, message: String) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            location,
            message,
        });
    }
}

pub(crate) fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}
