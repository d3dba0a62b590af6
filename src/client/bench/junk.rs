//! `calldesk bench sip-junk`: what a SIP scanner sends, at a fixed rate, to a calldesk SIP
//! port on this machine: INVITEs outside any dialog, each with a Call-ID and branch of its own,
//! from `--junk-from` (an address calldesk allows, or one it does not) for `--duration`. Prints
//! what was sent, how many were answered, and the server's RSS (its peak, sampled every
//! 100 ms) beside its CPU time. Loopback only, and bounded by `--duration`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{usage::ServerUsage, BenchArgs};

/// Datagrams per pacing step: the sender sleeps to the next millisecond after each.
const STEP: Duration = Duration::from_millis(1);

/// Sends the junk and prints the figures.
pub(super) async fn junk(args: &BenchArgs) -> Result<(), String> {
    let target = args
        .sip_target
        .ok_or("sip-junk needs --sip-target ADDR (calldesk's --sip-listen)")?;
    let from = args.junk_from;
    if !target.ip().is_loopback() || !from.is_loopback() {
        return Err("sip-junk only sends from and to loopback addresses".into());
    }
    if args.rate.is_nan() || args.rate <= 0.0 {
        return Err("sip-junk needs --rate: datagrams per second".into());
    }
    let socket = UdpSocket::bind((from, 0)).map_err(|e| format!("bind {from}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let socket = Arc::new(socket);
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let reader = {
        let (socket, done, answered) = (socket.clone(), done.clone(), answered.clone());
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let rate = args.rate;
    let duration = args.duration;
    let sender = {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || send(&socket, target, from, rate, duration))
    };
    let pids = args.server_pid.clone();
    let before = ServerUsage::read(&pids);
    let mut peak = before.map(|u| u.rss_kib).unwrap_or_default();
    while !sender.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(now) = ServerUsage::read(&pids) {
            peak = peak.max(now.rss_kib);
        }
    }
    let (sent, elapsed) = sender.await.map_err(|e| e.to_string())??;
    // Answers still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let _ = reader.await;
    let after = ServerUsage::read(&pids);
    println!(
        "sip-junk from {from}: {sent} INVITEs in {:.2} s ({:.0}/s), {} answered",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        answered.load(Ordering::Relaxed)
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "  server: RSS {:.1} MiB before, {:.1} MiB at most during, {:.1} MiB at the end; \
             CPU {:.0}% of a core",
            before.rss_kib as f64 / 1024.0,
            peak as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
            (after.cpu_seconds - before.cpu_seconds) / elapsed.as_secs_f64() * 100.0
        );
    }
    Ok(())
}

/// Sends INVITEs to `target` at `rate` per second for `duration`; returns how many and how
/// long it took.
fn send(
    socket: &UdpSocket,
    target: SocketAddr,
    from: IpAddr,
    rate: f64,
    duration: Duration,
) -> Result<(u64, Duration), String> {
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    let per_step = rate * STEP.as_secs_f64();
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut step: u32 = 0;
    while started.elapsed() < duration {
        step += 1;
        let due = (per_step * f64::from(step)) as u64;
        while sent < due {
            let invite = format!(
                "INVITE sip:100@{target} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {from}:{port};branch=z9hG4bKjunk{sent}\r\n\
                 From: <sip:scanner@{from}>;tag=junk{sent}\r\n\
                 To: <sip:100@{target}>\r\n\
                 Call-ID: junk-{sent}@{from}\r\n\
                 CSeq: 1 INVITE\r\n\
                 Max-Forwards: 70\r\n\
                 Contact: <sip:scanner@{from}:{port}>\r\n\
                 User-Agent: friendly-scanner\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            // A full socket buffer drops the datagram, as the network would.
            let _ = socket.send_to(invite.as_bytes(), target);
            sent += 1;
        }
        if let Some(wait) = (STEP * step).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok((sent, started.elapsed()))
}
