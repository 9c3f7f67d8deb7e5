//! The drivers a transactional publish writes through: the blocking
//! `postgres` client, and (features `tokio-postgres` and `sqlx`) the async
//! ones. Each one only runs a statement with a few kinds of arguments and
//! reads a few kinds of columns ([`Tx`]), so the fan-out and idempotency
//! rules of `publish_in.rs` are written once for all of them.
//!
//! The seam's items are `pub` so that the public, sealed
//! `AsyncTransaction` can have [`Tx`] as its supertrait; no path outside
//! the crate reaches them.
#![allow(unreachable_pub)]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use crate::error::Result;

/// An argument of a statement.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// `bytea`.
    Bytes(&'a [u8]),
    /// `text`.
    Text(&'a str),
    /// `text`, or `NULL`.
    OptText(Option<&'a str>),
    /// `bigint`.
    Int(i64),
}

/// The kind of a column read back.
#[derive(Debug, Clone, Copy)]
pub enum Col {
    /// `bytea`.
    Bytes,
    /// `text`, or `NULL`.
    OptText,
    /// `boolean`.
    Bool,
    /// `bigint`.
    Int,
}

/// A column's value, of the kind asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `bytea`.
    Bytes(Vec<u8>),
    /// `text`, or `NULL`.
    OptText(Option<String>),
    /// `boolean`.
    Bool(bool),
    /// `bigint`.
    Int(i64),
}

/// A transaction that statements run in. Sealed: implemented here for the
/// drivers hookbus supports (see `AsyncTransaction`).
pub trait Tx: Send {
    /// Runs a statement.
    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = Result<()>> + Send;

    /// Runs a query and reads `cols` of each row.
    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        cols: &[Col],
    ) -> impl Future<Output = Result<Vec<Vec<Value>>>> + Send;
}

/// The value of a future that never waits (one that only calls the blocking
/// client), without a runtime; `None` if it would have waited.
pub(crate) fn now<T>(f: impl Future<Output = T>) -> Option<T> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// The arguments as the `postgres` and `tokio-postgres` clients take them.
fn params<'a>(args: &'a [Arg<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|a| -> &(dyn postgres::types::ToSql + Sync) {
            match a {
                Arg::Bytes(b) => b,
                Arg::Text(t) => t,
                Arg::OptText(t) => t,
                Arg::Int(i) => i,
            }
        })
        .collect()
}

/// The columns `cols` of `row`, as `Result<Vec<Value>>`: one rule for
/// every driver's row type (each has its own `try_get(index)`).
macro_rules! values {
    ($row:expr, $cols:expr) => {
        $cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(match c {
                    Col::Bytes => Value::Bytes($row.try_get(i)?),
                    Col::OptText => Value::OptText($row.try_get(i)?),
                    Col::Bool => Value::Bool($row.try_get(i)?),
                    Col::Int => Value::Int($row.try_get(i)?),
                })
            })
            .collect::<Result<Vec<Value>>>()
    };
}

/// The columns of a `postgres`/`tokio-postgres` row.
fn values(row: &postgres::Row, cols: &[Col]) -> Result<Vec<Value>> {
    values!(row, cols)
}

/// The blocking client: each statement runs when it is called, and its
/// future is ready at once (see [`now`]).
impl Tx for postgres::Transaction<'_> {
    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> impl Future<Output = Result<()>> + Send {
        let done = self.execute(sql, &params(args)).map(drop);
        std::future::ready(done.map_err(Into::into))
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        cols: &[Col],
    ) -> impl Future<Output = Result<Vec<Vec<Value>>>> + Send {
        let rows = self
            .query(sql, &params(args))
            .map_err(Into::into)
            .and_then(|rows| rows.iter().map(|r| values(r, cols)).collect());
        std::future::ready(rows)
    }
}

#[cfg(feature = "tokio-postgres")]
impl Tx for tokio_postgres::Transaction<'_> {
    async fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<()> {
        self.execute(sql, &params(args)).await?;
        Ok(())
    }

    async fn rows(&mut self, sql: &str, args: &[Arg<'_>], cols: &[Col]) -> Result<Vec<Vec<Value>>> {
        let rows = self.query(sql, &params(args)).await?;
        rows.iter().map(|r| values(r, cols)).collect()
    }
}

#[cfg(feature = "sqlx")]
mod with_sqlx {
    use super::{Arg, Col, Tx, Value};
    use crate::error::Result;
    use sqlx::Row;
    use sqlx::postgres::{PgArguments, Postgres};
    use sqlx::query::Query;

    fn bound<'q>(sql: &'q str, args: &[Arg<'q>]) -> Query<'q, Postgres, PgArguments> {
        args.iter().fold(sqlx::query(sql), |q, a| match *a {
            Arg::Bytes(b) => q.bind(b),
            Arg::Text(t) => q.bind(t),
            Arg::OptText(t) => q.bind(t),
            Arg::Int(i) => q.bind(i),
        })
    }

    impl Tx for sqlx::Transaction<'_, Postgres> {
        async fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<()> {
            bound(sql, args).execute(&mut **self).await?;
            Ok(())
        }

        async fn rows(
            &mut self,
            sql: &str,
            args: &[Arg<'_>],
            cols: &[Col],
        ) -> Result<Vec<Vec<Value>>> {
            let rows = bound(sql, args).fetch_all(&mut **self).await?;
            rows.iter().map(|row| values!(row, cols)).collect()
        }
    }
}
