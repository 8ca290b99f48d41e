//! The lab's impairment stage (the kernel here has no `netem`): a wire
//! between two namespaces whose middle is this process. Each end of the
//! wire is a TAP device in its namespace; one thread per direction reads
//! the Ethernet frames one end's kernel sends and writes them into the
//! other end, each after a fixed delay plus up to `jitter` more, or not at
//! all (dropped at random). Frames keep their order, as on one radio link.
//!
//! A TAP device has no offloads unless asked, so the kernel hands it whole
//! frames of at most the MTU with their checksums filled in: what the
//! stage forwards is what a real wire carries. Written here because no
//! crate offers a userspace netem; it is lab code, not product code.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rand::Rng;

use super::inprocess::{join, thread_in};

/// What the stage does to each frame, each way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Added to every frame.
    pub delay: Duration,
    /// At most this much more, uniformly at random (frames still leave in
    /// the order they came).
    pub jitter: Duration,
    /// Share of IP frames dropped at random, in percent (ARP passes, as
    /// netem's would most of the time; losing it only stalls the wire).
    pub loss_percent: f64,
}

impl Impairment {
    /// No delay, no jitter, no loss.
    pub const NONE: Impairment = Impairment { delay: Duration::ZERO, jitter: Duration::ZERO, loss_percent: 0.0 };
}

/// Frames more than this many queued in one direction are dropped (and
/// counted), as a router's queue would; netem's default limit is 1,000.
const QUEUE_LIMIT: usize = 10_000;

/// Frames read from one end before the queue's due frames go out.
const READ_BURST: usize = 64;

/// What one direction of the stage did.
#[derive(Debug, Default)]
pub struct DirectionCounts {
    passed: AtomicU64,
    dropped: AtomicU64,
    overflowed: AtomicU64,
}

/// A snapshot of [`DirectionCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted {
    /// Frames written into the far end.
    pub passed: u64,
    /// IP frames dropped at random.
    pub dropped: u64,
    /// Frames dropped because the queue was full or the far end refused
    /// them.
    pub overflowed: u64,
}

impl DirectionCounts {
    fn snapshot(&self) -> Counted {
        Counted {
            passed: self.passed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
        }
    }
}

/// A running stage; stops (and its TAP devices go) when dropped.
pub struct ImpairedWire {
    settings: Arc<Mutex<Impairment>>,
    /// Left to right, right to left.
    counts: [Arc<DirectionCounts>; 2],
    stop_write: OwnedFd,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ImpairedWire {
    /// Creates TAP device `left.1` in namespace `left.0` and `right.1` in
    /// `right.0` (names under /var/run/netns), both down and without
    /// addresses, and forwards frames between them under `impairment`.
    pub fn start(left: (&str, &str), right: (&str, &str), impairment: Impairment) -> anyhow::Result<Self> {
        let left_tap = tap_in(left.0, left.1)?;
        let right_tap = tap_in(right.0, right.1)?;
        let (stop_read, stop_write) = pipe()?;
        let settings = Arc::new(Mutex::new(impairment));
        let counts = [Arc::new(DirectionCounts::default()), Arc::new(DirectionCounts::default())];
        let (left_tap, right_tap, stop_read) = (Arc::new(left_tap), Arc::new(right_tap), Arc::new(stop_read));
        let mut threads = Vec::new();
        for (from, to, counts) in
            [(left_tap.clone(), right_tap.clone(), counts[0].clone()), (right_tap, left_tap, counts[1].clone())]
        {
            let (settings, stop) = (settings.clone(), stop_read.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("impairment".into())
                    .spawn(move || pump(&from, &to, &stop, &settings, &counts))?,
            );
        }
        Ok(Self { settings, counts, stop_write, threads })
    }

    /// Changes what the stage does to frames read from now on.
    pub fn set(&self, impairment: Impairment) {
        if let Ok(mut settings) = self.settings.lock() {
            *settings = impairment;
        }
    }

    /// What the stage did so far: left to right, right to left.
    pub fn counts(&self) -> [Counted; 2] {
        [self.counts[0].snapshot(), self.counts[1].snapshot()]
    }
}

impl Drop for ImpairedWire {
    fn drop(&mut self) {
        // One byte makes the pipe readable for both threads for good.
        // SAFETY: writing one byte from a valid buffer to an open pipe.
        let _ = unsafe { libc::write(self.stop_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two descriptors of a valid array.
    ensure!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == 0, "pipe2");
    // SAFETY: both descriptors were just opened and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Opens a new non-blocking TAP device `name` in namespace `netns`
/// (a device is made in the namespace of the thread that asks for it).
fn tap_in(netns: &str, name: &str) -> anyhow::Result<OwnedFd> {
    let name = name.to_string();
    join(thread_in(netns, move || {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("the impairment stage needs /dev/net/tun")?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        ensure!(name.len() < request.ifr_name.len(), "interface name {name} too long");
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the
        // call.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) } != 0 {
            bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from(tun);
        // SAFETY: fcntl on an open descriptor.
        ensure!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } == 0, "O_NONBLOCK");
        Ok(fd)
    })?)
}

/// Whether an Ethernet frame carries IPv4 or IPv6.
fn is_ip(frame: &[u8]) -> bool {
    matches!(frame.get(12..14), Some([0x08, 0x00] | [0x86, 0xDD]))
}

/// One direction: frames read from `from` go into `to` when due.
fn pump(from: &OwnedFd, to: &OwnedFd, stop: &OwnedFd, settings: &Mutex<Impairment>, counts: &DirectionCounts) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    let mut rng = rand::rng();
    loop {
        let wait = queue.front().map(|(due, _)| due.saturating_duration_since(Instant::now()));
        let mut fds = [
            libc::pollfd { fd: from.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let timeout = wait.map(|w| libc::timespec {
            tv_sec: w.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(w.subsec_nanos() as i32),
        });
        let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: two valid pollfds; the timeout, when given, outlives the
        // call; no signal mask.
        let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, timeout_ptr, std::ptr::null()) };
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let impairment = settings.lock().map(|s| *s).unwrap_or(Impairment::NONE);
            for _ in 0..READ_BURST {
                // SAFETY: reads at most buf.len() bytes into buf.
                let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                let Ok(n) = usize::try_from(n) else { break };
                let frame = &buf[..n];
                if is_ip(frame) && rng.random::<f64>() * 100.0 < impairment.loss_percent {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if queue.len() >= QUEUE_LIMIT {
                    counts.overflowed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let jitter_ns = u64::try_from(impairment.jitter.as_nanos()).unwrap_or(u64::MAX);
                let extra = Duration::from_nanos(if jitter_ns == 0 { 0 } else { rng.random_range(0..=jitter_ns) });
                let due = Instant::now() + impairment.delay + extra;
                // Never before the frame ahead of it: the order holds.
                let due = queue.back().map_or(due, |(last, _)| due.max(*last));
                queue.push_back((due, frame.to_vec()));
            }
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, frame)) = queue.pop_front() else { break };
            // SAFETY: writes frame.len() bytes from a valid buffer.
            let written = unsafe { libc::write(to.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            let counter = if written == frame.len() as isize { &counts.passed } else { &counts.overflowed };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}
