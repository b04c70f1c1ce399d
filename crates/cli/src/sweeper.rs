//! The retention sweeper (T20): deletes expired key-value records at
//! startup and then periodically. Reads never return an expired record
//! anyway; the sweeper makes sure it is gone from disk too.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_manifest::App;
use bulkhead_runtime::DataPlane;
use tracing::{info, warn};

/// Longest pause between sweeps.
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest pause between sweeps.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Every minute, or every half of the shortest retention when that is
/// shorter (at least every second): a record outlives its retention on
/// disk by at most that long.
pub fn interval(app: &App) -> Duration {
    app.stores
        .iter()
        .filter_map(|s| s.retention())
        .map(|r| r.get() / 2)
        .min()
        .map_or(MAX_INTERVAL, |half| half.clamp(MIN_INTERVAL, MAX_INTERVAL))
}

/// Start the sweeper thread if the app has a store with a retention.
pub fn start(app: &App, data: &Arc<DataPlane>) {
    let Some(kv) = data.kv.clone() else {
        return;
    };
    if !app.stores.iter().any(|s| s.retention().is_some()) {
        return;
    }
    let every = interval(app);
    let spawned = std::thread::Builder::new()
        .name("kv-sweeper".into())
        .spawn(move || {
            loop {
                match kv.sweep() {
                    Ok(0) => {}
                    Ok(deleted) => info!(
                        target: "bulkhead::retention",
                        deleted,
                        "expired key-value records deleted"
                    ),
                    Err(e) => warn!(target: "bulkhead::retention", error = %e, "sweep failed"),
                }
                std::thread::sleep(every);
            }
        });
    match spawned {
        Ok(_) => info!(
            target: "bulkhead::retention",
            interval_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            "retention sweeper started"
        ),
        Err(e) => {
            warn!(target: "bulkhead::retention", error = %e, "cannot start the retention sweeper")
        }
    }
}
