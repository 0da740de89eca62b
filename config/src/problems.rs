//! Validation problems: each one a place in the file (`FILE:LINE`) and a message that names the
//! key and the fix. All of them are collected before anything is reported.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file, as it was named to [`crate::load`] or [`crate::parse`].
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is about the whole file (it cannot be read).
    pub line: usize,
    /// What is wrong and how to fix it. Never contains a secret's value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// Every problem of one config file, in line order. `Display` prints one `FILE:LINE: message`
/// per line, ready for an operator's terminal or the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors {
    /// At least one.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Byte offset → line number.
#[derive(Debug)]
pub(crate) struct LineIndex {
    /// Byte offset of the start of every line after the first.
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            starts: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1)
                .collect(),
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset) + 1
    }
}

/// The collector every check reports into.
#[derive(Debug)]
pub(crate) struct Problems {
    file: PathBuf,
    lines: LineIndex,
    found: Vec<Problem>,
    /// Values whose `${ENV}` or secret could not be resolved: already reported, so no check
    /// complains about their unexpanded text a second time.
    tainted: HashSet<Range<usize>>,
}

impl Problems {
    pub(crate) fn new(file: &Path, text: &str) -> Self {
        Self {
            file: file.to_owned(),
            lines: LineIndex::new(text),
            found: Vec::new(),
            tainted: HashSet::new(),
        }
    }

    /// A problem at a byte offset of the text.
    pub(crate) fn at(&mut self, offset: usize, message: impl Into<String>) {
        let line = self.lines.line(offset);
        self.at_line(line, message);
    }

    /// A problem at a line (0: the whole file).
    pub(crate) fn at_line(&mut self, line: usize, message: impl Into<String>) {
        self.found.push(Problem {
            file: self.file.clone(),
            line,
            message: message.into(),
        });
    }

    /// A problem about a value: skipped when that value is tainted (already reported).
    pub(crate) fn at_value(&mut self, span: &Range<usize>, message: impl Into<String>) {
        if !self.tainted.contains(span) {
            self.at(span.start, message);
        }
    }

    pub(crate) fn taint(&mut self, span: Range<usize>) {
        self.tainted.insert(span);
    }

    pub(crate) fn is_tainted(&self, span: &Range<usize>) -> bool {
        self.tainted.contains(span)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The line of a byte offset, for messages that point at another place.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.lines.line(offset)
    }

    /// Everything found, in line order, without repeats.
    pub(crate) fn into_errors(self) -> ConfigErrors {
        let mut problems = self.found;
        problems.sort_by_key(|p| p.line);
        problems.dedup();
        ConfigErrors { problems }
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute =
                previous.get(j).copied().unwrap_or(usize::MAX / 2) + usize::from(ca != *cb);
            let delete = previous.get(j + 1).copied().unwrap_or(usize::MAX / 2) + 1;
            let insert = current.last().copied().unwrap_or(usize::MAX / 2) + 1;
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

/// The closest candidate to a misspelt word, if any is close enough to be a plausible typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lowered = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|&c| (distance(&lowered, &c.to_ascii_lowercase()), c))
        .filter(|&(d, c)| d <= 2.max(c.len() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `` `a`, `b` or `c` ``.
pub(crate) fn one_of(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// `"a", "b" or "c"`: values as they are written in the file.
pub(crate) fn one_of_values(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("\"{c}\"")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The backquoted words of a serde message, in order: `` unknown field `x`, expected `a` or `b` ``
/// → `["x", "a", "b"]`.
fn quoted_words(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// What serde said, turned into what the operator should do.
#[derive(Debug, PartialEq)]
pub(crate) enum SerdeProblem {
    /// A key that the table does not have; `near` is the valid key it is probably a typo of.
    UnknownKey {
        key: String,
        near: Option<String>,
        message: String,
    },
    /// A required key is absent.
    MissingKey { key: String, message: String },
    /// A value of the wrong type, range or spelling.
    BadValue { message: String },
}

/// Rewrites a serde/toml error message for `place` (a key path like `[zerobus] endpoint`).
pub(crate) fn explain_serde(message: &str, place: &str) -> SerdeProblem {
    let words = quoted_words(message);
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let key = words.first().copied().unwrap_or_default().to_owned();
        let valid: Vec<&str> = if rest.contains("there are no fields") {
            Vec::new()
        } else {
            words.iter().skip(1).copied().collect()
        };
        let near = closest(&key, &valid);
        let hint = match near {
            Some(near) => format!("did you mean `{near}`? "),
            None => String::new(),
        };
        let message = format!(
            "{place}: unknown key `{key}`: {hint}remove it or use one of {}",
            one_of(&valid)
        );
        return SerdeProblem::UnknownKey {
            key,
            near: near.map(str::to_owned),
            message,
        };
    }
    if message.starts_with("missing field ") {
        let key = words.first().copied().unwrap_or_default().to_owned();
        let message = format!("{place}: missing required key `{key}`: add `{key} = …`");
        return SerdeProblem::MissingKey { key, message };
    }
    if message.starts_with("unknown variant ") {
        let value = words.first().copied().unwrap_or_default();
        let valid: Vec<&str> = words.iter().skip(1).copied().collect();
        let hint = match closest(value, &valid) {
            Some(near) => format!("did you mean \"{near}\"? "),
            None => String::new(),
        };
        return SerdeProblem::BadValue {
            message: format!(
                "{place}: \"{value}\" is not an accepted value: {hint}use {}",
                one_of_values(&valid)
            ),
        };
    }
    if let Some(rest) = message.strip_prefix("invalid value: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        let range = match expected {
            "u8" => Some("0..=255"),
            "u16" => Some("0..=65535"),
            "u32" => Some("0..=4294967295"),
            "u64" => Some("0..=9223372036854775807"),
            _ => None,
        };
        let message = match range {
            Some(range) => {
                format!("{place}: {found} is out of range: use a whole number in {range}")
            }
            None => format!("{place}: {found} is not valid: expected {expected}"),
        };
        return SerdeProblem::BadValue { message };
    }
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        let found = found
            .replace("sequence", "an array")
            .replace("map", "a table");
        let expected = plain_expected(expected);
        return SerdeProblem::BadValue {
            message: format!("{place}: wrong type: found {found}, write {expected} instead"),
        };
    }
    SerdeProblem::BadValue {
        message: format!("{place}: {}", message.replace('\n', "; ")),
    }
}

fn plain_expected(expected: &str) -> String {
    if expected.starts_with("struct ") || expected == "a map" {
        "a table".into()
    } else if expected == "a sequence" {
        "an array".into()
    } else if expected.starts_with("u8")
        || expected.starts_with("u16")
        || expected.starts_with("u32")
        || expected.starts_with("u64")
    {
        "a whole number".into()
    } else if expected == "f64" {
        "a number".into()
    } else if expected.starts_with("enum ") {
        "a string".into()
    } else {
        expected.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_from_one() {
        let index = LineIndex::new("a\nb\n\nc");
        assert_eq!(index.line(0), 1);
        assert_eq!(index.line(1), 1);
        assert_eq!(index.line(2), 2);
        assert_eq!(index.line(4), 3);
        assert_eq!(index.line(5), 4);
        assert_eq!(index.line(500), 4);
    }

    #[test]
    fn close_misspellings_are_suggested() {
        assert_eq!(closest("adress", &["address", "kind"]), Some("address"));
        assert_eq!(closest("endpont", &["endpoint", "name"]), Some("endpoint"));
        assert_eq!(closest("zzzzzz", &["address", "kind"]), None);
        assert_eq!(
            closest("signandencrypt", &["None", "Sign", "SignAndEncrypt"]),
            Some("SignAndEncrypt")
        );
    }

    #[test]
    fn serde_messages_become_fixes() {
        let unknown = explain_serde(
            "unknown field `adress`, expected one of `name`, `address`",
            "source \"x\"",
        );
        assert_eq!(
            unknown,
            SerdeProblem::UnknownKey {
                key: "adress".into(),
                near: Some("address".into()),
                message: "source \"x\": unknown key `adress`: did you mean `address`? remove it or use one of `name` or `address`".into()
            }
        );
        let SerdeProblem::BadValue { message } =
            explain_serde("invalid value: integer `70000`, expected u16", "p")
        else {
            panic!("not a bad value")
        };
        assert_eq!(
            message,
            "p: integer `70000` is out of range: use a whole number in 0..=65535"
        );
    }

    #[test]
    fn a_whole_file_problem_has_no_line() {
        let problem = Problem {
            file: "a.toml".into(),
            line: 0,
            message: "cannot read".into(),
        };
        assert_eq!(problem.to_string(), "a.toml: cannot read");
    }
}
