//! What the process costs: resident memory from `/proc/self/status`, CPU time from the
//! kernel's accounting.

use std::time::Duration;

/// Peak resident memory (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    status_kib("VmHWM:").map(kib_to_mib)
}

/// Current resident memory (`VmRSS`), in MiB.
pub fn rss_mib() -> Option<f64> {
    status_kib("VmRSS:").map(kib_to_mib)
}

/// Heap the allocator has handed out and not had back, in MiB; glibc only.
pub fn heap_in_use_mib() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as f64 / (1024.0 * 1024.0))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Resident memory and heap in use, in MiB; NaN where unknown.
pub fn memory_mib() -> [f64; 2] {
    [
        rss_mib().unwrap_or(f64::NAN),
        heap_in_use_mib().unwrap_or(f64::NAN),
    ]
}

/// User plus system CPU time of the whole process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// CPU time of the calling thread so far.
pub fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime only writes into the zeroed struct it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// The `q`-quantile (0..=1) of sorted samples by nearest rank; `None` when there are none.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(last)])
}

fn timeval(t: libc::timeval) -> Duration {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u64::try_from(t.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
