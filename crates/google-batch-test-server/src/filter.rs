//! The subset of the Google list filter language both APIs here accept: terms `FIELD OP VALUE`
//! joined by `AND`, where `FIELD` is a dotted path whose parts may be quoted
//! (`labels."job_uid"`), `OP` one of `=`, `!=`, `<`, `<=`, `>`, `>=`, `:`, and `VALUE` a
//! double-quoted string (with `\"` and `\\` escapes) or a bare word. Which fields and operators
//! mean something is up to each API; `OR`, `NOT` and parentheses are refused here.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        })
    }
}

impl Op {
    /// Whether `ordering` (of the entry's value against the filter's) satisfies the operator;
    /// `:` (has) counts as `=` for the scalar fields served here.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq | Op::Has => ordering == Equal,
            Op::Ne => ordering != Equal,
            Op::Lt => ordering == Less,
            Op::Le => ordering != Greater,
            Op::Gt => ordering == Greater,
            Op::Ge => ordering != Less,
        }
    }
}

/// One `FIELD OP VALUE`, the field's quotes removed: `labels."a.b"` is `labels.a.b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub field: String,
    pub op: Op,
    pub value: String,
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"{}\"", self.field, self.op, self.value)
    }
}

/// The terms of `filter`; an empty or blank filter has none.
pub fn parse(filter: &str) -> Result<Vec<Term>, String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut at = 0;
    let mut terms = Vec::new();
    let skip_ws = |at: &mut usize| {
        while *at < chars.len() && chars[*at].is_whitespace() {
            *at += 1;
        }
    };
    skip_ws(&mut at);
    if at == chars.len() {
        return Ok(terms);
    }
    loop {
        let start = at;
        let field = field(&chars, &mut at)?;
        if field.is_empty() {
            let rest: String = chars[start..].iter().collect();
            return Err(format!(
                "expected a field at `{rest}`: this test server accepts terms FIELD=\"VALUE\" joined by AND, without OR, NOT or parentheses"
            ));
        }
        skip_ws(&mut at);
        let op = op(&chars, &mut at)
            .ok_or_else(|| format!("expected an operator (=, !=, <, <=, >, >=, :) after `{field}`"))?;
        skip_ws(&mut at);
        let value = value(&chars, &mut at)?;
        terms.push(Term { field, op, value });
        skip_ws(&mut at);
        if at == chars.len() {
            return Ok(terms);
        }
        let word: String = chars[at..].iter().take_while(|c| !c.is_whitespace()).collect();
        if word != "AND" {
            return Err(format!(
                "expected AND between terms, found `{word}`: this test server accepts only conjunctions"
            ));
        }
        at += 3;
        skip_ws(&mut at);
        if at == chars.len() {
            return Err("the filter ends with AND".into());
        }
    }
}

fn field(chars: &[char], at: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    while *at < chars.len() {
        let c = chars[*at];
        if c == '"' {
            *at += 1;
            out.push_str(&quoted(chars, at)?);
        } else if c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '/') {
            out.push(c);
            *at += 1;
        } else {
            break;
        }
    }
    Ok(out)
}

fn op(chars: &[char], at: &mut usize) -> Option<Op> {
    let two: String = chars[*at..].iter().take(2).collect();
    let (op, len) = match two.as_str() {
        ">=" => (Op::Ge, 2),
        "<=" => (Op::Le, 2),
        "!=" => (Op::Ne, 2),
        _ => match chars.get(*at)? {
            '=' => (Op::Eq, 1),
            '<' => (Op::Lt, 1),
            '>' => (Op::Gt, 1),
            ':' => (Op::Has, 1),
            _ => return None,
        },
    };
    *at += len;
    Some(op)
}

fn value(chars: &[char], at: &mut usize) -> Result<String, String> {
    if chars.get(*at) == Some(&'"') {
        *at += 1;
        return quoted(chars, at);
    }
    let mut out = String::new();
    while *at < chars.len() && !chars[*at].is_whitespace() {
        if matches!(chars[*at], '(' | ')') {
            return Err("parentheses are not supported by this test server".into());
        }
        out.push(chars[*at]);
        *at += 1;
    }
    if out.is_empty() {
        return Err("expected a value at the end of the filter".into());
    }
    Ok(out)
}

/// The rest of a string whose opening quote has been read, up to its closing quote.
fn quoted(chars: &[char], at: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    while *at < chars.len() {
        let c = chars[*at];
        *at += 1;
        match c {
            '"' => return Ok(out),
            '\\' if *at < chars.len() => {
                out.push(chars[*at]);
                *at += 1;
            }
            _ => out.push(c),
        }
    }
    Err(format!("unterminated string \"{out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(field: &str, op: Op, value: &str) -> Term {
        Term {
            field: field.into(),
            op,
            value: value.into(),
        }
    }

    #[test]
    fn conjunctions_parse_with_quoted_fields_and_values() {
        let terms = parse(
            r#"logName="projects/p/logs/batch_task_logs" AND labels."job_uid"="u-1" AND timestamp>="2024-01-01T00:00:00Z" AND labels.x = y"#,
        )
        .unwrap();
        assert_eq!(
            terms,
            [
                t("logName", Op::Eq, "projects/p/logs/batch_task_logs"),
                t("labels.job_uid", Op::Eq, "u-1"),
                t("timestamp", Op::Ge, "2024-01-01T00:00:00Z"),
                t("labels.x", Op::Eq, "y"),
            ]
        );
        assert_eq!(
            parse(r#"a="say \"hi\"""#).unwrap(),
            [t("a", Op::Eq, "say \"hi\"")]
        );
        assert!(parse("  ").unwrap().is_empty());
    }

    #[test]
    fn what_is_not_a_conjunction_is_refused() {
        for bad in [
            r#"a="1" OR b="2""#,
            r#"a="1" b="2""#,
            r#"(a="1")"#,
            r#"a="1" AND"#,
            r#"a="1"#,
            r#"a"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
