//! The writer's connection ([`WriterConn`]) and its transactions
//! ([`WriterTx`]): `tokio-postgres` on a current-thread runtime of the
//! writer's own, so a round's statements can be pipelined. A statement
//! whose result the round needs runs at once ([`WriterTx::query`],
//! [`WriterTx::execute`]); one whose result it does not need is sent and
//! left to answer later ([`WriterTx::defer`]), so it travels with the
//! next statement that is waited for, or with the `COMMIT`. A round of
//! one event is then one round trip to the server instead of six (the new
//! deliveries' insert reads their numbers from the rows the numbering
//! updated; an idempotency key's lock and record are taken and read, and
//! the lock let go, outside the round), and one with outcomes three: each
//! round trip also costs the engine thread a sleep and a wake-up, which on
//! a small machine is most of its time per delivery.
//!
//! Errors keep their order: a statement waited for first waits for every
//! statement sent before it, and reports the first error among them (a
//! later statement of a failed transaction only says that the
//! transaction is aborted). A statement the client could not even send
//! (its parameters would not encode) fails the call that sends it, and
//! the transaction is then rolled back, never committed without it.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::error::Result;
use crate::storage::postgres::connection::{Params, Stmts, tokio_config};
use crate::storage::postgres::rows::store_error;

/// What a statement sent answers: rows if it was asked for them
/// ([`WriterTx::ask`]).
type Answer = std::result::Result<Option<Vec<Row>>, tokio_postgres::Error>;

/// A statement sent and not yet waited for.
type Pending<'a> = Pin<Box<dyn Future<Output = Answer> + 'a>>;

/// The rows of a statement sent with [`WriterTx::ask`], once answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::storage::postgres) struct Ticket(usize);

/// Rows of asked statements, by ticket (taken once each).
#[derive(Debug, Default)]
pub(in crate::storage::postgres) struct Answers(std::collections::HashMap<Ticket, Vec<Row>>);

impl Answers {
    /// The rows `t` asked for; `None` if it has none (taken already, or
    /// never answered), which is not the same as no rows.
    pub(in crate::storage::postgres) fn take(&mut self, t: Ticket) -> Option<Vec<Row>> {
        self.0.remove(&t)
    }
}

/// Parameters a deferred statement owns until it is answered.
pub(in crate::storage::postgres) type Owned = Vec<Box<dyn ToSql + Sync + Send>>;

/// The writer's connection: a `tokio-postgres` client on a runtime of its
/// own (current-thread: the connection makes progress only while the
/// writer waits for an answer, on the writer's thread).
pub(in crate::storage::postgres) struct WriterConn {
    /// Taken only by `Drop`.
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    stmts: Stmts,
}

impl Drop for WriterConn {
    /// Without waiting for the runtime's tasks (the connection's): a
    /// runtime dropped inside an async context would panic otherwise.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl WriterConn {
    /// Connects to `url` with hookbus's timeouts and runs `settings` (the
    /// session's). Must not run on a thread that drives an async runtime
    /// (see `off_runtime`).
    pub(in crate::storage::postgres) fn open(url: &str, settings: &str) -> Result<WriterConn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let config = tokio_config(url)?;
        let client = rt.block_on(async {
            let (client, connection) = config.connect(NoTls).await?;
            // Runs while the writer waits (a current-thread runtime); ends
            // when the connection closes (then `is_closed` says so).
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "the writer's PostgreSQL connection ended");
                }
            });
            client.batch_execute(settings).await?;
            Ok::<_, tokio_postgres::Error>(client)
        })?;
        Ok(WriterConn {
            rt: Some(rt),
            client,
            stmts: Stmts::default(),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime is taken only by drop")
    }

    pub(in crate::storage::postgres) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Runs statements as one message, unprepared and without parameters.
    pub(in crate::storage::postgres) fn batch_execute(&mut self, sql: &str) -> Result<()> {
        Ok(self.rt().block_on(self.client.batch_execute(sql))?)
    }

    pub(in crate::storage::postgres) fn query_one(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Row> {
        let st = self.statement(sql)?;
        Ok(self.rt().block_on(self.client.query_one(&st, params))?)
    }

    pub(in crate::storage::postgres) fn execute(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64> {
        let st = self.statement(sql)?;
        Ok(self.rt().block_on(self.client.execute(&st, params))?)
    }

    /// `sql` as prepared on this connection (prepared now if new).
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        let (rt, client) = (self.rt.as_ref().expect("taken only by drop"), &self.client);
        self.stmts
            .get_with(sql, || Ok(rt.block_on(client.prepare(sql))?))
    }

    /// Begins a transaction; `durable`: it commits synchronously
    /// (whatever the session's `synchronous_commit`). The `BEGIN` is sent
    /// with the transaction's first statement.
    pub(in crate::storage::postgres) fn transaction(
        &mut self,
        durable: bool,
    ) -> Result<WriterTx<'_>> {
        let WriterConn { rt, client, stmts } = self;
        let rt = rt.as_ref().expect("the runtime is taken only by drop");
        let mut tx = WriterTx {
            rt,
            client,
            stmts,
            pending: Vec::new(),
            answers: Answers::default(),
            tickets: 0,
            open: true,
        };
        let begin = if durable {
            "BEGIN; SET LOCAL synchronous_commit TO on"
        } else {
            "BEGIN"
        };
        let client: &Client = tx.client;
        tx.send(
            None,
            Box::pin(async move { client.batch_execute(begin).await.map(|()| None) }),
        )?;
        Ok(tx)
    }

    /// Forgets the prepared statements: each is prepared afresh when next
    /// used.
    pub(in crate::storage::postgres) fn forget_statements(&mut self) {
        self.stmts = Stmts::default();
    }
}

/// A transaction on the [`WriterConn`]; rolled back unless committed.
pub(in crate::storage::postgres) struct WriterTx<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a Client,
    stmts: &'a mut Stmts,
    /// Sent, in the order sent, not yet answered (with the ticket of
    /// those asked for rows).
    pending: Vec<(Option<Ticket>, Pending<'a>)>,
    /// Rows of asked statements answered so far.
    answers: Answers,
    /// Tickets given.
    tickets: usize,
    /// Neither committed nor rolled back yet.
    open: bool,
}

impl Drop for WriterTx<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.open) {
            // The answers of what was sent are dropped as they come.
            self.pending.clear();
            if let Err(e) = self.rt.block_on(self.client.batch_execute("ROLLBACK")) {
                tracing::debug!(error = %e, "could not roll back the writer's transaction (a lost connection rolls it back)");
            }
        }
    }
}

impl<'a> WriterTx<'a> {
    /// Polls `f` once, which sends its request (`tokio-postgres` queues a
    /// request on its first poll; the connection writes it out the next
    /// time the runtime runs), and keeps it to be waited for in order.
    /// Fails if it could not be sent at all (its parameters did not
    /// encode, the connection is closed): nothing reached the server, so
    /// the transaction there would go on without it; the caller's error
    /// drops this transaction, which rolls it back.
    fn send(&mut self, ticket: Option<Ticket>, mut f: Pending<'a>) -> Result<()> {
        let done = self.rt.block_on(poll_once(f.as_mut()));
        match done {
            Some(Err(e)) => return Err(e.into()),
            // Answered without the server: cannot be, but kept in order.
            Some(Ok(rows)) => self
                .pending
                .push((ticket, Box::pin(async move { Ok(rows) }))),
            None => self.pending.push((ticket, f)),
        }
        Ok(())
    }

    /// Waits for every statement sent so far; the first error, if any.
    fn settle(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let failed = self.rt.block_on(answer_all(pending, &mut self.answers));
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// `sql` as prepared on the connection. A statement not prepared yet
    /// first waits for what is pending: the server refuses to prepare
    /// anything in a transaction a pending statement made fail, and the
    /// error to report is that statement's.
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if !self.stmts.has(sql) {
            self.settle()?;
        }
        let (rt, client) = (self.rt, self.client);
        self.stmts
            .get_with(sql, || Ok(rt.block_on(client.prepare(sql))?))
    }

    /// Runs a statement and waits for its rows (and for every statement
    /// sent before it).
    pub(in crate::storage::postgres) fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>> {
        let st = self.statement(sql)?;
        let client = self.client;
        self.behind(client.query(&st, params))
    }

    /// Runs a statement and waits for its count of rows (and for every
    /// statement sent before it).
    pub(in crate::storage::postgres) fn execute(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64> {
        let st = self.statement(sql)?;
        let client = self.client;
        self.behind(client.execute(&st, params))
    }

    /// Sends `own` behind what is pending, then waits for all in order:
    /// the first error among them, or `own`'s result.
    fn behind<T>(
        &mut self,
        own: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let pending = std::mem::take(&mut self.pending);
        let answers = &mut self.answers;
        self.rt
            .block_on(async move {
                let mut own = std::pin::pin!(own);
                let early = poll_once(own.as_mut()).await;
                let failed = answer_all(pending, answers).await;
                let own = match early {
                    Some(r) => r,
                    None => own.await,
                };
                match failed {
                    Some(e) => Err(e),
                    None => own,
                }
            })
            .map_err(Into::into)
    }

    /// Sends a statement whose result the round does not need; it is
    /// answered with the next statement waited for, or the commit, which
    /// report its error.
    pub(in crate::storage::postgres) fn defer(&mut self, sql: &str, params: Owned) -> Result<()> {
        let st = self.statement(sql)?;
        let client = self.client;
        self.send(
            None,
            Box::pin(async move {
                client
                    .execute_raw(&st, params.iter().map(|p| &**p as &(dyn ToSql + Sync)))
                    .await
                    .map(|_| None)
            }),
        )
    }

    /// Sends a statement whose rows the round needs later: they are
    /// answered with the next statement waited for, or the commit
    /// ([`rows`](Self::rows), [`Answers::take`]).
    pub(in crate::storage::postgres) fn ask(&mut self, sql: &str, params: Owned) -> Result<Ticket> {
        let st = self.statement(sql)?;
        let client = self.client;
        let ticket = Ticket(self.tickets);
        self.tickets += 1;
        self.send(
            Some(ticket),
            Box::pin(async move {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                client.query(&st, &refs).await.map(Some)
            }),
        )?;
        Ok(ticket)
    }

    /// The rows `t` asked for, waiting for them (and for every statement
    /// sent before) if they have not come yet.
    pub(in crate::storage::postgres) fn rows(&mut self, t: Ticket) -> Result<Vec<Row>> {
        if self.pending.iter().any(|(p, _)| *p == Some(t)) {
            self.settle()?;
        }
        self.answers
            .take(t)
            .ok_or_else(|| store_error("a pipelined statement's answer is missing"))
    }

    /// Commits: the `COMMIT` goes with whatever is still unanswered. If
    /// a statement before it failed on the server, the server rolled back
    /// instead (every statement after a failed one fails too), and that
    /// statement's error is returned. Returns the rows asked for and not
    /// taken yet.
    pub(in crate::storage::postgres) fn commit(mut self) -> Result<Answers> {
        let client = self.client;
        self.send(
            None,
            Box::pin(async move { client.batch_execute("COMMIT").await.map(|()| None) }),
        )?;
        // Ended either way: a `COMMIT` in a failed transaction rolls it
        // back, and one that failed leaves none open.
        self.open = false;
        self.settle()?;
        Ok(std::mem::take(&mut self.answers))
    }
}

/// Polls `f` once: its output if that was enough, else `None` (a
/// `tokio-postgres` request is queued by its first poll).
async fn poll_once<F: Future + ?Sized>(mut f: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match f.as_mut().poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    })
    .await
}

/// Waits for each of `pending` in order, keeping the rows of those asked
/// for in `answers`; the first error among them.
async fn answer_all(
    pending: Vec<(Option<Ticket>, Pending<'_>)>,
    answers: &mut Answers,
) -> Option<tokio_postgres::Error> {
    let mut first = None;
    for (ticket, f) in pending {
        match f.await {
            Ok(rows) => {
                if let (Some(t), Some(rows)) = (ticket, rows) {
                    answers.0.insert(t, rows);
                }
            }
            Err(e) => {
                if first.is_none() {
                    first = Some(e);
                }
            }
        }
    }
    first
}
