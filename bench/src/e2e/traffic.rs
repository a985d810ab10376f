//! The traffic ends, each a thread that entered a VM's namespace and pinned itself: the UDP
//! receiver (recvmmsg), the UDP ping-pong, the short-connection TCP client and server; and
//! iperf3, run as processes in the VMs.

use std::{
    io::{Read, Write},
    mem,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sluice_dataplane::lab::Lab;

use super::{generator::MAGIC, netns};
use crate::affinity::pin_current_thread;

/// Runs `body` in a new thread inside `netns`, pinned to `cpu`.
fn spawn_in<T: Send + 'static>(
    name: &str,
    netns_name: &str,
    cpu: usize,
    body: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let ns = netns_name.to_string();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            netns::enter(&ns)?;
            pin_current_thread(cpu)?;
            body()
        })
        .with_context(|| format!("starting thread {name}"))
}

fn join<T>(h: JoinHandle<Result<T>>, what: &str) -> Result<T> {
    h.join().map_err(|_| anyhow!("{what}: thread panicked"))?
}

/// A server thread in a VM: it runs until its stop flag is set, checking it at least every
/// [`POLL`].
struct Worker<T> {
    what: &'static str,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<T>>>,
}

/// How long a server thread blocks before it looks at its stop flag again.
const POLL: Duration = Duration::from_millis(20);

impl<T: Send + 'static> Worker<T> {
    /// Starts `body` in `netns` pinned to `cpu` and waits until it calls `ready` (its
    /// socket is bound), or fails with its error.
    fn start(
        what: &'static str,
        netns_name: &str,
        cpu: usize,
        body: impl FnOnce(&AtomicBool, &dyn Fn()) -> Result<T> + Send + 'static,
    ) -> Result<Worker<T>> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = stop.clone();
        let handle = spawn_in(what, netns_name, cpu, move || {
            body(&flag, &|| {
                let _ = ready_tx.send(());
            })
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(Worker {
                what,
                stop,
                handle: Some(handle),
            }),
            Err(_) => Err(join(handle, what)
                .err()
                .unwrap_or_else(|| anyhow!("{what} did not start"))),
        }
    }

    /// Stops it and returns what it returned.
    fn finish(mut self) -> Result<T> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.handle.take().expect("running"), self.what)
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// SO_RCVBUFFORCE (root): the datagrams of a burst the reader has not caught up with yet.
const RCVBUF: libc::c_int = 16 << 20;
const MMSG: usize = 64;

// ---- UDP receiver ----

/// Counts the generator's datagrams arriving on a UDP socket, with `recvmmsg`.
pub struct UdpSink {
    count: Arc<AtomicU64>,
    worker: Worker<SinkCounts>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCounts {
    /// Datagrams carrying the generator's magic.
    pub datagrams: u64,
    /// Anything else that arrived.
    pub foreign: u64,
}

impl UdpSink {
    /// Binds `addr` in `netns` from a thread pinned to `cpu`; returns once it is bound.
    pub fn start(netns_name: &str, cpu: usize, addr: SocketAddrV4) -> Result<UdpSink> {
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let worker = Worker::start("UDP receiver", netns_name, cpu, move |stop, ready| {
            let sock = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
            set_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)?;
            sock.set_read_timeout(Some(POLL))?;
            ready();
            receive(&sock, stop, &c)
        })?;
        Ok(UdpSink { count, worker })
    }

    /// Datagrams counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the count stops growing for `quiet` (the socket buffer drained), at
    /// most `max`.
    pub fn drain(&self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        let mut last = self.count();
        while Instant::now() < deadline {
            thread::sleep(quiet);
            let now = self.count();
            if now == last {
                return;
            }
            last = now;
        }
    }

    pub fn stop(self) -> Result<SinkCounts> {
        self.worker.finish()
    }
}

fn set_int(
    sock: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> Result<()> {
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt");
    }
    Ok(())
}

fn receive(sock: &UdpSocket, stop: &AtomicBool, count: &AtomicU64) -> Result<SinkCounts> {
    let mut bufs = vec![[0u8; 64]; MMSG];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut counts = SinkCounts::default();
    while !stop.load(Ordering::Relaxed) {
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                MMSG as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return Err(e).context("recvmmsg"),
            }
        }
        for m in &msgs[..n as usize] {
            let len = m.msg_len as usize;
            let base = m.msg_hdr.msg_iov;
            let data = unsafe { std::slice::from_raw_parts((*base).iov_base as *const u8, len) };
            if data.starts_with(MAGIC) {
                counts.datagrams += 1;
            } else {
                counts.foreign += 1;
            }
        }
        count.store(counts.datagrams, Ordering::Relaxed);
    }
    Ok(counts)
}

// ---- UDP ping-pong ----

/// Payload: sequence number, send timestamp (ns, CLOCK_MONOTONIC of this process), and
/// padding to 64-byte frames.
const PING_LEN: usize = 18;

/// An echo server for the ping-pong in `netns`, pinned to `cpu`.
pub struct Echo(Worker<u64>);

impl Echo {
    pub fn start(netns_name: &str, cpu: usize, addr: SocketAddrV4) -> Result<Echo> {
        let worker = Worker::start("echo server", netns_name, cpu, move |stop, ready| {
            let sock = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
            sock.set_read_timeout(Some(POLL))?;
            ready();
            let mut buf = [0u8; 256];
            let mut echoed = 0;
            while !stop.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        sock.send_to(&buf[..n], from)?;
                        echoed += 1;
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(e).context("echo recv"),
                }
            }
            Ok(echoed)
        })?;
        Ok(Echo(worker))
    }

    /// Stops it; returns the datagrams it echoed.
    pub fn stop(self) -> Result<u64> {
        self.0.finish()
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Round trips of one ping-pong series.
#[derive(Clone, Debug, Default)]
pub struct PingPong {
    /// Round-trip times in µs, in order.
    pub rtt_us: Vec<f64>,
    /// Pings without an answer within the timeout.
    pub lost: u64,
}

/// `warmup` + `count` pings, one outstanding at a time, from `netns` (pinned to `cpu`) to
/// `server`; an answer later than `timeout` counts as lost.
pub fn ping_pong(
    netns_name: &str,
    cpu: usize,
    server: SocketAddrV4,
    warmup: u32,
    count: u32,
    timeout: Duration,
) -> Result<PingPong> {
    let h = spawn_in("e2e-ping", netns_name, cpu, move || {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(timeout))?;
        let clock = Instant::now();
        let mut out = PingPong {
            rtt_us: Vec::with_capacity(count as usize),
            lost: 0,
        };
        let mut buf = [0u8; 256];
        for seq in 0..u64::from(warmup + count) {
            let mut msg = [0u8; PING_LEN];
            let sent = clock.elapsed().as_nanos() as u64;
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            msg[8..16].copy_from_slice(&sent.to_le_bytes());
            sock.send(&msg)?;
            let rtt = loop {
                match sock.recv(&mut buf) {
                    Ok(n) if n == PING_LEN && buf[..8] == seq.to_le_bytes() => {
                        let ts = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
                        break Some(clock.elapsed().as_nanos() as u64 - ts);
                    }
                    Ok(_) => continue, // a late answer to an earlier, lost ping
                    Err(e) if is_timeout(&e) => break None,
                    Err(e) => return Err(e).context("ping recv"),
                }
            };
            if seq < u64::from(warmup) {
                continue;
            }
            match rtt {
                Some(ns) => out.rtt_us.push(ns as f64 / 1e3),
                None => out.lost += 1,
            }
        }
        Ok(out)
    })?;
    join(h, "ping-pong client")
}

// ---- TCP connections per second ----

const CRR_REQUEST: u8 = b'r';

/// A server for short connections: accept, read one byte, answer one byte, close.
pub struct CrrServer {
    counts: Arc<CrrCounts>,
    worker: Worker<u64>,
}

/// What a [`CrrServer`] answered so far.
#[derive(Default)]
struct CrrCounts {
    served: AtomicU64,
    /// Answered connections from another address than the expected client.
    foreign: AtomicU64,
}

impl CrrServer {
    /// Listens on `addr` in `netns`, pinned to `cpu`.
    pub fn start(netns_name: &str, cpu: usize, addr: SocketAddrV4) -> Result<CrrServer> {
        Self::start_expecting(netns_name, cpu, addr, None)
    }

    /// As [`CrrServer::start`], counting as foreign every answered connection whose peer
    /// is not `client` (when given): a translation that hid the client's address shows.
    pub fn start_expecting(
        netns_name: &str,
        cpu: usize,
        addr: SocketAddrV4,
        client: Option<Ipv4Addr>,
    ) -> Result<CrrServer> {
        let counts = Arc::new(CrrCounts::default());
        let c = counts.clone();
        let worker = Worker::start("TCP server", netns_name, cpu, move |stop, ready| {
            let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            ready();
            while !stop.load(Ordering::Relaxed) {
                // Blocks until a connection is pending (no added latency), at most POLL.
                if !readable(&listener, POLL)? {
                    continue;
                }
                let (mut s, peer) = listener.accept().context("accept")?;
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).is_ok() && s.write_all(b"a").is_ok() {
                    c.served.fetch_add(1, Ordering::Relaxed);
                    if client.is_some_and(|ip| peer.ip() != ip) {
                        c.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(c.served.load(Ordering::Relaxed))
        })?;
        Ok(CrrServer { counts, worker })
    }

    /// Connections answered so far.
    pub fn served(&self) -> u64 {
        self.counts.served.load(Ordering::Relaxed)
    }

    /// Answered connections from another peer than the expected client so far.
    pub fn foreign(&self) -> u64 {
        self.counts.foreign.load(Ordering::Relaxed)
    }

    /// Stops it; returns the connections it answered.
    pub fn stop(self) -> Result<u64> {
        self.worker.finish()
    }
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: &impl AsRawFd, timeout: Duration) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(false);
        }
        return Err(e).context("poll");
    }
    Ok(n > 0)
}

/// What the short-connection client did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Crr {
    pub connections: u64,
    pub failures: u64,
    pub elapsed: Duration,
}

/// Short connections one after another for `secs`: connect, send a byte, read the answer,
/// close.
pub fn crr_client(netns_name: &str, cpu: usize, server: SocketAddrV4, secs: f64) -> Result<Crr> {
    crr_client_to(netns_name, cpu, vec![server], secs)
}

/// As [`crr_client`], the connections going to `servers` in turn.
pub fn crr_client_to(
    netns_name: &str,
    cpu: usize,
    servers: Vec<SocketAddrV4>,
    secs: f64,
) -> Result<Crr> {
    anyhow::ensure!(!servers.is_empty(), "no server to connect to");
    let h = spawn_in("e2e-crr-client", netns_name, cpu, move || {
        let deadline = Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut out = Crr::default();
        let mut next = servers.iter().cycle();
        while start.elapsed() < deadline {
            let server = *next.next().expect("a cycle over a non-empty list");
            let one = || -> std::io::Result<()> {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::V4(server), Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.write_all(&[CRR_REQUEST])?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                Ok(())
            };
            match one() {
                Ok(()) => out.connections += 1,
                Err(_) => out.failures += 1,
            }
        }
        out.elapsed = start.elapsed();
        Ok(out)
    })?;
    join(h, "TCP client")
}

// ---- iperf3 ----

/// One iperf3 run's result.
#[derive(Clone, Copy, Debug)]
pub struct Iperf {
    pub bits_per_second: f64,
    pub retransmits: u64,
}

/// `iperf3 -s -1` in `rx_vm` (pinned to `rx_cpu` with taskset), then a client of `secs`
/// in `tx_vm` (pinned to `tx_cpu`) to `server`.
#[allow(clippy::too_many_arguments)]
pub fn iperf3(
    lab: &Lab,
    tx_vm: &str,
    tx_cpu: usize,
    rx_vm: &str,
    rx_cpu: usize,
    server: Ipv4Addr,
    port: u16,
    secs: f64,
) -> Result<Iperf> {
    let (port, rx_cpu, tx_cpu) = (port.to_string(), rx_cpu.to_string(), tx_cpu.to_string());
    let mut srv = lab.spawn(
        rx_vm,
        &[
            "taskset",
            "-c",
            &rx_cpu,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port,
            "--forceflush",
        ],
    )?;
    srv.wait_for_stdout(Duration::from_secs(10), |s| s.contains("listening"))
        .context("iperf3 server")?;
    let time = format!("{secs}");
    let server = server.to_string();
    let client = lab.exec(
        tx_vm,
        &[
            "taskset", "-c", &tx_cpu, "iperf3", "-c", &server, "-p", &port, "-t", &time, "-J",
        ],
    )?;
    srv.wait(Duration::from_secs(10))?;
    parse_iperf(&client.stdout)
}

fn parse_iperf(json: &str) -> Result<Iperf> {
    let v: Value =
        serde_json::from_str(json).with_context(|| format!("iperf3 -J printed: {json}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    Ok(Iperf {
        bits_per_second: end["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("no end.sum_received.bits_per_second in {json}"))?,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_json_gives_received_rate_and_retransmits() {
        let j = r#"{"end":{"sum_sent":{"bits_per_second":2.1e9,"retransmits":3},"sum_received":{"bits_per_second":2.0e9}}}"#;
        let r = parse_iperf(j).unwrap();
        assert_eq!(r.bits_per_second, 2.0e9);
        assert_eq!(r.retransmits, 3);
        let err = parse_iperf(r#"{"error":"unable to connect"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"));
        assert!(parse_iperf("not json").is_err());
    }
}
