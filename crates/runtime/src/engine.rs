//! The wasmtime engine every function shares: component model, pooling
//! allocator with copy-on-write memory images, and epoch interruption driven
//! by a ticker thread, so a busy guest is stopped on time (T05).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::RuntimeError;

/// How often the epoch advances. A timeout is rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings that shape the engine. They are part of the compile-cache key,
/// through wasmtime's own compatibility hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Live component instances at once, across all functions.
    pub max_instances: u32,
    /// The largest linear memory any function may grow to.
    pub max_memory: usize,
}

/// Core instances and memories one component may bring: language runtimes
/// (componentize-py, componentize-js) link several modules per component.
const CORE_INSTANCES_PER_COMPONENT: u32 = 24;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;
/// Table slots per table; CPython's function table is large.
const TABLE_ELEMENTS: usize = 100_000;
/// Guard pages after each linear memory; with the 4 GiB reservation, wasm
/// loads and stores need no explicit bounds checks.
const MEMORY_GUARD: u64 = 32 << 20;
const MEMORY_RESERVATION: u64 = 4 << 30;
/// Native stack a guest may use before it traps with a stack overflow.
const MAX_WASM_STACK: usize = 1 << 20;

/// Linear memory a freed slot may keep resident for the next call, when the
/// kernel has `PAGEMAP_SCAN` (Linux 6.7+). Issue 17: a Python or JavaScript
/// call dirties hundreds of pages of its 13-21 MB component's memory image;
/// by default each is dropped with `madvise` when the call ends and
/// faulted back in (a copy-on-write copy of the image page) by the next
/// call, which made page faults about a third of a Python call's CPU. With
/// the scan, wasmtime finds the pages the call wrote and copies the image
/// bytes back over them instead, so the next call in the slot starts on the
/// same initial image with no fault. Isolation is unchanged (T05, T16): the
/// slot is still reset to the component's initial image before it is
/// reused; only the mechanism differs (see tests/isolation.rs in the CLI).
/// The bound is per slot and applies after a call ends; it is below what
/// the call itself may hold (`max_memory`), so it adds no new worst case.
/// wasmtime 48 as published stopped the scan at 32 written regions and
/// dropped the rest, which left a CPython call ~210 faults; the vendored
/// wasmtime (vendor/README.md) scans on to this bound, so a Python call
/// now takes none.
const MEMORY_KEEP_RESIDENT: usize = 8 << 20;
/// The same for tables: CPython's function table is written by lazy
/// funcref initialisation on every call; zeroing the table's used size (at
/// most `TABLE_ELEMENTS` * 8 bytes, so this covers all of it) costs less
/// than a fault per page, with or without the scan.
const TABLE_KEEP_RESIDENT: usize = 1 << 20;

/// How a freed slot is reset for its next call: copy back what the call
/// wrote (needs `PAGEMAP_SCAN` to know what that was) or, without the scan,
/// drop every page with `madvise` as before (copying the whole image back on
/// every call would cost more than the faults it saves).
fn keep_resident(pool: &mut PoolingAllocationConfig, max_memory: usize) {
    pool.table_keep_resident(TABLE_KEEP_RESIDENT);
    // wasmtime 48's scan resets only pages that are written AND present: a
    // written page the kernel swapped out would be neither copied back nor
    // dropped, and the next call in the slot could read it (T05, T16;
    // bytecodealliance/wasmtime#14357). With any swap device on, memories
    // are reset with `madvise` as before.
    if PoolingAllocationConfig::is_pagemap_scan_available() && !swap_in_use() {
        pool.pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT.min(max_memory));
    }
}

/// Whether the host has a swap device (or zswap/zram swap) active. An
/// unreadable `/proc/swaps` counts as swap: the safe answer.
fn swap_in_use() -> bool {
    match std::fs::read_to_string("/proc/swaps") {
        Ok(table) => swap_table_lists_a_device(&table),
        Err(_) => true,
    }
}

/// `/proc/swaps` is a header line and one line per active swap area.
fn swap_table_lists_a_device(table: &str) -> bool {
    table.lines().skip(1).any(|line| !line.trim().is_empty())
}

pub(crate) fn build_engine(settings: &EngineSettings) -> Result<Engine, RuntimeError> {
    let mut pool = PoolingAllocationConfig::default();
    let instances = settings.max_instances.max(1);
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(instances)
        .max_memory_size(settings.max_memory)
        .table_elements(TABLE_ELEMENTS)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20);
    keep_resident(&mut pool, settings.max_memory);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .memory_reservation(MEMORY_RESERVATION.max(settings.max_memory as u64))
        .memory_guard_size(MEMORY_GUARD)
        .memory_init_cow(true)
        .parallel_compilation(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Result<Self, RuntimeError> {
        let weak = engine.weak();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bulkhead-epoch".into())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ticks to allow for `timeout`, rounded up, plus one for the partial tick
/// already under way when the call starts.
pub(crate) fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    let ticks = timeout.as_nanos().div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::swap_table_lists_a_device;

    /// T05, T16: the resident reset is turned off whenever a swap area is
    /// listed, and only then.
    #[test]
    fn a_listed_swap_area_turns_the_resident_reset_off() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swap_table_lists_a_device(header));
        assert!(!swap_table_lists_a_device(""));
        let with_swap = format!("{header}/dev/zram0 partition 4194300 0 100\n");
        assert!(swap_table_lists_a_device(&with_swap));
    }
}
