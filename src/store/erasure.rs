//! Erasure of one person (GDPR art. 17): their leads, and every stored raw delivery that
//! mentions them. A raw delivery is removed whole (a batch may hold other people's messages:
//! their leads stay, only the raw copy goes). "Mentions" is exact: some string (or number) in
//! the delivery's JSON equals the id, so a longer number that merely contains it is not hit.

use rusqlite::{params, Connection};

use super::writer::open_connection;
use super::{Store, StoreError};

/// What one erasure removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Erased {
    /// Leads whose `wa_id` or `user_id` was the id.
    pub leads: u64,
    /// Raw deliveries that mentioned the id.
    pub raw_deliveries: u64,
}

impl Store {
    /// Removes everything stored about `id` (a `wa_id` or a BSUID `user_id`), in one transaction.
    pub async fn erase_contact(&self, id: String) -> Result<Erased, StoreError> {
        let (path, durability) = (self.path.clone(), self.durability);
        tokio::task::spawn_blocking(move || {
            let mut conn = open_connection(&path, durability)?;
            let erased = erase(&mut conn, &id)?;
            conn.close().map_err(|(_, err)| err)?;
            Ok(erased)
        })
        .await
        .map_err(|err| StoreError::Io(std::io::Error::other(err)))?
    }
}

/// Whether any string or number in `value` is exactly `id`.
fn mentions(value: &serde_json::Value, id: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == id,
        serde_json::Value::Number(n) => n.to_string() == id,
        serde_json::Value::Array(items) => items.iter().any(|v| mentions(v, id)),
        serde_json::Value::Object(map) => map.values().any(|v| mentions(v, id)),
        _ => false,
    }
}

fn erase(conn: &mut Connection, id: &str) -> rusqlite::Result<Erased> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let leads = tx.execute(
        "DELETE FROM leads WHERE wa_id = ?1 OR user_id = ?1",
        params![id],
    )? as u64;
    // A byte search narrows the scan; the JSON check makes it exact. A body that is not JSON
    // but holds the id's bytes is removed too: nothing is kept that might name the person.
    let candidates: Vec<(i64, Vec<u8>)> = tx
        .prepare("SELECT id, body FROM events WHERE instr(body, CAST(?1 AS BLOB)) > 0")?
        .query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut raw_deliveries = 0;
    for (event_id, body) in candidates {
        let hit = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(value) => mentions(&value, id),
            Err(_) => true,
        };
        if hit {
            raw_deliveries +=
                tx.execute("DELETE FROM events WHERE id = ?1", params![event_id])? as u64;
        }
    }
    tx.commit()?;
    Ok(Erased {
        leads,
        raw_deliveries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_exact() {
        let v = serde_json::json!({"a": [{"wa_id": "4917"}], "n": 4918, "s": "x49170"});
        assert!(mentions(&v, "4917"));
        assert!(mentions(&v, "4918"));
        assert!(!mentions(&v, "491"));
        assert!(!mentions(&v, "49170"));
    }
}
