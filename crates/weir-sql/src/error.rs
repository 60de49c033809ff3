//! Errors of SQL scripts: each names where in the script it is (line and column, from the
//! parser's token locations or DataFusion's diagnostics) and what is wrong.

use datafusion_common::DataFusionError;
use datafusion_sql::sqlparser::parser::ParserError;
use datafusion_sql::sqlparser::tokenizer::Location;

/// A SQL script that cannot run, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct SqlError {
    /// Where the script came from (its path, or `<stdin>`).
    pub origin: String,
    /// Line and column (from 1) the error points at, when known.
    pub at: Option<(u64, u64)>,
    pub message: String,
}

impl SqlError {
    pub fn new(origin: &str, at: Option<Location>, message: impl Into<String>) -> Self {
        let at = at.filter(|l| l.line > 0).map(|l| (l.line, l.column));
        Self { origin: origin.to_string(), at, message: message.into() }
    }

    fn render(&self) -> String {
        match self.at {
            Some((line, column)) => format!("{}:{line}:{column}: {}", self.origin, self.message),
            None => format!("{}: {}", self.origin, self.message),
        }
    }

    /// A parser error: sqlparser writes its location into the message (`... at Line: 3,
    /// Column: 5`); it moves to the front, where compilers put it.
    pub fn parser(origin: &str, e: ParserError, fallback: Location) -> Self {
        let text = match e {
            ParserError::TokenizerError(t) | ParserError::ParserError(t) => t,
            ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_string(),
        };
        match text.rfind(" at Line: ") {
            Some(i) => {
                let location = parse_location(&text[i + " at ".len()..]);
                let message = text[..i].to_string();
                Self::new(origin, location.or(Some(fallback)), tidy(&message))
            }
            None => Self::new(origin, Some(fallback), tidy(&text)),
        }
    }

    /// A DataFusion planning error: its diagnostic's span if it has one, else `fallback` (the
    /// start of the statement).
    pub fn planner(origin: &str, e: DataFusionError, fallback: Location) -> Self {
        let span = e.diagnostic().and_then(|d| d.span).filter(|s| s.start.line > 0);
        let at = span.map(|s| Location::new(s.start.line, s.start.column)).unwrap_or(fallback);
        Self::new(origin, Some(at), tidy(&e.strip_backtrace()))
    }
}

/// `Line: 3, Column: 5` → its location.
fn parse_location(text: &str) -> Option<Location> {
    let rest = text.strip_prefix("Line: ")?;
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some(Location::new(line.trim().parse().ok()?, column.parse().ok()?))
}

/// DataFusion's messages start with their kind (`Error during planning: `, `Schema error: `);
/// the user needs what follows.
fn tidy(message: &str) -> String {
    let mut m = message.trim();
    for prefix in ["Error during planning: ", "Schema error: ", "This feature is not implemented: ", "sql parser error: ", "SQL error: "] {
        if let Some(rest) = m.strip_prefix(prefix) {
            m = rest;
        }
    }
    // DataFusion puts hints on a second line ("Valid fields are ..."): one line reads better
    // after a location prefix.
    m.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_locations_move_to_the_front() {
        let e = ParserError::ParserError("Expected: an expression, found: FROM at Line: 3, Column: 12".into());
        let err = SqlError::parser("job.sql", e, Location::new(1, 1));
        assert_eq!(err.to_string(), "job.sql:3:12: Expected: an expression, found: FROM");
    }
}
