//! `[[rule]]`: a cause recognised in a failed run's journal lines, by a regular expression. The
//! built-in rules (`journal/rules.toml`) and operators' own are both made here, so that both are
//! checked the same way.

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

/// A journal-line rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub cause: String,
    pattern: Regex,
    detail: String,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        (
            self.cause.as_str(),
            self.pattern.as_str(),
            self.detail.as_str(),
        ) == (
            other.cause.as_str(),
            other.pattern.as_str(),
            other.detail.as_str(),
        )
    }
}

impl Eq for Rule {}

impl Rule {
    /// Checks and builds a rule; the error says whether the cause or the pattern is wrong.
    pub(crate) fn new(cause: &str, pattern: &str, detail: &str) -> Result<Self, String> {
        if cause.is_empty() || !cause.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(format!(
                "rule cause `{cause}` must be lower_case_with_underscores"
            ));
        }
        let pattern = Regex::new(pattern)
            .map_err(|e| format!("rule pattern `{pattern}` is not a regular expression: {e}"))?;
        Ok(Self {
            cause: cause.to_owned(),
            pattern,
            detail: detail.to_owned(),
        })
    }

    /// The detail, with `$1`... filled in, when `line` matches.
    pub(crate) fn apply(&self, line: &str) -> Option<String> {
        let captures = self.pattern.captures(line)?;
        let mut detail = String::new();
        captures.expand(&self.detail, &mut detail);
        Some(detail)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    cause: Spanned<String>,
    pattern: Spanned<String>,
    detail: Spanned<String>,
}

impl Ctx<'_> {
    pub(super) fn rule(&self, raw: &Spanned<RawRule>) -> Result<Rule, ConfigError> {
        let RawRule {
            cause,
            pattern,
            detail,
        } = raw.get_ref();
        Rule::new(cause.get_ref(), pattern.get_ref(), detail.get_ref()).map_err(|e| {
            let span = if e.contains("pattern") {
                pattern.span()
            } else {
                cause.span()
            };
            self.at(span, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Rule;

    #[test]
    fn bad_rules_are_refused() {
        assert!(Rule::new("Bad Cause", "x", "d").is_err_and(|e| e.contains("cause")));
        assert!(Rule::new("ok", "(", "d").is_err_and(|e| e.contains("pattern")));
    }
}
