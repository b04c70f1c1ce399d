//! Dynamic throttle (T01, T04): every `interval` the process samples its
//! CPU, its memory and the app's requests outstanding; while any is over
//! its threshold, new requests are shed with 429 before they cost anything.
//! Shedding stops only when every signal is [`Throttle::HYSTERESIS`] below
//! its threshold, so the gateway does not flap at the edge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_manifest::Throttle;
use tracing::{info, warn};

use crate::admission::Gate;

/// The sampled signals, each a share from 0 to 1.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub cpu: f64,
    pub memory: f64,
    pub in_flight: f64,
}

pub struct Shedder {
    settings: Throttle,
    shedding: AtomicBool,
    /// The last sample, as f64 bits, for metrics.
    last: [AtomicU64; 3],
}

impl Shedder {
    pub fn new(settings: Throttle) -> Arc<Self> {
        Arc::new(Self {
            settings,
            shedding: AtomicBool::new(false),
            last: Default::default(),
        })
    }

    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Acquire)
    }

    /// Seconds a shed client should wait: one sampling interval, at least 1.
    pub fn retry_after(&self) -> u64 {
        self.settings.interval.get().as_secs().max(1)
    }

    pub fn last(&self) -> Signals {
        let read = |i: usize| f64::from_bits(self.last[i].load(Ordering::Relaxed));
        Signals {
            cpu: read(0),
            memory: read(1),
            in_flight: read(2),
        }
    }

    /// Take in one sample: start or stop shedding.
    pub fn update(&self, signals: Signals) {
        for (slot, value) in self
            .last
            .iter()
            .zip([signals.cpu, signals.memory, signals.in_flight])
        {
            slot.store(value.to_bits(), Ordering::Relaxed);
        }
        let t = &self.settings;
        let pairs = [
            ("cpu", signals.cpu, t.cpu),
            ("memory", signals.memory, t.memory),
            ("in_flight", signals.in_flight, t.in_flight),
        ];
        let over = pairs.iter().find(|(_, value, limit)| value >= limit);
        let recovered = pairs
            .iter()
            .all(|(_, value, limit)| *value < limit - Throttle::HYSTERESIS);
        let shedding = self.shedding();
        if let (false, Some((signal, value, limit))) = (shedding, over) {
            self.shedding.store(true, Ordering::Release);
            warn!(
                target: "bulkhead::throttle",
                signal,
                value,
                threshold = limit,
                cpu = signals.cpu,
                memory = signals.memory,
                in_flight = signals.in_flight,
                "overloaded: shedding new requests"
            );
        } else if shedding && recovered {
            self.shedding.store(false, Ordering::Release);
            info!(
                target: "bulkhead::throttle",
                cpu = signals.cpu,
                memory = signals.memory,
                in_flight = signals.in_flight,
                "recovered: admitting new requests again"
            );
        }
    }

    /// Sample on a thread of its own until the process ends.
    pub fn start(self: &Arc<Self>, app_gate: Arc<Gate>, max_outstanding: u32) {
        let shedder = self.clone();
        let interval = self.settings.interval.get();
        let spawned = std::thread::Builder::new()
            .name("bulkhead-throttle".into())
            .spawn(move || {
                let mut cpu = CpuSampler::new();
                loop {
                    std::thread::sleep(interval);
                    shedder.update(Signals {
                        cpu: cpu.sample(),
                        memory: memory_share(),
                        in_flight: f64::from(app_gate.outstanding())
                            / f64::from(max_outstanding.max(1)),
                    });
                }
            });
        if let Err(e) = spawned {
            warn!(target: "bulkhead::throttle", error = %e, "cannot start the load sampler; the dynamic throttle is off");
        }
    }
}

/// Process CPU time over wall time and cores, between two samples.
struct CpuSampler {
    cores: f64,
    last: Option<(Instant, Duration)>,
}

impl CpuSampler {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            cores: cores as f64,
            last: process_cpu_time().map(|cpu| (Instant::now(), cpu)),
        }
    }

    fn sample(&mut self) -> f64 {
        let now = Instant::now();
        let Some(cpu) = process_cpu_time() else {
            return 0.0;
        };
        let share = match self.last {
            Some((then, before)) => {
                let wall = now.duration_since(then).as_secs_f64() * self.cores;
                let used = cpu.saturating_sub(before).as_secs_f64();
                if wall > 0.0 {
                    (used / wall).min(1.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, cpu));
        share
    }
}

/// User plus system time of this process, from `/proc/self/stat` (Linux;
/// elsewhere the CPU signal reads 0).
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces: fields start after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // The kernel reports these in USER_HZ, which is 100 on Linux's ABI.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident memory over the memory this process may use: its cgroup's
/// limit when there is one, else the machine's.
fn memory_share() -> f64 {
    let Some(resident) = resident_bytes() else {
        return 0.0;
    };
    match available_bytes() {
        Some(total) if total > 0 => (resident as f64 / total as f64).min(1.0),
        _ => 0.0,
    }
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn available_bytes() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    match (cgroup, meminfo) {
        (Some(limit), Some(total)) => Some(limit.min(total)),
        (limit, total) => limit.or(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_over_a_threshold_and_resumes_with_hysteresis() {
        let shedder = Shedder::new(bulkhead_manifest::traffic::defaults::THROTTLE);
        let at = |in_flight| Signals {
            in_flight,
            ..Default::default()
        };
        shedder.update(at(0.5));
        assert!(!shedder.shedding());
        shedder.update(at(0.85));
        assert!(shedder.shedding());
        // Below the threshold but within the hysteresis band: still shedding.
        shedder.update(at(0.75));
        assert!(shedder.shedding());
        shedder.update(at(0.6));
        assert!(!shedder.shedding());
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        assert!(process_cpu_time().is_some());
        let share = memory_share();
        assert!(share > 0.0 && share < 1.0);
    }
}
