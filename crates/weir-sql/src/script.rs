//! The statements of a SQL script, parsed with sqlparser's tokenizer and parser.
//!
//! Queries (`SELECT ...`) are standard SQL and go through sqlparser's own `parse_query`. The
//! statements around them are Flink's dialect, which no sqlparser dialect knows in full:
//! `SET 'key' = 'value'` with a quoted key, `CREATE TABLE` with computed columns,
//! `WATERMARK FOR` and `PRIMARY KEY ... NOT ENFORCED` before a `WITH ('k' = 'v')` clause, and
//! `EXECUTE STATEMENT SET BEGIN ... END`. They are parsed here clause by clause on the same
//! token stream, so every error still carries the line and column of the token it is about.

use crate::error::SqlError;
use datafusion_sql::sqlparser::ast::{self, Query};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{IsOptional, Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// A statement with the location of its first token.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub at: Location,
    pub item: T,
}

#[derive(Debug, Clone)]
pub enum Statement {
    /// `SET 'key' = 'value'`: a configuration key for the job(s) the script submits.
    Set {
        key: String,
        value: String,
    },
    /// `RESET 'key'` (back to the cluster's value) or `RESET` (all of them).
    Reset {
        key: Option<String>,
    },
    CreateTable(TableDdl),
    /// `CREATE [TEMPORARY] VIEW name AS query`.
    CreateView {
        name: String,
        query: Box<Query>,
    },
    Insert(Insert),
    /// `EXECUTE STATEMENT SET BEGIN INSERT ...; ... END` (or Flink 1.x's `BEGIN STATEMENT SET`):
    /// several INSERTs run as one job.
    StatementSet(Vec<Located<Insert>>),
    /// A query whose rows the client shows (the interactive client).
    Query(Box<Query>),
    ShowTables,
    Describe(String),
    Explain(Box<Located<Statement>>),
}

/// `CREATE TABLE name (...) WITH (...)`.
#[derive(Debug, Clone)]
pub struct TableDdl {
    pub name: String,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDdl>,
    pub watermark: Option<WatermarkDdl>,
    pub primary_key: Option<Vec<String>>,
    /// The `WITH` options in the order written, with the location of each key.
    pub options: Vec<(String, String, Location)>,
}

#[derive(Debug, Clone)]
pub enum ColumnDdl {
    /// A column the connector provides.
    Physical { name: String, ty: ast::DataType, not_null: bool, at: Location },
    /// `name AS expr`: computed from the other columns of the row.
    Computed { name: String, expr: ast::Expr, at: Location },
}

impl ColumnDdl {
    pub fn name(&self) -> &str {
        match self {
            ColumnDdl::Physical { name, .. } | ColumnDdl::Computed { name, .. } => name,
        }
    }

    pub fn at(&self) -> Location {
        match self {
            ColumnDdl::Physical { at, .. } | ColumnDdl::Computed { at, .. } => *at,
        }
    }
}

/// `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone)]
pub struct WatermarkDdl {
    pub column: String,
    pub expr: ast::Expr,
    pub at: Location,
}

/// `INSERT INTO table [(columns)] query`.
#[derive(Debug, Clone)]
pub struct Insert {
    pub table: String,
    pub table_at: Location,
    pub columns: Vec<String>,
    pub query: Box<Query>,
}

/// A window table-valued function as a query wrote it:
/// `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '10' SECOND))` (or `HOP` with a slide and a
/// size, `CUMULATE` with a step and a maximum size). sqlparser cannot parse the `TABLE t` and
/// `DESCRIPTOR(ts)` arguments, so [`parse_script`] replaces the whole call by a table name of
/// its own ([`WindowTvf::name`]) before parsing, and the planner reads that table as `t` with
/// the window columns added.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowTvf {
    /// The name the call was replaced by (`__window_1`, ...).
    pub name: String,
    pub kind: WindowKind,
    /// The table or view the windows are over.
    pub table: String,
    /// The time column (`DESCRIPTOR(ts)`).
    pub time_column: String,
    /// Window size (TUMBLE, HOP) or maximum size (CUMULATE), in milliseconds.
    pub size_ms: i64,
    /// HOP's slide or CUMULATE's step, in milliseconds; the size for TUMBLE.
    pub step_ms: i64,
    pub at: Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Tumble,
    Hop,
    Cumulate,
}

/// Parses a whole script: statements separated by `;` (the last one may go without), and the
/// window table-valued functions its queries call.
pub fn parse_script(text: &str, origin: &str) -> Result<Vec<Located<Statement>>, SqlError> {
    parse_script_with_windows(text, origin).map(|(s, _)| s)
}

/// [`parse_script`], with the window functions the script's queries call.
pub fn parse_script_with_windows(text: &str, origin: &str) -> Result<(Vec<Located<Statement>>, Vec<WindowTvf>), SqlError> {
    let dialect = GenericDialect {};
    let start = Location::new(1, 1);
    let tokens = Tokenizer::new(&dialect, text).tokenize_with_location().map_err(|e| SqlError::parser(origin, e.into(), start))?;
    let (tokens, windows) = rewrite_window_tvfs(tokens).map_err(|(at, m)| SqlError::new(origin, Some(at), m))?;
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let next = parser.peek_token();
        if next.token == Token::EOF {
            break;
        }
        let at = next.span.start;
        let item = parse_statement(&mut parser).map_err(|e| SqlError::parser(origin, e, at))?;
        statements.push(Located { at, item });
        let end = parser.peek_token();
        if !matches!(end.token, Token::SemiColon | Token::EOF) {
            return Err(SqlError::new(origin, Some(end.span.start), format!("expected ';' after the statement, found {}", end.token)));
        }
    }
    Ok((statements, windows))
}

/// Replaces every `TABLE(TUMBLE|HOP|CUMULATE(TABLE t, DESCRIPTOR(c), INTERVAL ..., ...))` by
/// one word token, `__window_<n>`, at the location of its `TABLE`.
fn rewrite_window_tvfs(tokens: Vec<TokenWithSpan>) -> Result<(Vec<TokenWithSpan>, Vec<WindowTvf>), (Location, String)> {
    // The call is matched on the tokens the parser looks at (not whitespace or comments);
    // everything else is kept as it was.
    let all = tokens;
    let positions: Vec<usize> = (0..all.len()).filter(|&j| !matches!(all[j].token, Token::Whitespace(_))).collect();
    let tokens: Vec<TokenWithSpan> = positions.iter().map(|&j| all[j].clone()).collect();
    let mut out = Vec::with_capacity(all.len());
    let mut windows = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < tokens.len() {
        let is_word = |j: usize, w: &str| matches!(tokens.get(j).map(|t| &t.token), Some(Token::Word(x)) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
        let kind = if is_word(i + 2, "TUMBLE") {
            Some(WindowKind::Tumble)
        } else if is_word(i + 2, "HOP") {
            Some(WindowKind::Hop)
        } else if is_word(i + 2, "CUMULATE") {
            Some(WindowKind::Cumulate)
        } else {
            None
        };
        let opens = is_word(i, "TABLE")
            && tokens.get(i + 1).is_some_and(|t| t.token == Token::LParen)
            && tokens.get(i + 3).is_some_and(|t| t.token == Token::LParen);
        let Some(kind) = kind.filter(|_| opens) else {
            i += 1;
            continue;
        };
        let at = tokens[i].span.start;
        let mut cursor = TvfCursor { tokens: &tokens, at: i + 4 };
        let what = match kind {
            WindowKind::Tumble => "TUMBLE(TABLE t, DESCRIPTOR(time_column), INTERVAL size)",
            WindowKind::Hop => "HOP(TABLE t, DESCRIPTOR(time_column), INTERVAL slide, INTERVAL size)",
            WindowKind::Cumulate => "CUMULATE(TABLE t, DESCRIPTOR(time_column), INTERVAL step, INTERVAL max_size)",
        };
        let bad = |loc: Location, found: &str| (loc, format!("expected {what}, found {found}"));
        cursor.word("TABLE").map_err(|(l, f)| bad(l, &f))?;
        let table = cursor.ident().map_err(|(l, f)| bad(l, &f))?;
        cursor.token(&Token::Comma).map_err(|(l, f)| bad(l, &f))?;
        cursor.word("DESCRIPTOR").map_err(|(l, f)| bad(l, &f))?;
        cursor.token(&Token::LParen).map_err(|(l, f)| bad(l, &f))?;
        let time_column = cursor.ident().map_err(|(l, f)| bad(l, &f))?;
        cursor.token(&Token::RParen).map_err(|(l, f)| bad(l, &f))?;
        cursor.token(&Token::Comma).map_err(|(l, f)| bad(l, &f))?;
        let first = cursor.interval()?;
        let (size_ms, step_ms) = if kind == WindowKind::Tumble {
            (first, first)
        } else {
            cursor.token(&Token::Comma).map_err(|(l, f)| bad(l, &f))?;
            let second = cursor.interval()?;
            (second, first)
        };
        cursor.token(&Token::RParen).map_err(|(l, f)| bad(l, &f))?;
        cursor.token(&Token::RParen).map_err(|(l, f)| bad(l, &f))?;
        if step_ms <= 0 || size_ms <= 0 || size_ms % step_ms != 0 {
            return Err((at, format!("{what}: the size must be a positive multiple of the slide or step")));
        }
        let name = format!("__window_{}", windows.len() + 1);
        windows.push(WindowTvf { name: name.clone(), kind, table, time_column, size_ms, step_ms, at });
        out.extend_from_slice(&all[copied..positions[i]]);
        let mut word = tokens[i].clone();
        word.token = Token::make_word(&name, None);
        out.push(word);
        copied = positions[cursor.at - 1] + 1;
        i = cursor.at;
    }
    out.extend_from_slice(&all[copied..]);
    Ok((out, windows))
}

/// Reads the arguments of a window function, token by token.
struct TvfCursor<'a> {
    tokens: &'a [TokenWithSpan],
    at: usize,
}

impl TvfCursor<'_> {
    fn next(&mut self) -> Result<&TokenWithSpan, (Location, String)> {
        let t = self.tokens.get(self.at).ok_or((Location::new(0, 0), "the end of the script".to_string()))?;
        self.at += 1;
        Ok(t)
    }

    fn word(&mut self, w: &str) -> Result<(), (Location, String)> {
        let t = self.next()?;
        match &t.token {
            Token::Word(x) if x.value.eq_ignore_ascii_case(w) => Ok(()),
            other => Err((t.span.start, other.to_string())),
        }
    }

    fn token(&mut self, want: &Token) -> Result<(), (Location, String)> {
        let t = self.next()?;
        if &t.token == want {
            Ok(())
        } else {
            Err((t.span.start, t.token.to_string()))
        }
    }

    fn ident(&mut self) -> Result<String, (Location, String)> {
        let t = self.next()?;
        match &t.token {
            Token::Word(x) => Ok(x.value.clone()),
            other => Err((t.span.start, other.to_string())),
        }
    }

    /// `INTERVAL '10' SECOND` (or SECONDS, MINUTE(S), HOUR(S), DAY(S), MILLISECOND(S)), in
    /// milliseconds.
    fn interval(&mut self) -> Result<i64, (Location, String)> {
        let start = self.tokens.get(self.at).map(|t| t.span.start).unwrap_or(Location::new(0, 0));
        let bad = |m: String| (start, m);
        self.word("INTERVAL").map_err(|(l, f)| (l, format!("expected INTERVAL '<n>' <unit>, found {f}")))?;
        let t = self.next()?;
        let n: i64 = match &t.token {
            Token::SingleQuotedString(v) | Token::Number(v, _) => {
                v.trim().parse().map_err(|_| bad(format!("'{v}' is not a whole number")))?
            }
            other => return Err((t.span.start, format!("expected the interval's number in quotes, found {other}"))),
        };
        let unit = self.ident()?.to_ascii_uppercase();
        let ms = match unit.trim_end_matches('S') {
            "MILLISECOND" => 1,
            "SECOND" => 1_000,
            "MINUTE" => 60_000,
            "HOUR" => 3_600_000,
            "DAY" => 86_400_000,
            _ => return Err(bad(format!("unsupported interval unit {unit} (SECOND, MINUTE, HOUR, DAY or MILLISECOND)"))),
        };
        n.checked_mul(ms).ok_or_else(|| bad("the interval is too long".into()))
    }
}

/// Whether the next token is the (unreserved) word `word`.
fn peek_word(parser: &Parser, word: &str) -> bool {
    matches!(&parser.peek_token_ref().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn parse_statement(parser: &mut Parser) -> Result<Statement, ParserError> {
    if parser.parse_keyword(Keyword::SET) {
        let key = parse_config_word(parser)?;
        parser.expect_token(&Token::Eq)?;
        let value = parse_config_word(parser)?;
        return Ok(Statement::Set { key, value });
    }
    if parser.parse_keyword(Keyword::RESET) {
        let key = match parser.peek_token().token {
            Token::SemiColon | Token::EOF => None,
            _ => Some(parse_config_word(parser)?),
        };
        return Ok(Statement::Reset { key });
    }
    if parser.parse_keyword(Keyword::CREATE) {
        let temporary = parser.parse_keyword(Keyword::TEMPORARY);
        if parser.parse_keyword(Keyword::TABLE) {
            return parse_create_table(parser).map(Statement::CreateTable);
        }
        if parser.parse_keyword(Keyword::VIEW) {
            let _ = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = parse_name(parser)?;
            parser.expect_keyword_is(Keyword::AS)?;
            return Ok(Statement::CreateView { name, query: parser.parse_query()? });
        }
        let what = if temporary { "TABLE or VIEW after CREATE TEMPORARY" } else { "TABLE or VIEW after CREATE" };
        return parser.expected(what, parser.peek_token());
    }
    if parser.peek_keyword(Keyword::INSERT) {
        return parse_insert(parser).map(Statement::Insert);
    }
    if parser.parse_keywords(&[Keyword::EXECUTE, Keyword::STATEMENT, Keyword::SET]) {
        parser.expect_keyword_is(Keyword::BEGIN)?;
        return parse_statement_set_body(parser);
    }
    if parser.parse_keywords(&[Keyword::BEGIN, Keyword::STATEMENT, Keyword::SET]) {
        return parse_statement_set_body(parser);
    }
    if parser.parse_keywords(&[Keyword::SHOW, Keyword::TABLES]) {
        return Ok(Statement::ShowTables);
    }
    if parser.parse_keyword(Keyword::DESCRIBE) || parser.parse_keyword(Keyword::DESC) {
        return Ok(Statement::Describe(parse_name(parser)?));
    }
    if parser.parse_keyword(Keyword::EXPLAIN) {
        let _ = parser.parse_keywords(&[Keyword::PLAN, Keyword::FOR]);
        let at = parser.peek_token().span.start;
        let inner = parse_statement(parser)?;
        if !matches!(inner, Statement::Insert(_) | Statement::Query(_) | Statement::StatementSet(_)) {
            return Err(ParserError::ParserError(format!(
                "EXPLAIN explains a query, an INSERT or a statement set at Line: {}, Column: {}",
                at.line, at.column
            )));
        }
        return Ok(Statement::Explain(Box::new(Located { at, item: inner })));
    }
    if parser.peek_keyword(Keyword::SELECT) || parser.peek_keyword(Keyword::WITH) || parser.peek_token().token == Token::LParen {
        return Ok(Statement::Query(parser.parse_query()?));
    }
    let found = parser.peek_token();
    Err(ParserError::ParserError(format!(
        "unsupported statement starting with {}: Weir runs SET, RESET, CREATE TABLE, CREATE VIEW, INSERT INTO, \
         EXECUTE STATEMENT SET, SELECT, SHOW TABLES, DESCRIBE and EXPLAIN at Line: {}, Column: {}",
        found.token, found.span.start.line, found.span.start.column
    )))
}

/// A SET key or value: quoted as Flink writes them (`'execution.checkpointing.interval'`), or
/// a bare word or number.
fn parse_config_word(parser: &mut Parser) -> Result<String, ParserError> {
    let token = parser.next_token();
    match token.token {
        Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => Ok(s),
        Token::Number(n, _) => Ok(n),
        Token::Word(w) => {
            // An unquoted dotted key: `SET execution.checkpointing.interval = 10s` is not Flink's
            // syntax, but common; take words and dots up to the '='.
            let mut text = w.value;
            while parser.consume_token(&Token::Period) {
                match parser.next_token().token {
                    Token::Word(w) => {
                        text.push('.');
                        text.push_str(&w.value);
                    }
                    other => return Err(ParserError::ParserError(format!("expected a word after '.', found {other}"))),
                }
            }
            Ok(text)
        }
        _ => parser.expected("a quoted key or value ('...')", token),
    }
}

/// A table or view name: one identifier, or a dotted path whose last part is the name
/// (Weir has one catalog and one database).
fn parse_name(parser: &mut Parser) -> Result<String, ParserError> {
    let name = parser.parse_object_name(false)?;
    Ok(name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()).unwrap_or_default())
}

fn parse_create_table(parser: &mut Parser) -> Result<TableDdl, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parse_name(parser)?;
    parser.expect_token(&Token::LParen)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    let mut primary_key = None;
    loop {
        let at = parser.peek_token().span.start;
        if peek_word(parser, "WATERMARK") {
            parser.next_token();
            parser.expect_keyword_is(Keyword::FOR)?;
            let column = parser.parse_identifier()?.value;
            parser.expect_keyword_is(Keyword::AS)?;
            let expr = parser.parse_expr()?;
            if watermark.is_some() {
                return Err(located(at, "a table has at most one WATERMARK"));
            }
            watermark = Some(WatermarkDdl { column, expr, at });
        } else if parser.parse_keyword(Keyword::CONSTRAINT) || parser.peek_keywords_primary() {
            if !parser.peek_keywords_primary() {
                parser.parse_identifier()?;
            }
            parser.expect_keyword_is(Keyword::PRIMARY)?;
            parser.expect_keyword_is(Keyword::KEY)?;
            let cols = parser.parse_parenthesized_column_list(IsOptional::Mandatory, false)?;
            parse_not_enforced(parser)?;
            primary_key = Some(cols.into_iter().map(|i| i.value).collect());
        } else {
            let name = parser.parse_identifier()?.value;
            if parser.parse_keyword(Keyword::AS) {
                let expr = parser.parse_expr()?;
                skip_comment(parser)?;
                columns.push(ColumnDdl::Computed { name, expr, at });
            } else {
                let ty = parser.parse_data_type()?;
                let mut not_null = false;
                loop {
                    if parser.parse_keywords(&[Keyword::NOT, Keyword::NULL]) {
                        not_null = true;
                    } else if parser.parse_keyword(Keyword::NULL) {
                        not_null = false;
                    } else if parser.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
                        parse_not_enforced(parser)?;
                        primary_key = Some(vec![name.clone()]);
                    } else if parser.parse_keyword(Keyword::METADATA) {
                        return Err(located(at, "METADATA columns are not supported"));
                    } else if !skip_comment(parser)? {
                        break;
                    }
                }
                columns.push(ColumnDdl::Physical { name, ty, not_null, at });
            }
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    skip_comment(parser)?;
    if parser.parse_keywords(&[Keyword::PARTITIONED, Keyword::BY]) {
        let at = parser.peek_token().span.start;
        return Err(located(at, "PARTITIONED BY is not supported"));
    }
    let mut options = Vec::new();
    if parser.parse_keyword(Keyword::WITH) {
        parser.expect_token(&Token::LParen)?;
        if !parser.consume_token(&Token::RParen) {
            loop {
                let at = parser.peek_token().span.start;
                let key = parser.parse_literal_string()?;
                parser.expect_token(&Token::Eq)?;
                let value = parser.parse_literal_string()?;
                options.push((key, value, at));
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            parser.expect_token(&Token::RParen)?;
        }
    }
    if parser.peek_keyword(Keyword::LIKE) {
        let at = parser.peek_token().span.start;
        return Err(located(at, "CREATE TABLE ... LIKE is not supported"));
    }
    Ok(TableDdl { name, if_not_exists, columns, watermark, primary_key, options })
}

/// Flink requires `NOT ENFORCED` after a primary key (it cannot check it); so does Weir.
fn parse_not_enforced(parser: &mut Parser) -> Result<(), ParserError> {
    if parser.parse_keywords(&[Keyword::NOT, Keyword::ENFORCED]) {
        return Ok(());
    }
    let at = parser.peek_token().span.start;
    Err(located(at, "a PRIMARY KEY must be declared NOT ENFORCED (Weir does not check it, as Flink does not)"))
}

/// Skips `COMMENT '...'`; whether there was one.
fn skip_comment(parser: &mut Parser) -> Result<bool, ParserError> {
    if parser.parse_keyword(Keyword::COMMENT) {
        parser.parse_literal_string()?;
        return Ok(true);
    }
    Ok(false)
}

fn parse_insert(parser: &mut Parser) -> Result<Insert, ParserError> {
    parser.expect_keyword_is(Keyword::INSERT)?;
    if parser.peek_keyword(Keyword::OVERWRITE) {
        let at = parser.peek_token().span.start;
        return Err(located(at, "INSERT OVERWRITE is not supported: a streaming sink only appends or upserts"));
    }
    parser.expect_keyword_is(Keyword::INTO)?;
    let table_at = parser.peek_token().span.start;
    let table = parse_name(parser)?;
    let mut columns = Vec::new();
    if parser.peek_token().token == Token::LParen && !starts_query_in_parens(parser) {
        columns = parser.parse_parenthesized_column_list(IsOptional::Mandatory, false)?.into_iter().map(|i| i.value).collect();
    }
    Ok(Insert { table, table_at, columns, query: parser.parse_query()? })
}

/// After `INSERT INTO t`, a `(` starts a column list unless a query follows it
/// (`INSERT INTO t (SELECT ...)`).
fn starts_query_in_parens(parser: &Parser) -> bool {
    let (_, next) = (parser.peek_token(), parser.peek_nth_token(1));
    matches!(&next.token, Token::Word(w) if w.keyword == Keyword::SELECT || w.keyword == Keyword::WITH)
}

fn parse_statement_set_body(parser: &mut Parser) -> Result<Statement, ParserError> {
    let mut inserts = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.parse_keyword(Keyword::END) {
            break;
        }
        let at = parser.peek_token().span.start;
        if !parser.peek_keyword(Keyword::INSERT) {
            return parser.expected("INSERT INTO or END in a statement set", parser.peek_token());
        }
        inserts.push(Located { at, item: parse_insert(parser)? });
    }
    if inserts.is_empty() {
        return Err(ParserError::ParserError("a statement set needs at least one INSERT".into()));
    }
    Ok(Statement::StatementSet(inserts))
}

/// A parser error that points at `at`.
fn located(at: Location, message: &str) -> ParserError {
    ParserError::ParserError(format!("{message} at Line: {}, Column: {}", at.line, at.column))
}

/// `PRIMARY KEY` ahead, without consuming it.
trait PeekPrimary {
    fn peek_keywords_primary(&self) -> bool;
}

impl PeekPrimary for Parser<'_> {
    fn peek_keywords_primary(&self) -> bool {
        self.peek_keyword(Keyword::PRIMARY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flink_script_parses_statement_by_statement() {
        let text = "SET 'execution.checkpointing.interval' = '10s';\n\
            CREATE TABLE orders (\n  id BIGINT,\n  price DOUBLE NOT NULL,\n  ts TIMESTAMP(3),\n  total AS price * 2,\n  \
            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND,\n  PRIMARY KEY (id) NOT ENFORCED\n) WITH ('connector' = 'datagen', 'rows-per-second' = '5');\n\
            CREATE VIEW big AS SELECT * FROM orders WHERE price > 10;\n\
            INSERT INTO sink SELECT id, total FROM big;\n\
            EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1; INSERT INTO b (x) SELECT 2; END;\n\
            RESET 'execution.checkpointing.interval'\n";
        let s = parse_script(text, "t.sql").unwrap();
        assert_eq!(s.len(), 6);
        assert!(matches!(&s[0].item, Statement::Set { key, value } if key == "execution.checkpointing.interval" && value == "10s"));
        let Statement::CreateTable(t) = &s[1].item else { panic!("table expected") };
        assert_eq!(t.name, "orders");
        assert_eq!(t.columns.len(), 4);
        assert!(matches!(&t.columns[1], ColumnDdl::Physical { not_null: true, .. }));
        assert!(matches!(&t.columns[3], ColumnDdl::Computed { name, .. } if name == "total"));
        assert_eq!(t.watermark.as_ref().unwrap().column, "ts");
        assert_eq!(t.primary_key.as_deref(), Some(&["id".to_string()][..]));
        assert_eq!(t.options[1].0, "rows-per-second");
        assert!(matches!(&s[2].item, Statement::CreateView { name, .. } if name == "big"));
        assert!(matches!(&s[3].item, Statement::Insert(i) if i.table == "sink"));
        let Statement::StatementSet(set) = &s[4].item else { panic!("statement set expected") };
        assert_eq!(set[1].item.columns, vec!["x".to_string()]);
        assert!(matches!(&s[5].item, Statement::Reset { key: Some(_) }));
        assert_eq!((s[3].at.line, s[3].at.column), (11, 1));
    }

    #[test]
    fn window_functions_become_tables_of_their_own() {
        let text =
            "INSERT INTO s SELECT window_start, COUNT(*) FROM TABLE(\n  TUMBLE(TABLE bids, DESCRIPTOR(bidtime), INTERVAL '10' MINUTES))\n\
                    GROUP BY window_start, window_end;\n\
                    SELECT * FROM TABLE(HOP(TABLE t, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND)) AS w";
        let (s, w) = parse_script_with_windows(text, "t.sql").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].kind, w[0].table.as_str(), w[0].time_column.as_str(), w[0].size_ms, w[0].step_ms),
            (WindowKind::Tumble, "bids", "bidtime", 600_000, 600_000)
        );
        assert_eq!((w[1].kind, w[1].size_ms, w[1].step_ms), (WindowKind::Hop, 10_000, 5_000));
        assert_eq!((w[0].at.line, w[0].at.column), (1, 50));
        let Statement::Insert(i) = &s[0].item else { panic!("insert expected") };
        assert!(i.query.to_string().contains("FROM __window_1"), "{}", i.query);
        let e = parse_script_with_windows("SELECT * FROM TABLE(TUMBLE(TABLE t, ts, INTERVAL '1' SECOND))", "t.sql").unwrap_err();
        assert!(e.message.contains("expected TUMBLE(TABLE t, DESCRIPTOR(time_column), INTERVAL size), found ts"), "{e}");
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse_script("SET 'a' = 'b';\nCREATE TABLE t (a BIGINT, PRIMARY KEY (a)) WITH ();", "j.sql").unwrap_err();
        assert_eq!(e.at, Some((2, 42)), "{e}");
        assert!(e.message.contains("NOT ENFORCED"), "{e}");
        let e = parse_script("SELECT 1;\nDROP TABLE t", "j.sql").unwrap_err();
        assert_eq!(e.at, Some((2, 1)), "{e}");
        assert!(e.message.contains("unsupported statement"), "{e}");
        let e = parse_script("SELECT a FROM", "j.sql").unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(1), "{e}");
    }
}
