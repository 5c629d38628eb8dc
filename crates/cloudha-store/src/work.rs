//! The HA work store: `ha_work` (one row per item; `version` is the claim version, bumped by
//! every write and checked with the owner by every update) and `ha_work_history` (append-only).

use std::collections::HashMap;

use cloudha_ports::{HaWorkStore, OwnerId, StoreError, Timestamp, WorkEvent, WorkItem};
use cloudha_protocol::{HostId, VmId, WorkId, WorkStep};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::codec::{
    db, flag, get, get_bool, get_enum, get_opt_u64, get_time, get_u64, int, name_of, opt_time,
    proof_from_json, proof_to_json, time,
};
use crate::{Backend, SqlStore};

const WORK_COLUMNS: &str = "id, vm_id, work_type, step, host_id, previous_state, update_count, \
     tries, time_to_try, reason, owner, taken, version, braked, fence_proof, start_attempts, \
     start_unknown";

/// VM ids per statement when lifting the brake (SQLite allows 32766 parameters, PostgreSQL
/// 65535).
const VMS_PER_STATEMENT: usize = 1000;

const ELIGIBLE: &str = "owner IS NULL AND is_final = 0 AND braked = 0";

/// An item without its history.
fn item_from_row(row: &AnyRow) -> Result<WorkItem, StoreError> {
    let vm = VmId(get_u64(row, "vm_id")?);
    let mut item = WorkItem::new(
        get_enum(row, "work_type")?,
        get_enum(row, "step")?,
        get_enum(row, "reason")?,
        &cloudha_ports::VmRecord::new(vm, String::new(), cloudha_protocol::HypervisorType::Kvm),
        get_opt_u64(row, "host_id")?.map(HostId),
        get_time(row, "time_to_try")?,
    );
    item.id = WorkId(get_u64(row, "id")?);
    item.previous_state = get_enum(row, "previous_state")?;
    item.update_count = get_u64(row, "update_count")?;
    item.tries = u32::try_from(get_u64(row, "tries")?)
        .map_err(|_| crate::codec::bad("tries", "does not fit a u32"))?;
    item.owner = get_opt_u64(row, "owner")?.map(OwnerId);
    item.taken = get_opt_u64(row, "taken")?.map(Timestamp::from_micros);
    item.version = get_u64(row, "version")?;
    item.braked = get_bool(row, "braked")?;
    let proof: Option<String> = get(row, "fence_proof")?;
    item.fence_proof = proof.as_deref().map(proof_from_json).transpose()?;
    item.start_attempts = u32::try_from(get_u64(row, "start_attempts")?)
        .map_err(|_| crate::codec::bad("start_attempts", "does not fit a u32"))?;
    item.start_unknown = get_bool(row, "start_unknown")?;
    item.history.clear();
    Ok(item)
}

/// Reads the history of `items` (all of them in one query) into them.
async fn with_history(
    exec: impl sqlx::Executor<'_, Database = Any>,
    mut items: Vec<WorkItem>,
    all: bool,
) -> Result<Vec<WorkItem>, StoreError> {
    if items.is_empty() {
        return Ok(items);
    }
    let rows = if all {
        sqlx::query("SELECT work_id, at, what FROM ha_work_history ORDER BY work_id, seq")
            .fetch_all(exec)
            .await
    } else {
        let ids: Vec<String> = (1..=items.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT work_id, at, what FROM ha_work_history WHERE work_id IN ({}) ORDER BY work_id, seq",
            ids.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for item in &items {
            q = q.bind(int(item.id.0, "id")?);
        }
        q.fetch_all(exec).await
    }
    .map_err(db("reading work history"))?;
    let index: HashMap<WorkId, usize> = items.iter().enumerate().map(|(i, w)| (w.id, i)).collect();
    for row in &rows {
        let id = WorkId(get_u64(row, "work_id")?);
        if let Some(&i) = index.get(&id) {
            items[i].history.push(WorkEvent::new(
                get_time(row, "at")?,
                get::<String>(row, "what")?,
            ));
        }
    }
    Ok(items)
}

/// Appends `events` to the history of `id`, numbered from `first`.
async fn append_history(
    tx: &mut Transaction<'_, Any>,
    id: WorkId,
    first: usize,
    events: &[WorkEvent],
) -> Result<(), StoreError> {
    for (seq, e) in (first..).zip(events) {
        sqlx::query("INSERT INTO ha_work_history (work_id, seq, at, what) VALUES ($1, $2, $3, $4)")
            .bind(int(id.0, "id")?)
            .bind(int(seq as u64, "seq")?)
            .bind(time(e.at)?)
            .bind(e.what.clone())
            .execute(&mut **tx)
            .await
            .map_err(db("appending work history"))?;
    }
    Ok(())
}

async fn history_len(tx: &mut Transaction<'_, Any>, id: WorkId) -> Result<usize, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ha_work_history WHERE work_id = $1")
        .bind(int(id.0, "id")?)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("reading work history"))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

impl SqlStore {
    /// Writes `item` if `writer` holds it at its version, with the events of its history the
    /// store lacks (by position: the history is append-only), as one command to the database:
    /// one statement on PostgreSQL; on SQLite one transaction sent whole (see
    /// [`SqlStore::raw_transaction`]). Whether it was written.
    async fn write_whole(&self, writer: OwnerId, item: &WorkItem) -> Result<bool, StoreError> {
        let what = "updating a work item";
        let events: Vec<String> = (0..item.history.len())
            .map(|i| {
                let p = 20 + 3 * i;
                match self.backend {
                    Backend::Sqlite => format!("(${p}, ${}, ${})", p + 1, p + 2),
                    Backend::Postgres => {
                        format!("(${p}::BIGINT, ${}::BIGINT, ${}::TEXT)", p + 1, p + 2)
                    }
                }
            })
            .collect();
        let guard = "WHERE id = $17 AND owner = $18 AND version = $19";
        let sql = match self.backend {
            Backend::Sqlite => {
                let mut sql = format!(
                    "BEGIN IMMEDIATE; UPDATE ha_work SET {SET_COLUMNS} {guard}; \
                     SELECT changes() AS written; "
                );
                if !events.is_empty() {
                    // Only after the guarded write (`changes()` is its row count).
                    sql.push_str(&format!(
                        "INSERT INTO ha_work_history (work_id, seq, at, what) \
                         SELECT $17, column1, column2, column3 FROM (VALUES {}) \
                         WHERE changes() = 1 ON CONFLICT (work_id, seq) DO NOTHING; ",
                        events.join(", ")
                    ));
                }
                sql.push_str("COMMIT");
                sql
            }
            Backend::Postgres => {
                let mut sql =
                    format!("WITH w AS (UPDATE ha_work SET {SET_COLUMNS} {guard} RETURNING id)");
                if !events.is_empty() {
                    sql.push_str(&format!(
                        ", h AS (INSERT INTO ha_work_history (work_id, seq, at, what) \
                         SELECT w.id, v.seq, v.at, v.what FROM w CROSS JOIN (VALUES {}) \
                         AS v(seq, at, what) ON CONFLICT (work_id, seq) DO NOTHING)",
                        events.join(", ")
                    ));
                }
                sql.push_str(" SELECT COUNT(*) AS written FROM w");
                sql
            }
        };
        let mut q = bind_row(sqlx::query(&sql), item)?
            .bind(int(writer.0, "owner")?)
            .bind(int(item.version, "version")?);
        for (seq, e) in item.history.iter().enumerate() {
            q = q
                .bind(int(seq as u64, "seq")?)
                .bind(time(e.at)?)
                .bind(e.what.clone());
        }
        match self.backend {
            Backend::Sqlite => {
                let rows = self.raw_transaction(q).await.map_err(db(what))?;
                let row = rows
                    .first()
                    .ok_or_else(|| crate::codec::bad("written", "no row"))?;
                Ok(get::<i64>(row, "written")? > 0)
            }
            Backend::Postgres => {
                let row = q.fetch_one(&self.pool).await.map_err(db(what))?;
                Ok(get::<i64>(&row, "written")? > 0)
            }
        }
    }

    /// [`Self::write_whole`] for a history too long for one statement: a transaction of
    /// several.
    async fn write_in_steps(&self, writer: OwnerId, item: &WorkItem) -> Result<bool, StoreError> {
        let what = "updating a work item";
        let mut tx = self.begin().await.map_err(db(what))?;
        if write_row(&mut tx, item, Some(writer)).await? == 0 {
            return Ok(false);
        }
        let stored = history_len(&mut tx, item.id).await?;
        let new = item.history.get(stored..).unwrap_or_default();
        append_history(&mut tx, item.id, stored, new).await?;
        tx.commit().await.map_err(db(what))?;
        Ok(true)
    }

    async fn items_where(
        &self,
        condition: &str,
        bind: Option<i64>,
    ) -> Result<Vec<WorkItem>, StoreError> {
        let sql = format!("SELECT {WORK_COLUMNS} FROM ha_work {condition} ORDER BY id");
        let mut q = sqlx::query(&sql);
        if let Some(v) = bind {
            q = q.bind(v);
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading work items"))?;
        let items = rows
            .iter()
            .map(item_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let all = condition.is_empty();
        with_history(&self.pool, items, all).await
    }

    /// Changes the items each `pick` selects (a `WHERE` clause over `ha_work`, parameters from
    /// `$1`, with its binds) through `f`, each write bumping its version, in one transaction.
    /// On PostgreSQL the rows are locked as they are read (`FOR UPDATE`): a row another manager
    /// claims meanwhile is read again after its claim and left out if no longer picked, never
    /// written back from the older read.
    async fn change_all(
        &self,
        what: &'static str,
        picks: Vec<(String, Vec<i64>)>,
        mut f: impl FnMut(&mut WorkItem) + Send,
    ) -> Result<usize, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let mut tx = self.begin().await.map_err(db(what))?;
        let mut changed = 0;
        for (pick, binds) in picks {
            let sql = format!("SELECT {WORK_COLUMNS} FROM ha_work WHERE {pick} ORDER BY id{lock}");
            let mut q = sqlx::query(&sql);
            for b in &binds {
                q = q.bind(*b);
            }
            let rows = q.fetch_all(&mut *tx).await.map_err(db(what))?;
            let items = rows
                .iter()
                .map(item_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            for mut item in items {
                // Loaded without its history: whatever `f` notes is new.
                f(&mut item);
                write_row(&mut tx, &item, None).await?;
                let stored = history_len(&mut tx, item.id).await?;
                append_history(&mut tx, item.id, stored, &item.history).await?;
                changed += 1;
            }
        }
        tx.commit().await.map_err(db(what))?;
        Ok(changed)
    }
}

/// The columns of `ha_work` a write sets, from `$1` to `$16` (`bind_row` binds them, and the
/// item's id as `$17`).
const SET_COLUMNS: &str = "step = $1, is_final = $2, host_id = $3, previous_state = $4, \
     update_count = $5, tries = $6, time_to_try = $7, reason = $8, owner = $9, taken = $10, \
     version = version + 1, braked = $11, fence_proof = $12, work_type = $13, vm_id = $14, \
     start_attempts = $15, start_unknown = $16";

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// Binds `$1` to `$17` of a write of `item` (see [`SET_COLUMNS`]).
fn bind_row<'q>(q: AnyQuery<'q>, item: &WorkItem) -> Result<AnyQuery<'q>, StoreError> {
    Ok(q.bind(name_of(&item.step))
        .bind(flag(item.step.is_final()))
        .bind(item.host.map(|h| int(h.0, "host_id")).transpose()?)
        .bind(name_of(&item.previous_state))
        .bind(int(item.update_count, "update_count")?)
        .bind(i64::from(item.tries))
        .bind(time(item.time_to_try)?)
        .bind(name_of(&item.reason))
        .bind(item.owner.map(|o| int(o.0, "owner")).transpose()?)
        .bind(opt_time(item.taken)?)
        .bind(flag(item.braked))
        .bind(item.fence_proof.as_ref().map(proof_to_json))
        .bind(name_of(&item.work_type))
        .bind(int(item.vm.0, "vm_id")?)
        .bind(i64::from(item.start_attempts))
        .bind(flag(item.start_unknown))
        .bind(int(item.id.0, "id")?))
}

/// Events per write of a whole history in one statement (3 parameters each).
const EVENTS_PER_STATEMENT: usize = 1000;

/// The history of the item of each row of a statement over `ha_work`, as one JSON text column
/// `history_json` (`[[at, what], …]`, in order).
fn history_column(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "(SELECT json_group_array(json_array(at, what)) FROM \
             (SELECT at, what FROM ha_work_history WHERE work_id = ha_work.id ORDER BY seq)) \
             AS history_json"
        }
        Backend::Postgres => {
            "(SELECT COALESCE(json_agg(json_build_array(at, what) ORDER BY seq), '[]'::json)::text \
             FROM ha_work_history WHERE work_id = ha_work.id) AS history_json"
        }
    }
}

/// The history of [`history_column`].
fn history_from_json(row: &AnyRow) -> Result<Vec<WorkEvent>, StoreError> {
    let text: String = get(row, "history_json")?;
    let events: Vec<(i64, String)> = serde_json::from_str(&text)
        .map_err(|e| crate::codec::bad("history_json", e.to_string()))?;
    events
        .into_iter()
        .map(|(at, what)| {
            let at = u64::try_from(at).map_err(|_| crate::codec::bad("at", "negative"))?;
            Ok(WorkEvent::new(Timestamp::from_micros(at), what))
        })
        .collect()
}

/// Writes every column of `item` with `version + 1`; with `check`, only if the row is held by
/// that owner at the item's version. Returns the rows written (0 or 1).
async fn write_row(
    tx: &mut Transaction<'_, Any>,
    item: &WorkItem,
    check: Option<OwnerId>,
) -> Result<u64, StoreError> {
    let mut sql = format!("UPDATE ha_work SET {SET_COLUMNS} WHERE id = $17");
    if check.is_some() {
        sql.push_str(" AND owner = $18 AND version = $19");
    }
    let mut q = bind_row(sqlx::query(&sql), item)?;
    if let Some(owner) = check {
        q = q
            .bind(int(owner.0, "owner")?)
            .bind(int(item.version, "version")?);
    }
    let done = q
        .execute(&mut **tx)
        .await
        .map_err(db("writing a work item"))?;
    Ok(done.rows_affected())
}

#[async_trait::async_trait]
impl HaWorkStore for SqlStore {
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError> {
        self.named(async {
            let what = "inserting a work item";
            let mut tx = self.begin().await.map_err(db(what))?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO ha_work (vm_id, work_type, step, is_final, host_id, previous_state, \
                 update_count, tries, time_to_try, reason, owner, taken, version, braked, fence_proof, \
                 start_attempts, start_unknown) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14, $15, $16) \
                 RETURNING id",
            )
            .bind(int(item.vm.0, "vm_id")?)
            .bind(name_of(&item.work_type))
            .bind(name_of(&item.step))
            .bind(flag(item.step.is_final()))
            .bind(item.host.map(|h| int(h.0, "host_id")).transpose()?)
            .bind(name_of(&item.previous_state))
            .bind(int(item.update_count, "update_count")?)
            .bind(i64::from(item.tries))
            .bind(time(item.time_to_try)?)
            .bind(name_of(&item.reason))
            .bind(item.owner.map(|o| int(o.0, "owner")).transpose()?)
            .bind(opt_time(item.taken)?)
            .bind(flag(item.braked))
            .bind(item.fence_proof.as_ref().map(proof_to_json))
            .bind(i64::from(item.start_attempts))
            .bind(flag(item.start_unknown))
            .fetch_one(&mut *tx)
            .await
            .map_err(db(what))?;
            let id = WorkId(u64::try_from(id).map_err(|_| crate::codec::bad("id", "negative"))?);
            append_history(&mut tx, id, 0, &item.history).await?;
            tx.commit().await.map_err(db(what))?;
            Ok(id)
        }
        .await)
    }

    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        // One statement, the item's history with it: on SQLite the one connection is the
        // single writer; on PostgreSQL the first eligible row is locked and rows other
        // claimers hold are skipped.
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let history = history_column(self.backend);
        let sql = format!(
            "UPDATE ha_work SET owner = $1, taken = $2, version = version + 1 \
             WHERE id = (SELECT id FROM ha_work WHERE {ELIGIBLE} AND time_to_try <= $2 \
             ORDER BY time_to_try, id LIMIT 1{lock}) RETURNING {WORK_COLUMNS}, {history}"
        );
        let row = self.named(
            async {
                sqlx::query(&sql)
                    .bind(int(owner.0, "owner")?)
                    .bind(time(now)?)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("claiming a work item"))
            }
            .await,
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut item = self.named(item_from_row(&row))?;
        item.history = self.named(history_from_json(&row))?;
        Ok(Some(item))
    }

    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        self.named(
            async {
                let what = "updating a work item";
                let written = if item.history.len() <= EVENTS_PER_STATEMENT {
                    self.write_whole(writer, item).await?
                } else {
                    self.write_in_steps(writer, item).await?
                };
                if written {
                    return Ok(item.version + 1);
                }
                let row = sqlx::query("SELECT owner, version FROM ha_work WHERE id = $1")
                    .bind(int(item.id.0, "id")?)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db(what))?;
                let Some(row) = row else {
                    return Err(StoreError::UnknownWork(item.id));
                };
                Err(StoreError::Stale {
                    work: item.id,
                    writer,
                    version: item.version,
                    holder: get_opt_u64(&row, "owner")?.map(OwnerId),
                    current: get_u64(&row, "version")?,
                })
            }
            .await,
        )
    }

    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError> {
        self.named(
            async {
                Ok(self
                    .items_where("WHERE id = $1", Some(int(id.0, "id")?))
                    .await?
                    .pop())
            }
            .await,
        )
    }

    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError> {
        self.named(
            async {
                self.items_where("WHERE vm_id = $1", Some(int(vm.0, "vm_id")?))
                    .await
            }
            .await,
        )
    }

    async fn list(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.named(self.items_where("", None).await)
    }

    async fn pending(&self) -> Result<usize, StoreError> {
        self.named(
            async {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ha_work WHERE is_final = 0")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("counting pending work"))?;
                Ok(usize::try_from(n).unwrap_or(0))
            }
            .await,
        )
    }

    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError> {
        self.named(
            async {
                let done = sqlx::query(
                    "UPDATE ha_work SET owner = NULL, taken = NULL, version = version + 1 \
                 WHERE owner = $1 AND is_final = 0",
                )
                .bind(int(owner.0, "owner")?)
                .execute(&self.pool)
                .await
                .map_err(db("releasing claims"))?;
                Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
            }
            .await,
        )
    }

    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.named(
            async {
                self.change_all(
                    "moving pending work back to Investigating",
                    vec![("owner IS NULL AND is_final = 0".to_owned(), Vec::new())],
                    |i| {
                        if i.step != WorkStep::Investigating {
                            i.note(
                                now,
                                format!("manager start: step {:?} -> Investigating", i.step),
                            );
                            i.step = WorkStep::Investigating;
                        }
                    },
                )
                .await
            }
            .await,
        )
    }

    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError> {
        self.named(
            async {
                // One statement per chunk of VMs (the databases limit the parameters of a statement),
                // all in one transaction.
                let mut binds = vms
                    .iter()
                    .map(|v| int(v.0, "vm_id"))
                    .collect::<Result<Vec<_>, _>>()?;
                binds.sort_unstable();
                binds.dedup();
                if binds.is_empty() {
                    return Ok(0);
                }
                let picks = binds
                    .chunks(VMS_PER_STATEMENT)
                    .map(|chunk| {
                        let ids: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                        (
                            format!("braked = 1 AND vm_id IN ({})", ids.join(", ")),
                            chunk.to_vec(),
                        )
                    })
                    .collect();
                self.change_all("lifting the brake", picks, |i| {
                    i.braked = false;
                    i.time_to_try = now;
                    i.note(now, "brake lifted");
                })
                .await
            }
            .await,
        )
    }

    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.named(
            async {
                let what = "cleaning up work";
                let mut tx = self.begin().await.map_err(db(what))?;
                sqlx::query(
                    "DELETE FROM ha_work_history WHERE work_id IN \
                 (SELECT id FROM ha_work WHERE is_final = 1 AND time_to_try <= $1)",
                )
                .bind(time(cutoff)?)
                .execute(&mut *tx)
                .await
                .map_err(db(what))?;
                let done =
                    sqlx::query("DELETE FROM ha_work WHERE is_final = 1 AND time_to_try <= $1")
                        .bind(time(cutoff)?)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(what))?;
                tx.commit().await.map_err(db(what))?;
                Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
            }
            .await,
        )
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.named(
            async {
                let at: Option<i64> = sqlx::query_scalar(&format!(
                    "SELECT MIN(time_to_try) FROM ha_work WHERE {ELIGIBLE}"
                ))
                .fetch_one(&self.pool)
                .await
                .map_err(db("reading the next due time"))?;
                at.map(|t| {
                    u64::try_from(t)
                        .map(Timestamp::from_micros)
                        .map_err(|_| crate::codec::bad("time_to_try", "negative"))
                })
                .transpose()
            }
            .await,
        )
    }
}
