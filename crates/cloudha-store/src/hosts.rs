//! The host store: `hosts`, and `host_status_history` appended with every status change.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use cloudha_ports::{HostRecord, HostStore, StoreError, Timestamp};
use cloudha_protocol::{ClusterId, Event, HostId, PodId, ResourceState, Status};
use sqlx::any::AnyRow;

use crate::SqlStore;
use crate::codec::{
    db, flag, get, get_bool, get_enum, get_opt_enum, get_opt_time, get_opt_u64, get_u64, int,
    name_of, opt_time, time,
};

/// Host pings written per statement (two parameters each).
const PINGS_PER_STATEMENT: usize = 500;

fn host_from_row(row: &AnyRow) -> Result<HostRecord, StoreError> {
    let mut h = HostRecord::new(
        HostId(get_u64(row, "id")?),
        get::<String>(row, "name")?,
        get_enum(row, "hypervisor")?,
    );
    h.host_type = get_enum(row, "host_type")?;
    h.cluster = get_opt_u64(row, "cluster_id")?.map(ClusterId);
    h.pod = get_opt_u64(row, "pod_id")?.map(PodId);
    h.zone = get_opt_u64(row, "zone_id")?.map(cloudha_protocol::ZoneId);
    h.status = get_opt_enum(row, "status")?;
    h.resource_state = get_enum(row, "resource_state")?;
    h.last_ping = get_opt_time(row, "last_ping")?;
    h.disconnected_on = get_opt_time(row, "disconnected_on")?;
    h.connected_at = get_opt_time(row, "connected_at")?;
    h.update_count = get_u64(row, "update_count")?;
    let tags: String = get(row, "tags")?;
    h.tags = serde_json::from_str(&tags)
        .map_err(|e| crate::codec::bad("tags", format!("not a JSON list of strings: {e}")))?;
    h.self_fence_independent = get_bool(row, "self_fence_independent")?;
    Ok(h)
}

const HOST_COLUMNS: &str = "id, name, host_type, hypervisor, cluster_id, pod_id, zone_id, status, \
     resource_state, last_ping, disconnected_on, connected_at, update_count, tags, \
     self_fence_independent";

/// Host statuses written per batch (one statement each way; nine parameters per status).
const STATUSES_PER_BATCH: usize = 500;

/// One status write waiting in [`StatusQueue`].
pub(crate) struct StatusWrite {
    id: HostId,
    expected: Option<Status>,
    update_count: u64,
    to: Status,
    event: Event,
    now: Timestamp,
    reply: tokio::sync::oneshot::Sender<Result<HostRecord, StoreError>>,
}

/// Status writes waiting to be written together (group commit): when many hosts change at
/// once (a rack loses power, the management network flaps), one transaction writes up to
/// [`STATUSES_PER_BATCH`] of them, each still its own compare-and-set with its own answer.
/// No task of its own: the call that finds no writer at work becomes the writer.
#[derive(Default)]
pub(crate) struct StatusQueue {
    pending: Mutex<VecDeque<StatusWrite>>,
    /// A call is writing batches.
    writing: AtomicBool,
    /// The writer stopped (done, or its call was dropped).
    idle: Notify,
}

impl std::fmt::Debug for StatusQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusQueue")
            .field("pending", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer's flag, cleared (and waiters woken) however its call ends.
struct Writer<'a>(&'a StatusQueue);

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.0.writing.store(false, Ordering::SeqCst);
        self.0.idle.notify_waiters();
    }
}

/// The next batch: the oldest writes, one per host (a later write of the same host waits for
/// the next batch, so it compares against the first one's result).
fn next_batch(queue: &StatusQueue) -> Vec<StatusWrite> {
    let mut pending = lock(&queue.pending);
    let mut batch = Vec::new();
    let mut hosts = std::collections::HashSet::new();
    let mut later = VecDeque::new();
    while let Some(w) = pending.pop_front() {
        if batch.len() < STATUSES_PER_BATCH && hosts.insert(w.id) {
            batch.push(w);
        } else {
            later.push_back(w);
        }
    }
    *pending = later;
    batch
}

/// Each write of `batch` gets its answer (a write the batch neither wrote nor found is of an
/// unknown host).
fn answer_all(
    batch: Vec<StatusWrite>,
    mut answers: HashMap<HostId, Result<HostRecord, StoreError>>,
) {
    for w in batch {
        let answer = answers
            .remove(&w.id)
            .unwrap_or(Err(StoreError::UnknownHost(w.id)));
        let _ = w.reply.send(answer);
    }
}

/// Each write of `batch` gets `e`.
fn fail_all(store: &SqlStore, batch: Vec<StatusWrite>, e: &StoreError) {
    let text = crate::error_text(e);
    for w in batch {
        let _ = w.reply.send(store.named(Err(StoreError::backend(
            "writing a host status",
            Batch(text.clone()),
        ))));
    }
}

/// Whether the database answered `e` about the statement itself (as opposed to a connection
/// or pool failure).
fn refused_statement(e: &StoreError) -> bool {
    match e {
        StoreError::Backend { source, .. } => source
            .downcast_ref::<sqlx::Error>()
            .is_some_and(|e| matches!(e, sqlx::Error::Database(_))),
        _ => false,
    }
}

/// A batch that failed, said to each of its writes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Batch(String);

impl SqlStore {
    /// Writes `batch` in one transaction: one guarded `UPDATE … FROM` for all, the history rows
    /// of those written, and a look-up telling a conflict from an unknown host for the others.
    /// Each write gets its own answer; a failure is every write's.
    async fn write_statuses(&self, batch: Vec<StatusWrite>) {
        // A write whose values the database cannot hold fails alone, before the batch.
        let (batch, bad): (Vec<_>, Vec<_>) = batch.into_iter().partition(|w| {
            int(w.id.0, "id").is_ok()
                && time(w.now).is_ok()
                && int(w.update_count.saturating_add(1), "update_count").is_ok()
        });
        for w in bad {
            let e = int(w.id.0, "id")
                .and(time(w.now))
                .and(int(w.update_count.saturating_add(1), "update_count"))
                .err()
                .unwrap_or(StoreError::UnknownHost(w.id));
            let _ = w.reply.send(self.named(Err(e)));
        }
        if batch.is_empty() {
            return;
        }
        match self.try_write_statuses(&batch).await {
            Ok(answers) => answer_all(batch, answers),
            // The database refused the statement (a value out of range, a lock waited on too
            // long, ...): it may be one write's doing, so each is written alone and gets its
            // own answer. A store that is away fails them all at once.
            Err(e) if batch.len() > 1 && refused_statement(&e) => {
                for w in batch {
                    match self.try_write_statuses(std::slice::from_ref(&w)).await {
                        Ok(answers) => answer_all(vec![w], answers),
                        Err(e) => fail_all(self, vec![w], &e),
                    }
                }
            }
            Err(e) => fail_all(self, batch, &e),
        }
    }

    async fn try_write_statuses(
        &self,
        batch: &[StatusWrite],
    ) -> Result<HashMap<HostId, Result<HostRecord, StoreError>>, StoreError> {
        let what = "writing host statuses";
        let mut rows = Vec::new();
        for (i, _) in batch.iter().enumerate() {
            let p = 9 * i;
            rows.push(format!(
                "(CAST(${} AS BIGINT), CAST(${} AS TEXT), CAST(${} AS BIGINT), CAST(${} AS BIGINT), \
                 CAST(${} AS BIGINT), CAST(${} AS BIGINT), CAST(${} AS BIGINT), CAST(${} AS TEXT), \
                 CAST(${} AS BIGINT))",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7,
                p + 8,
                p + 9
            ));
        }
        let returning: Vec<String> = HOST_COLUMNS
            .split(',')
            .map(|c| format!("hosts.{}", c.trim()))
            .collect();
        // What `HostRecord::apply_status` changes, decided from the event and the expected
        // status alone (the write only happens when the stored status is the expected one); a
        // last ping only moves forward, as in `set_last_pings`.
        let sql = format!(
            "WITH v (id, to_status, sets_ping, now, sets_connected, sets_disconnected, \
             update_count, expected, expected_none) AS (VALUES {}) \
             UPDATE hosts SET status = v.to_status, update_count = hosts.update_count + 1, \
             last_ping = CASE WHEN v.sets_ping = 1 AND (hosts.last_ping IS NULL OR \
             hosts.last_ping < v.now) THEN v.now ELSE hosts.last_ping END, \
             connected_at = CASE WHEN v.sets_connected = 1 THEN v.now ELSE hosts.connected_at END, \
             disconnected_on = CASE WHEN v.sets_disconnected = 1 THEN v.now \
             ELSE hosts.disconnected_on END \
             FROM v WHERE hosts.id = v.id AND hosts.update_count = v.update_count \
             AND (hosts.status = v.expected OR (hosts.status IS NULL AND v.expected_none = 1)) \
             RETURNING {}",
            rows.join(", "),
            returning.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for w in batch {
            let sets_ping = matches!(w.event, Event::Ping | Event::AgentConnected);
            let sets_connected = w.event == Event::AgentConnected;
            let sets_disconnected =
                w.to.lost_connection() && !w.expected.is_some_and(Status::lost_connection);
            q = q
                .bind(int(w.id.0, "id")?)
                .bind(name_of(&w.to))
                .bind(flag(sets_ping))
                .bind(time(w.now)?)
                .bind(flag(sets_connected))
                .bind(flag(sets_disconnected))
                .bind(int(w.update_count, "update_count")?)
                .bind(w.expected.as_ref().map(name_of).unwrap_or_default())
                .bind(flag(w.expected.is_none()));
        }
        let mut tx = self.begin().await.map_err(db(what))?;
        if self.backend == crate::Backend::Postgres {
            // A host row another session holds locked does not hold up the batch for long.
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *tx)
                .await
                .map_err(db(what))?;
        }
        let written = q.fetch_all(&mut *tx).await.map_err(db(what))?;
        let mut answers = HashMap::new();
        for row in &written {
            let h = host_from_row(row)?;
            answers.insert(h.id, Ok(h));
        }
        let done: Vec<&StatusWrite> = batch
            .iter()
            .filter(|w| answers.contains_key(&w.id))
            .collect();
        if !done.is_empty() {
            let values: Vec<String> = (0..done.len())
                .map(|i| {
                    let p = 6 * i;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO host_status_history (host_id, at, from_status, to_status, event, \
                 update_count) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for w in &done {
                q = q
                    .bind(int(w.id.0, "id")?)
                    .bind(time(w.now)?)
                    .bind(w.expected.as_ref().map(name_of))
                    .bind(name_of(&w.to))
                    .bind(name_of(&w.event))
                    .bind(int(w.update_count + 1, "update_count")?);
            }
            q.execute(&mut *tx).await.map_err(db(what))?;
        }
        let missed: Vec<&StatusWrite> = batch
            .iter()
            .filter(|w| !answers.contains_key(&w.id))
            .collect();
        if !missed.is_empty() {
            let ids: Vec<String> = (1..=missed.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT id FROM hosts WHERE id IN ({})", ids.join(", "));
            let mut q = sqlx::query(&sql);
            for w in &missed {
                q = q.bind(int(w.id.0, "id")?);
            }
            let known = q.fetch_all(&mut *tx).await.map_err(db(what))?;
            for row in &known {
                let id = HostId(get_u64(row, "id")?);
                if let Some(w) = missed.iter().find(|w| w.id == id) {
                    answers.insert(
                        id,
                        Err(StoreError::Conflict {
                            host: id,
                            expected: w.expected,
                            update_count: w.update_count,
                        }),
                    );
                }
            }
        }
        tx.commit().await.map_err(db(what))?;
        Ok(answers)
    }
}

#[async_trait::async_trait]
impl HostStore for SqlStore {
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError> {
        self.named(
            async {
                let row = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1"))
                    .bind(int(id.0, "id")?)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("reading a host"))?;
                row.as_ref().map(host_from_row).transpose()
            }
            .await,
        )
    }

    async fn list(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.named(
            async {
                let rows = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("listing hosts"))?;
                rows.iter().map(host_from_row).collect()
            }
            .await,
        )
    }

    async fn upsert(&self, h: &HostRecord) -> Result<(), StoreError> {
        self.named(async {
            sqlx::query(&format!(
                "INSERT INTO hosts ({HOST_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, host_type = excluded.host_type, \
                 hypervisor = excluded.hypervisor, cluster_id = excluded.cluster_id, \
                 pod_id = excluded.pod_id, zone_id = excluded.zone_id, status = excluded.status, \
                 resource_state = excluded.resource_state, last_ping = excluded.last_ping, \
                 disconnected_on = excluded.disconnected_on, connected_at = excluded.connected_at, \
                 update_count = excluded.update_count, tags = excluded.tags, \
                 self_fence_independent = excluded.self_fence_independent"
            ))
            .bind(int(h.id.0, "id")?)
            .bind(h.name.clone())
            .bind(name_of(&h.host_type))
            .bind(name_of(&h.hypervisor))
            .bind(h.cluster.map(|c| int(c.0, "cluster_id")).transpose()?)
            .bind(h.pod.map(|p| int(p.0, "pod_id")).transpose()?)
            .bind(h.zone.map(|z| int(z.0, "zone_id")).transpose()?)
            .bind(h.status.as_ref().map(name_of))
            .bind(name_of(&h.resource_state))
            .bind(opt_time(h.last_ping)?)
            .bind(opt_time(h.disconnected_on)?)
            .bind(opt_time(h.connected_at)?)
            .bind(int(h.update_count, "update_count")?)
            .bind(serde_json::to_string(&h.tags).unwrap_or_else(|_| "[]".into()))
            .bind(flag(h.self_fence_independent))
            .execute(&self.pool)
            .await
            .map_err(db("writing a host"))?;
            Ok(())
        }
        .await)
    }

    async fn update_status(
        &self,
        id: HostId,
        expected: Option<Status>,
        update_count: u64,
        to: Status,
        event: Event,
        now: Timestamp,
    ) -> Result<HostRecord, StoreError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        lock(&self.statuses.pending).push_back(StatusWrite {
            id,
            expected,
            update_count,
            to,
            event,
            now,
            reply,
        });
        loop {
            // Registered before the writer's flag is read: its end cannot be missed.
            let idle = self.statuses.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !self.statuses.writing.swap(true, Ordering::SeqCst) {
                // This call writes every status waiting (its own among them), a batch at a
                // time; the others wait for their answers.
                let _writer = Writer(&self.statuses);
                loop {
                    let batch = next_batch(&self.statuses);
                    if batch.is_empty() {
                        break;
                    }
                    self.write_statuses(batch).await;
                }
            }
            tokio::select! {
                biased;
                answer = &mut answer => {
                    return answer.unwrap_or_else(|_| {
                        self.named(Err(StoreError::backend(
                            "writing a host status",
                            Batch("the writer went away before the answer: the write may or may not have landed".into()),
                        )))
                    });
                }
                () = &mut idle => {}
            }
        }
    }

    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.named(
            async {
                let done = sqlx::query("UPDATE hosts SET resource_state = $1 WHERE id = $2")
                    .bind(name_of(&state))
                    .bind(int(id.0, "id")?)
                    .execute(&self.pool)
                    .await
                    .map_err(db("writing a host's resource state"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::UnknownHost(id));
                }
                Ok(())
            }
            .await,
        )
    }

    async fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) -> Result<(), StoreError> {
        self.named(async {
            // One newest time per host (a batch may name a host twice).
            let mut newest: HashMap<HostId, Timestamp> = HashMap::with_capacity(pings.len());
            for &(host, at) in pings {
                let t = newest.entry(host).or_insert(at);
                *t = (*t).max(at);
            }
            let mut pairs: Vec<(i64, i64)> = Vec::with_capacity(newest.len());
            for (host, at) in newest {
                pairs.push((int(host.0, "id")?, time(at)?));
            }
            pairs.sort_unstable();
            let what = "writing last pings";
            let mut tx = self.begin().await.map_err(db(what))?;
            for chunk in pairs.chunks(PINGS_PER_STATEMENT) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                    .collect();
                // Never back: a late batch leaves a newer stored time alone.
                let sql = format!(
                    "UPDATE hosts SET last_ping = v.column2 FROM (VALUES {}) AS v \
                     WHERE hosts.id = v.column1 AND (hosts.last_ping IS NULL OR hosts.last_ping < v.column2)",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for &(id, at) in chunk {
                    q = q.bind(id).bind(at);
                }
                q.execute(&mut *tx).await.map_err(db(what))?;
            }
            tx.commit().await.map_err(db(what))?;
            Ok(())
        }
        .await)
    }
}

impl SqlStore {
    /// The status history of `host`, oldest first: (when, from, to, event).
    ///
    /// # Errors
    /// The backend's.
    pub async fn status_history(
        &self,
        host: HostId,
    ) -> Result<Vec<(Timestamp, Option<Status>, Status, Event)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, from_status, to_status, event FROM host_status_history \
             WHERE host_id = $1 ORDER BY id",
        )
        .bind(int(host.0, "id")?)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a host's status history"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    crate::codec::get_time(r, "at")?,
                    get_opt_enum(r, "from_status")?,
                    get_enum(r, "to_status")?,
                    get_enum(r, "event")?,
                ))
            })
            .collect()
    }
}
