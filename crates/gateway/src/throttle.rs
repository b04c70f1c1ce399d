//! Dynamic throttle (T01, T04): a control loop that limits how many
//! requests may be *active* (body read, queued or running) app-wide while
//! the process is overloaded, and sheds only what is over that limit,
//! heaviest callers first ([`fair_admits`]).
//!
//! Every `interval` the sampler reads the process's CPU and memory shares,
//! the app gate's active requests and the mean latency of the requests that
//! finished (from activation to the end of their run), and hands them to a
//! [`Controller`]. While nothing is over its threshold the limit is off and
//! the controller learns the latency of an unloaded request (its baseline).
//! Once a signal passes its threshold the limit starts at what is active
//! now and then follows the signals:
//!
//! - CPU over: the gradient of Envoy's adaptive concurrency filter and
//!   Netflix's Gradient2, `limit * clamp(TOLERANCE * baseline / latency,
//!   0.5, 1) + sqrt(limit)`: the limit shrinks while latency is above the
//!   tolerated multiple of the baseline and creeps up (by the square-root
//!   headroom) while it is not, so it settles where the CPU is busy but
//!   requests do not wait on each other. With no baseline yet (overloaded
//!   from the start) it first probes: the limit drops to the floor for
//!   [`PROBE_INTERVALS`] intervals and the latency then is the baseline.
//! - memory over: a proportional cut, `limit * threshold / memory`, at
//!   least 10 %.
//! - in-flight over: the limit is at most `in_flight * max_outstanding`.
//! - every signal [`Throttle::HYSTERESIS`] below its threshold: the limit
//!   grows by its square root each interval and is lifted once it no
//!   longer binds.
//!
//! The limit stays between a floor (enough requests to keep every core
//! busy) and the in-flight ceiling. The old throttle shed every new request
//! while a signal was over, so under a steady overload it alternated between
//! shedding everything and admitting everything; this one sheds the excess.
//!
//! In a cluster (issue 16, `[cluster] redis_url`) every node publishes its
//! signals with its heartbeat and reads the mean of the live nodes'
//! ([`crate::cluster`]). The controller then takes, signal by signal, the
//! higher of this node's and the cluster's mean: a node sheds when it is
//! over a threshold itself, or when the cluster as a whole is (its mean
//! is), since the balancer would only move the excess onto the nodes that
//! are still under it. While Redis does not answer, or the mean is more
//! than a few heartbeats old, the node goes by its own signals alone.
//!
//! Requests still sending their bodies are not active: they cannot move the
//! in-flight signal, so bodies that never come cannot make the gateway shed
//! everyone else (T01, T02; their places are bounded per caller by the
//! admission gate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_manifest::Throttle;
use tracing::{debug, info, warn};

use crate::admission::Gate;

/// Latency up to this multiple of the baseline is not overload.
pub const TOLERANCE: f64 = 1.5;
/// The most one interval may cut the limit by gradient: by half.
const MIN_GRADIENT: f64 = 0.5;
/// Intervals the limit stays at its floor to measure a baseline: the first
/// lets what was admitted before drain, the second measures.
pub const PROBE_INTERVALS: u8 = 2;
/// Weight of a new unloaded interval in the baseline.
const BASELINE_WEIGHT: f64 = 0.25;
/// A memory cut is at least this much of the limit.
const MIN_MEMORY_CUT: f64 = 0.10;

/// The sampled signals, each a share from 0 to 1, and the limit set from
/// them (`None` while not shedding).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub cpu: f64,
    pub memory: f64,
    /// Active requests over the app's `max_outstanding_requests`.
    pub in_flight: f64,
    pub limit: Option<u32>,
}

/// One interval's input to the controller.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Input {
    pub cpu: f64,
    pub memory: f64,
    pub in_flight: f64,
    /// Most requests active at once during the interval.
    pub peak_active: u32,
    /// Mean seconds from activation to the end of the run of requests that
    /// finished, or a lower bound if requests were active and none did.
    pub latency: Option<f64>,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Not limiting, and still not.
    Idle,
    /// Started limiting because `signal` reached its threshold.
    Engaged {
        signal: &'static str,
        value: f64,
        threshold: f64,
    },
    /// Still limiting.
    Adjusted,
    /// Stopped limiting.
    Recovered,
}

/// The control loop, free of clocks and threads so it can be tested on
/// synthetic signals.
#[derive(Debug, Clone)]
pub struct Controller {
    thresholds: Throttle,
    /// `in_flight * max_outstanding`: the limit is never above it.
    ceiling: f64,
    /// The limit is never below it (unless the ceiling is lower).
    floor: f64,
    limit: Option<f64>,
    /// Latency of a request when nothing is overloaded, in seconds.
    baseline: Option<f64>,
    /// Probe intervals left.
    probing: u8,
}

impl Controller {
    /// `cores`: the machine's parallelism; the floor keeps two requests a
    /// core (at least 8) active, so shedding never idles the CPU.
    pub fn new(thresholds: Throttle, max_outstanding: u32, cores: usize) -> Self {
        let ceiling = (thresholds.in_flight * f64::from(max_outstanding.max(1)))
            .floor()
            .max(1.0);
        let floor = ((cores.max(1) * 2).max(8) as f64).min(ceiling);
        Self {
            thresholds,
            ceiling,
            floor,
            limit: None,
            baseline: None,
            probing: 0,
        }
    }

    /// The limit on active requests, `None` while not shedding.
    pub fn limit(&self) -> Option<u32> {
        self.limit.map(|l| l.round() as u32)
    }

    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    /// Take in one interval's signals.
    pub fn update(&mut self, input: Input) -> Step {
        let t = self.thresholds;
        let signals = [
            ("cpu", input.cpu, t.cpu),
            ("memory", input.memory, t.memory),
            ("in_flight", input.in_flight, t.in_flight),
        ];
        let over = signals
            .iter()
            .find(|(_, value, threshold)| value >= threshold)
            .copied();
        let calm = signals
            .iter()
            .all(|(_, value, threshold)| *value < threshold - Throttle::HYSTERESIS);
        let over_cpu = input.cpu >= t.cpu;
        let over_memory = input.memory >= t.memory;
        let peak = f64::from(input.peak_active);

        let (mut limit, step) = match (self.limit, over) {
            (None, None) => {
                // Unloaded: learn what a request's latency is.
                if let Some(latency) = input.latency {
                    self.baseline = Some(match self.baseline {
                        Some(b) => b + BASELINE_WEIGHT * (latency - b),
                        None => latency,
                    });
                }
                return Step::Idle;
            }
            // Start from what is active now: shed only what comes on top.
            (None, Some((signal, value, threshold))) => (
                peak.max(self.floor),
                Step::Engaged {
                    signal,
                    value,
                    threshold,
                },
            ),
            (Some(limit), _) => (limit, Step::Adjusted),
        };

        if over_cpu || self.probing > 0 {
            limit = self.cpu_step(limit, peak, input.latency);
        } else if let Some(latency) = input.latency {
            // A lower latency under load is a better baseline.
            self.baseline = Some(self.baseline.map_or(latency, |b| b.min(latency)));
        }
        if over_memory {
            limit *= (t.memory / input.memory).min(1.0 - MIN_MEMORY_CUT);
        }
        if calm && self.probing == 0 {
            // Additive increase; lifted once it no longer binds.
            limit += limit.sqrt();
            if limit >= self.ceiling || limit > 2.0 * peak.max(self.floor) {
                self.limit = None;
                return Step::Recovered;
            }
        }
        self.limit = Some(limit.clamp(self.floor, self.ceiling));
        step
    }

    /// The CPU is over its threshold: follow the latency gradient, or
    /// probe for a baseline first.
    fn cpu_step(&mut self, limit: f64, peak: f64, latency: Option<f64>) -> f64 {
        if self.probing > 0 {
            self.probing -= 1;
            if self.probing == 0 {
                // What a request takes with the fewest active: the baseline.
                self.baseline = latency.or(self.baseline);
            }
            return self.floor;
        }
        let Some(baseline) = self.baseline else {
            self.probing = PROBE_INTERVALS;
            return self.floor;
        };
        let Some(latency) = latency else {
            // Nothing active, nothing learned: hold.
            return limit;
        };
        self.baseline = Some(baseline.min(latency));
        let gradient = if latency > 0.0 {
            (TOLERANCE * baseline / latency).clamp(MIN_GRADIENT, 1.0)
        } else {
            1.0
        };
        // The square-root headroom lets the limit find more capacity; it
        // never grows past twice what was active (it would not bind).
        (limit * gradient + limit.sqrt()).min(2.0 * peak.max(self.floor))
    }
}

/// Heaviest first (T01, T02): whether a caller holding `mine` active
/// requests may start one more when `active` are active under `limit`,
/// given what each other caller holding requests holds. Below the limit,
/// yes. At it, a caller's fair part is the limit split evenly between the
/// callers holding requests (the newcomer included), at least 1: a caller
/// at or above its part is refused; one below it may go over the limit only
/// as far as the heavier callers hold more than their parts, places it is
/// owed. So shedding takes from the heaviest callers, and many light
/// callers cannot push the total past the limit.
pub fn fair_admits(limit: u32, active: u32, mine: u32, others: impl Iterator<Item = u32>) -> bool {
    if active < limit {
        return true;
    }
    let others: Vec<u32> = others.collect();
    let holders = u32::try_from(others.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let part = (limit / holders).max(1);
    if mine >= part {
        return false;
    }
    let owed: u32 = others
        .iter()
        .map(|held| held.saturating_sub(part))
        .fold(0, u32::saturating_add);
    active < limit.saturating_add(owed)
}

pub struct Shedder {
    settings: Throttle,
    /// The last signals, as f64 bits, and the limit (u64::MAX: none), for
    /// metrics.
    last: [AtomicU64; 4],
}

impl Shedder {
    pub fn new(settings: Throttle) -> Arc<Self> {
        Arc::new(Self {
            settings,
            last: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(u64::MAX),
            ],
        })
    }

    /// Whether a limit is set.
    pub fn shedding(&self) -> bool {
        self.last().limit.is_some()
    }

    /// Seconds a shed client should wait: one sampling interval, at least 1.
    pub fn retry_after(&self) -> u64 {
        self.settings.interval.get().as_secs().max(1)
    }

    pub fn last(&self) -> Signals {
        let read = |i: usize| f64::from_bits(self.last[i].load(Ordering::Relaxed));
        let limit = self.last[3].load(Ordering::Relaxed);
        Signals {
            cpu: read(0),
            memory: read(1),
            in_flight: read(2),
            limit: u32::try_from(limit).ok(),
        }
    }

    /// Take in one interval: update the controller, set the gate's limit,
    /// log what changed.
    fn update(&self, gate: &Gate, controller: &mut Controller, input: Input) {
        let before = controller.limit();
        let step = controller.update(input);
        let limit = controller.limit();
        gate.set_limit(limit);
        for (slot, value) in self
            .last
            .iter()
            .zip([input.cpu, input.memory, input.in_flight])
        {
            slot.store(value.to_bits(), Ordering::Relaxed);
        }
        self.last[3].store(limit.map_or(u64::MAX, u64::from), Ordering::Relaxed);
        match step {
            Step::Engaged {
                signal,
                value,
                threshold,
            } => warn!(
                target: "bulkhead::throttle",
                signal,
                value,
                threshold,
                cpu = input.cpu,
                memory = input.memory,
                in_flight = input.in_flight,
                limit,
                "overloaded: shedding new requests"
            ),
            Step::Recovered => info!(
                target: "bulkhead::throttle",
                cpu = input.cpu,
                memory = input.memory,
                in_flight = input.in_flight,
                "recovered: admitting new requests again"
            ),
            Step::Adjusted if before != limit => debug!(
                target: "bulkhead::throttle",
                cpu = input.cpu,
                memory = input.memory,
                in_flight = input.in_flight,
                latency = input.latency,
                baseline = controller.baseline(),
                limit,
                "throttle limit changed"
            ),
            Step::Adjusted | Step::Idle => {}
        }
    }

    /// Sample on a thread of its own until the process ends; `cluster`,
    /// where this node's load is published and the cluster's read.
    pub fn start(
        self: &Arc<Self>,
        app_gate: Arc<Gate>,
        max_outstanding: u32,
        cluster: Option<Arc<crate::cluster::ClusterLimits>>,
    ) {
        let shedder = self.clone();
        let interval = self.settings.interval.get();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spawned = std::thread::Builder::new()
            .name("bulkhead-throttle".into())
            .spawn(move || {
                let mut controller = Controller::new(shedder.settings, max_outstanding, cores);
                let mut cpu = CpuSampler::new();
                loop {
                    std::thread::sleep(interval);
                    let sample = app_gate.sample();
                    // Requests were active and none finished: each took at
                    // least the interval.
                    let latency = sample
                        .latency
                        .or_else(|| (sample.peak_active > 0).then_some(interval.as_secs_f64()));
                    let mut input = Input {
                        cpu: cpu.sample(),
                        memory: memory_share(),
                        in_flight: f64::from(sample.active) / f64::from(max_outstanding.max(1)),
                        peak_active: sample.peak_active,
                        latency,
                    };
                    if let Some(cluster) = &cluster {
                        cluster.publish_load([input.cpu, input.memory, input.in_flight]);
                        if let Some(mean) = cluster.cluster_load() {
                            input = with_cluster_load(input, mean);
                        }
                    }
                    shedder.update(&app_gate, &mut controller, input);
                }
            });
        if let Err(e) = spawned {
            warn!(target: "bulkhead::throttle", error = %e, "cannot start the load sampler; the dynamic throttle is off");
        }
    }
}

/// The rule in a cluster (issue 16, T01): each signal is the higher of
/// this node's and the live nodes' mean (`[cpu, memory, in_flight]`).
pub fn with_cluster_load(own: Input, mean: [f64; 3]) -> Input {
    Input {
        cpu: own.cpu.max(mean[0]),
        memory: own.memory.max(mean[1]),
        in_flight: own.in_flight.max(mean[2]),
        ..own
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

    /// Issue 16, T01: per signal, the higher of the node's and the
    /// cluster's mean; the rest of the input is the node's.
    #[test]
    fn the_cluster_load_raises_a_signal_never_lowers_it_t01() {
        let own = Input {
            cpu: 0.2,
            memory: 0.7,
            in_flight: 0.1,
            peak_active: 5,
            latency: Some(0.01),
        };
        let seen = with_cluster_load(own, [0.5, 0.3, 0.1]);
        assert_eq!(seen.cpu, 0.5);
        assert_eq!(seen.memory, 0.7);
        assert_eq!(seen.in_flight, 0.1);
        assert_eq!(seen.peak_active, 5);
        assert_eq!(seen.latency, Some(0.01));
    }

    fn controller() -> Controller {
        // Thresholds 0.8; 256 outstanding: ceiling 204; 2 cores: floor 8.
        Controller::new(bulkhead_manifest::traffic::defaults::THROTTLE, 256, 2)
    }

    /// A synthetic CPU-bound service on 2 cores: below 2 active requests
    /// the CPU is not busy; above, requests share it and each takes
    /// `active / 2` times as long.
    fn cpu_bound(active: f64) -> Input {
        Input {
            cpu: (active / 2.0).min(1.0),
            memory: 0.1,
            in_flight: active / 256.0,
            peak_active: active as u32,
            latency: Some(0.010 * (active / 2.0).max(1.0)),
        }
    }

    fn unloaded() -> Input {
        Input {
            cpu: 0.2,
            memory: 0.1,
            in_flight: 0.0,
            peak_active: 1,
            latency: Some(0.010),
        }
    }

    #[test]
    fn unloaded_it_sets_no_limit_and_learns_the_baseline() {
        let mut c = controller();
        for _ in 0..5 {
            assert_eq!(c.update(unloaded()), Step::Idle);
        }
        assert_eq!(c.limit(), None);
        assert!((c.baseline().unwrap() - 0.010).abs() < 1e-9);
    }

    /// T01/T04: a sustained CPU overload (200 requests offered at once)
    /// is met with a limit that sheds the excess, not everything: the limit
    /// settles well above zero and the floor, where latency is within a
    /// small multiple of the baseline, and stays there without flapping.
    #[test]
    fn under_a_steady_overload_it_sheds_a_fraction_and_settles_t04() {
        let mut c = controller();
        for _ in 0..3 {
            c.update(unloaded());
        }
        let offered = 200.0;
        let mut limits = Vec::new();
        for _ in 0..30 {
            let active = c.limit().map_or(offered, |l| f64::from(l).min(offered));
            c.update(cpu_bound(active));
            limits.push(c.limit().expect("limiting while overloaded"));
        }
        let settled = &limits[20..];
        let (low, high) = (
            *settled.iter().min().unwrap(),
            *settled.iter().max().unwrap(),
        );
        // Never all or nothing: a limit stays, above the floor of 8 (every
        // core busy), far below the 200 offered.
        assert!(
            low >= 8 && high <= 12,
            "settled between {low} and {high}: {limits:?}"
        );
        assert!(high - low <= 2, "no flapping: {limits:?}");
        // Admitted latency stays within a few baselines.
        let latency = cpu_bound(f64::from(high)).latency.unwrap();
        assert!(latency <= 0.010 * 6.0, "{latency}");
    }

    #[test]
    fn it_recovers_once_the_overload_ends() {
        let mut c = controller();
        c.update(unloaded());
        for _ in 0..10 {
            let active = f64::from(c.limit().unwrap_or(200).min(200));
            c.update(cpu_bound(active));
        }
        assert!(c.limit().is_some());
        let mut steps = Vec::new();
        for _ in 0..20 {
            steps.push(c.update(unloaded()));
            if c.limit().is_none() {
                break;
            }
        }
        assert_eq!(steps.last(), Some(&Step::Recovered), "{steps:?}");
        assert_eq!(c.update(unloaded()), Step::Idle);
    }

    #[test]
    fn overloaded_from_the_start_it_probes_for_a_baseline() {
        let mut c = controller();
        let step = c.update(cpu_bound(64.0));
        assert!(
            matches!(step, Step::Engaged { signal: "cpu", .. }),
            "{step:?}"
        );
        // Probing: the floor, for PROBE_INTERVALS intervals.
        for _ in 0..PROBE_INTERVALS {
            assert_eq!(c.limit(), Some(8));
            c.update(cpu_bound(8.0));
        }
        assert!((c.baseline().unwrap() - 0.040).abs() < 1e-9);
        // Then it follows the gradient from there, no lower than the floor.
        for _ in 0..10 {
            let active = f64::from(c.limit().unwrap());
            c.update(cpu_bound(active));
            assert!(c.limit().unwrap() >= 8);
        }
    }

    #[test]
    fn memory_over_its_threshold_cuts_the_limit_in_proportion() {
        let mut c = controller();
        c.update(unloaded());
        let heavy = Input {
            cpu: 0.3,
            memory: 0.9,
            in_flight: 0.4,
            peak_active: 100,
            latency: Some(0.010),
        };
        assert!(matches!(
            c.update(heavy),
            Step::Engaged {
                signal: "memory",
                ..
            }
        ));
        // 100 * 0.8 / 0.9 = 88.
        assert_eq!(c.limit(), Some(89));
        c.update(heavy);
        assert_eq!(c.limit(), Some(79));
    }

    #[test]
    fn in_flight_over_its_threshold_caps_the_limit() {
        let mut c = Controller::new(
            Throttle {
                in_flight: 0.25,
                cpu: 1.0,
                memory: 1.0,
                ..bulkhead_manifest::traffic::defaults::THROTTLE
            },
            8,
            2,
        );
        let busy = Input {
            in_flight: 3.0 / 8.0,
            peak_active: 3,
            latency: None,
            ..Default::default()
        };
        assert!(matches!(
            c.update(busy),
            Step::Engaged {
                signal: "in_flight",
                ..
            }
        ));
        assert_eq!(c.limit(), Some(2));
        let idle = Input::default();
        assert_eq!(c.update(idle), Step::Recovered);
    }

    /// T02: at the limit, the heaviest callers are shed first.
    #[test]
    fn at_the_limit_heavy_callers_are_shed_before_light_ones_t02() {
        // Below the limit everyone is admitted.
        assert!(fair_admits(10, 9, 9, [].into_iter()));
        // Alone at the limit: refused (shed the excess).
        assert!(!fair_admits(10, 10, 10, [].into_iter()));
        // A flooder holds 9 of 10; a newcomer (part 10 / 3 callers = 3)
        // takes what the flooder holds beyond its part ...
        assert!(fair_admits(10, 10, 0, [9, 1].into_iter()));
        assert!(fair_admits(10, 12, 2, [9, 1].into_iter()));
        // ... while the flooder itself is refused.
        assert!(!fair_admits(10, 10, 9, [1].into_iter()));
        // Many light callers cannot push past the limit: nobody is owed.
        assert!(!fair_admits(10, 10, 0, [1; 10].into_iter()));
        // A caller at its part is refused even if others are heavier.
        assert!(!fair_admits(10, 10, 5, [5].into_iter()));
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        assert!(process_cpu_time().is_some());
        let share = memory_share();
        assert!(share > 0.0 && share < 1.0);
    }
}
