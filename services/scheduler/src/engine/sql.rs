//! Placeholder lists and statement sizing for the multi-row statements.

use sqlx::Any;

use crate::store::Dialect;

/// A statement whose text depends on how many rows it carries. Few rows: kept in the
/// connection's statement cache like any other (batches of a few events are the common case
/// when the load is light). Many: prepared for this one use, or each row count would take a place
/// in the cache (and memory) of its own and push out the statements used over and over.
pub(crate) fn sized(sql: &str, rows: usize) -> sqlx::query::Query<'_, Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(sql).persistent(rows <= 8)
}

/// One placeholder for the `n`th parameter (from 1) of a statement whose parameters are all
/// numbered in order. SQLite gets anonymous `?`s, numbered in order too: finding a `$N`'s
/// number is a linear search in SQLite, which made binding a statement of thousands of
/// parameters quadratic.
pub(crate) fn param(dialect: Dialect, n: usize, s: &mut String) {
    use std::fmt::Write;
    match dialect {
        Dialect::Sqlite => s.push('?'),
        Dialect::Postgres => {
            let _ = write!(s, "${n}");
        }
    }
}

/// A placeholder list for `rows` rows of `cols` columns, the statement's only parameters.
pub(crate) fn placeholders(dialect: Dialect, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * (cols * 4 + 3));
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            param(dialect, r * cols + c + 1, &mut s);
        }
        s.push(')');
    }
    s
}

/// A placeholder list of `n` values, the statement's only parameters.
pub(crate) fn in_list(dialect: Dialect, n: usize) -> String {
    let mut s = String::with_capacity(n * 4);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        param(dialect, i + 1, &mut s);
    }
    s
}
