//! `${NAME}` expansion in string values.
//!
//! `${NAME}` is replaced by the environment variable `NAME` (`[A-Za-z_][A-Za-z0-9_]*`); `$${`
//! is a literal `${`; any other `$` is kept as written (MQTT's `$share/…` and `$SYS/#` need no
//! escaping). A value is never expanded twice: a variable's value may contain `${` safely.

use std::borrow::Cow;

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${NAME}` with `NAME` not set.
    Unset(String),
    /// `${` not followed by a name and `}`.
    Malformed(String),
}

impl ExpandError {
    /// The operator-facing explanation, for a value at `place`.
    pub(crate) fn explain(&self, place: &str) -> String {
        match self {
            Self::Unset(name) => format!(
                "{place}: environment variable `{name}` (from `${{{name}}}`) is not set: set it in \
                 the service's environment (systemd Environment=/EnvironmentFile=) or write the \
                 value here"
            ),
            Self::Malformed(text) => format!(
                "{place}: `{text}` is not a variable reference: write `${{NAME}}` with NAME made \
                 of letters, digits and `_`, or `$${{` for a literal `${{`"
            ),
        }
    }

    /// [`Self::explain`] for a secret: never quotes the value.
    pub(crate) fn explain_secret(&self, place: &str) -> String {
        match self {
            Self::Unset(_) => self.explain(place),
            Self::Malformed(_) => format!(
                "{place}: holds a `${{` that is not a variable reference: write `${{NAME}}` with \
                 NAME made of letters, digits and `_`, or `$${{` for a literal `${{`"
            ),
        }
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands every `${NAME}` of `text`; reports every variable that is unset or malformed.
pub(crate) fn expand<'t>(
    text: &'t str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Cow<'t, str>, Vec<ExpandError>> {
    if !text.contains('$') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        let (before, from_dollar) = rest.split_at(dollar);
        out.push_str(before);
        if let Some(after) = from_dollar.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = from_dollar.strip_prefix("${") {
            match after.find('}') {
                Some(end) => {
                    let (name, tail) = after.split_at(end);
                    if is_name(name) {
                        match vars(name) {
                            Some(value) => out.push_str(&value),
                            None => errors.push(ExpandError::Unset(name.to_owned())),
                        }
                    } else {
                        errors.push(ExpandError::Malformed(format!("${{{name}}}")));
                    }
                    rest = tail.get(1..).unwrap_or_default();
                }
                None => {
                    let shown: String = from_dollar.chars().take(20).collect();
                    errors.push(ExpandError::Malformed(shown));
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = from_dollar.get(1..).unwrap_or_default();
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(Cow::Owned(out))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1".into()),
            "TRICKY" => Some("${HOST}".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_once() {
        assert_eq!(
            expand("tcp://${HOST}:502", &env).unwrap(),
            "tcp://10.0.0.1:502"
        );
        assert_eq!(expand("${TRICKY}", &env).unwrap(), "${HOST}");
        assert_eq!(expand("a${EMPTY}b", &env).unwrap(), "ab");
    }

    #[test]
    fn other_dollars_are_kept() {
        assert_eq!(expand("$share/g/a/#", &env).unwrap(), "$share/g/a/#");
        assert_eq!(expand("$SYS/#", &env).unwrap(), "$SYS/#");
        assert_eq!(expand("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(expand("$", &env).unwrap(), "$");
        assert_eq!(expand("$${HOST}", &env).unwrap(), "${HOST}");
    }

    #[test]
    fn every_unset_variable_is_reported() {
        assert_eq!(
            expand("${A}-${HOST}-${B}", &env).unwrap_err(),
            vec![
                ExpandError::Unset("A".into()),
                ExpandError::Unset("B".into())
            ]
        );
    }

    #[test]
    fn malformed_references_are_reported() {
        assert_eq!(
            expand("${1X}", &env).unwrap_err(),
            vec![ExpandError::Malformed("${1X}".into())]
        );
        assert_eq!(
            expand("x${HOST", &env).unwrap_err(),
            vec![ExpandError::Malformed("${HOST".into())]
        );
        assert_eq!(
            expand("${}", &env).unwrap_err(),
            vec![ExpandError::Malformed("${}".into())]
        );
    }
}
