//! Columns ↔ values: enums as their serde names, times as microseconds since the epoch,
//! booleans as 0/1, lists and proofs as JSON text. A value the store cannot read back is a
//! backend error naming the column, never a panic.

use cloudha_ports::{ProofKind, ProofRecord, SelfFenceTimings, StoreError, Timestamp};
use cloudha_protocol::HostId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;
use std::time::Duration;

/// A column that does not hold what the schema says.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: {reason}")]
pub(crate) struct BadColumn {
    pub(crate) column: &'static str,
    pub(crate) reason: String,
}

pub(crate) fn bad(column: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::backend(
        "reading a row",
        BadColumn {
            column,
            reason: reason.into(),
        },
    )
}

/// `sqlx` errors as backend errors saying what was being done.
pub(crate) fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::backend(what, e)
}

/// An enum's serde name (`"Up"`).
pub(crate) fn name_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => unreachable!("a unit enum serializes as a string, got {other:?}"),
    }
}

/// The enum named `text`.
pub(crate) fn parse_name<T: DeserializeOwned>(
    column: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| bad(column, format!("`{text}`: {e}")))
}

pub(crate) fn get<'r, T>(row: &'r AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(|e| bad(column, e.to_string()))
}

pub(crate) fn get_enum<T: DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<T, StoreError> {
    let text: String = get(row, column)?;
    parse_name(column, &text)
}

pub(crate) fn get_opt_enum<T: DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = get(row, column)?;
    text.map(|t| parse_name(column, &t)).transpose()
}

pub(crate) fn get_u64(row: &AnyRow, column: &'static str) -> Result<u64, StoreError> {
    let v: i64 = get(row, column)?;
    u64::try_from(v).map_err(|_| bad(column, format!("negative: {v}")))
}

pub(crate) fn get_opt_u64(row: &AnyRow, column: &'static str) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = get(row, column)?;
    v.map(|v| u64::try_from(v).map_err(|_| bad(column, format!("negative: {v}"))))
        .transpose()
}

pub(crate) fn get_bool(row: &AnyRow, column: &'static str) -> Result<bool, StoreError> {
    match get::<i64>(row, column)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(bad(column, format!("not 0 or 1: {v}"))),
    }
}

pub(crate) fn get_time(row: &AnyRow, column: &'static str) -> Result<Timestamp, StoreError> {
    get_u64(row, column).map(Timestamp::from_micros)
}

pub(crate) fn get_opt_time(
    row: &AnyRow,
    column: &'static str,
) -> Result<Option<Timestamp>, StoreError> {
    Ok(get_opt_u64(row, column)?.map(Timestamp::from_micros))
}

/// A u64 (id, counter, version) as the BIGINT it is stored in.
pub(crate) fn int(v: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::backend(
            "writing a row",
            BadColumn {
                column: what,
                reason: format!("{v} does not fit a BIGINT"),
            },
        )
    })
}

pub(crate) fn time(t: Timestamp) -> Result<i64, StoreError> {
    int(t.as_micros(), "time")
}

pub(crate) fn opt_time(t: Option<Timestamp>) -> Result<Option<i64>, StoreError> {
    t.map(time).transpose()
}

pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// A proof record as JSON text.
pub(crate) fn proof_to_json(p: &ProofRecord) -> String {
    serde_json::json!({
        "kind": p.kind.as_str(),
        "host": p.host.map(|h| h.0),
        "evidence": p.evidence,
        "at": p.at.as_micros(),
        "timings": p.timings.map(|t| serde_json::json!({
            "heartbeat_age_us": u64::try_from(t.heartbeat_age.as_micros()).unwrap_or(u64::MAX),
            "deadline_us": u64::try_from(t.deadline.as_micros()).unwrap_or(u64::MAX),
        })),
    })
    .to_string()
}

/// A proof record read back.
pub(crate) fn proof_from_json(text: &str) -> Result<ProofRecord, StoreError> {
    #[derive(serde::Deserialize)]
    struct Timings {
        heartbeat_age_us: u64,
        deadline_us: u64,
    }
    #[derive(serde::Deserialize)]
    struct Proof {
        kind: String,
        host: Option<u64>,
        evidence: String,
        at: u64,
        timings: Option<Timings>,
    }
    let p: Proof =
        serde_json::from_str(text).map_err(|e| bad("fence_proof", format!("not a proof: {e}")))?;
    let kind = ProofKind::parse(&p.kind)
        .ok_or_else(|| bad("fence_proof", format!("unknown proof kind `{}`", p.kind)))?;
    Ok(ProofRecord::new(
        kind,
        p.host.map(HostId),
        p.evidence,
        Timestamp::from_micros(p.at),
        p.timings.map(|t| {
            SelfFenceTimings::new(
                Duration::from_micros(t.heartbeat_age_us),
                Duration::from_micros(t.deadline_us),
            )
        }),
    ))
}
