//! The host store: `hosts`, and `host_status_history` appended with every status change.

use std::collections::HashMap;

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

#[async_trait::async_trait]
impl HostStore for SqlStore {
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError> {
        self.heal().await;
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
        self.heal().await;
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
        self.heal().await;
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
        self.heal().await;
        self.named(async {
            let what = "writing a host status";
            let conflict = StoreError::Conflict {
                host: id,
                expected,
                update_count,
            };
            // What `HostRecord::apply_status` changes, decided from the event and the expected
            // status alone (the write only happens when the stored status is the expected one).
            let sets_ping = matches!(event, Event::Ping | Event::AgentConnected);
            let sets_connected = event == Event::AgentConnected;
            let sets_disconnected =
                to.lost_connection() && !expected.is_some_and(Status::lost_connection);
            let mut tx = self.begin().await.map_err(db(what))?;
            // One guarded write, first in the transaction: the compare-and-set is the `WHERE`, so a
            // second handle on the same SQLite file waits for the write lock instead of failing to
            // upgrade a stale read, and a last ping written meanwhile by another connection is
            // never put back (the last ping only moves forward, as in `set_last_pings`).
            let row = sqlx::query(&format!(
                "UPDATE hosts SET status = $1, update_count = update_count + 1, \
                 last_ping = CASE WHEN $2 = 1 AND (last_ping IS NULL OR last_ping < $3) THEN $3 \
                 ELSE last_ping END, \
                 connected_at = CASE WHEN $4 = 1 THEN $3 ELSE connected_at END, \
                 disconnected_on = CASE WHEN $5 = 1 THEN $3 ELSE disconnected_on END \
                 WHERE id = $6 AND update_count = $7 AND (status = $8 OR (status IS NULL AND $9 = 1)) \
                 RETURNING {HOST_COLUMNS}"
            ))
            .bind(name_of(&to))
            .bind(flag(sets_ping))
            .bind(time(now)?)
            .bind(flag(sets_connected))
            .bind(flag(sets_disconnected))
            .bind(int(id.0, "id")?)
            .bind(int(update_count, "update_count")?)
            .bind(expected.as_ref().map(name_of).unwrap_or_default())
            .bind(flag(expected.is_none()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(what))?;
            let Some(row) = row else {
                let known: Option<i64> = sqlx::query_scalar("SELECT id FROM hosts WHERE id = $1")
                    .bind(int(id.0, "id")?)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(what))?;
                return Err(if known.is_some() {
                    conflict
                } else {
                    StoreError::UnknownHost(id)
                });
            };
            let h = host_from_row(&row)?;
            sqlx::query(
                "INSERT INTO host_status_history (host_id, at, from_status, to_status, event, update_count) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(int(id.0, "id")?)
            .bind(time(now)?)
            .bind(expected.as_ref().map(name_of))
            .bind(name_of(&to))
            .bind(name_of(&event))
            .bind(int(h.update_count, "update_count")?)
            .execute(&mut *tx)
            .await
            .map_err(db(what))?;
            tx.commit().await.map_err(db(what))?;
            Ok(h)
        }
        .await)
    }

    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.heal().await;
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
        self.heal().await;
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
