//! The load generator: HTTP/1.1 keep-alive connections opened from inside a pod's network
//! namespace to `169.254.169.254:80`, so every request takes the node's DNAT path. One
//! generator (this one) drives ours, the original and the floor alike.
//!
//! ```text
//! Plan (connections, pace, paths) -> run_in(pod) -> thread in the pod netns, current-thread
//! runtime -> C connections -> Outcome (latencies, errors, elapsed) -> Latencies (p50, p99)
//! ```
//!
//! Fixed rates are open loop: request `i` is due at `t0 + i / rate`; when the connection is
//! still busy with an earlier answer at that time, its latency counts from the due time, so a
//! server that falls behind is charged for the queue it causes (no coordinated omission);
//! otherwise from when it is sent (the timer's lateness is the generator's own). Saturation is closed loop: each connection sends its next request
//! as soon as the previous answer is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadpodid_testkit::netns::{IMDS_IP, Pod};
use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pace {
    /// Open loop at this many requests per second in total, spread over the connections.
    Rate(f64),
    /// Closed loop: every connection sends again as soon as it has an answer.
    Saturate,
}

/// One load run from one pod.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Keep-alive connections kept open for the run.
    pub(crate) connections: usize,
    pub(crate) pace: Pace,
    /// How long requests are started for.
    pub(crate) duration: Duration,
    /// Stop after this many requests in total, whichever comes first.
    pub(crate) requests: Option<usize>,
    /// Request targets (path and query), used in rotation.
    pub(crate) paths: Arc<Vec<String>>,
}

/// What a load run observed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Latency of every answered request, microseconds (errors included: they took that long).
    pub(crate) latencies_us: Vec<u64>,
    /// Answers other than 200 and broken connections.
    pub(crate) errors: u64,
    /// First status other than 200 seen, with the start of its body (for the error message).
    pub(crate) first_error: Option<String>,
    /// From the first request to the last answer.
    pub(crate) elapsed: Duration,
}

impl Outcome {
    /// Answered requests per second over the run.
    pub(crate) fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.latencies_us.len() as f64 / secs } else { 0.0 }
    }

    /// Sorted latencies for percentiles.
    pub(crate) fn latencies(&self) -> Latencies {
        Latencies::new(self.latencies_us.clone())
    }

    fn merge(&mut self, other: Outcome) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Latencies sorted once, for nearest-rank percentiles.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Vec<u64>);

impl Latencies {
    pub(crate) fn new(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        Self(us)
    }

    /// The nearest-rank percentile `q` (0 < q ≤ 1) in milliseconds; NaN without samples (the
    /// report's median skips it).
    pub(crate) fn percentile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = (q * self.0.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.0.len()) - 1;
        self.0[index] as f64 / 1000.0
    }
}

/// Runs `plan` from inside `pod`'s network namespace, on a thread of its own (so the sockets
/// are the pod's), and returns when every connection is done.
pub(crate) async fn run_in(pod: Arc<Pod>, plan: Plan) -> anyhow::Result<Outcome> {
    tokio::task::spawn_blocking(move || {
        pod.ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(run(plan)).map_err(std::io::Error::other)
        })
    })
    .await
    .context("load thread")?
    .context("load in the pod namespace")
}

async fn run(plan: Plan) -> anyhow::Result<Outcome> {
    let target = SocketAddr::from((IMDS_IP, 80));
    let mut senders = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        senders.push(connect(target).await?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(j, sender)| tokio::spawn(connection(sender, j, start, plan.clone(), target)))
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.merge(task.await.context("connection task")?);
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(target).await.with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One connection's share of the plan: requests `j, j + C, j + 2C, …`.
async fn connection(mut sender: Sender, j: usize, start: Instant, plan: Plan, target: SocketAddr) -> Outcome {
    let mut out = Outcome::default();
    let end = start + plan.duration;
    let mut i = j;
    let mut free_at = start;
    loop {
        let due = match plan.pace {
            Pace::Rate(rate) => start + Duration::from_secs_f64(i as f64 / rate),
            Pace::Saturate => Instant::now(),
        };
        if due >= end || plan.requests.is_some_and(|n| i >= n) {
            break;
        }
        let from = if free_at > due {
            // Behind schedule because of slow answers: the wait counts (no coordinated omission).
            due
        } else {
            // On schedule: the timer's own lateness (up to a tick) is the generator's, not the server's.
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        };
        let path = &plan.paths[i % plan.paths.len()];
        let answer = send(&mut sender, path).await;
        free_at = Instant::now();
        out.latencies_us.push(free_at.duration_since(from).as_micros() as u64);
        match answer {
            Ok((200, _)) => {}
            Ok((status, body)) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| format!("{status}: {}", body.chars().take(300).collect::<String>()));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("connection: {e:#}"));
                match connect(target).await {
                    Ok(s) => sender = s,
                    Err(_) => break,
                }
            }
        }
        i += plan.connections;
    }
    out
}

async fn send(sender: &mut Sender, path: &str) -> anyhow::Result<(u16, String)> {
    sender.ready().await?;
    let response = sender.send_request(token_request(path)?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let text = if status == 200 { String::new() } else { String::from_utf8_lossy(&body).into_owned() };
    Ok((status, text))
}

/// The IMDS-shaped GET every request of the benchmark sends.
fn token_request(path: &str) -> anyhow::Result<http::Request<Empty<Bytes>>> {
    Ok(http::Request::get(path)
        .header(http::header::HOST, IMDS_IP.to_string())
        .header("Metadata", "true")
        .body(Empty::<Bytes>::new())?)
}

/// One request on a new connection from `pod`, for checks before a measurement: status and body.
pub(crate) async fn get_once(pod: Arc<Pod>, path: String) -> anyhow::Result<(u16, String)> {
    tokio::task::spawn_blocking(move || {
        pod.ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut sender = connect(SocketAddr::from((IMDS_IP, 80))).await?;
                sender.ready().await?;
                let response = sender.send_request(token_request(&path)?).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
            })
            .map_err(std::io::Error::other)
        })
    })
    .await
    .context("request thread")?
    .context("request from the pod namespace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latencies::new((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(l.percentile_ms(0.5), 50.0);
        assert_eq!(l.percentile_ms(0.99), 99.0);
        assert_eq!(l.percentile_ms(1.0), 100.0);
        let one = Latencies::new(vec![1500]);
        assert_eq!((one.percentile_ms(0.5), one.percentile_ms(0.99)), (1.5, 1.5));
        let few = Latencies::new(vec![1000, 2000, 3000]);
        assert_eq!(few.percentile_ms(0.5), 2.0, "rank ceil(1.5) = 2");
        assert_eq!(few.percentile_ms(0.99), 3.0);
        assert!(Latencies::new(Vec::new()).percentile_ms(0.5).is_nan());
    }

    #[test]
    fn rps_counts_answers_over_the_elapsed_time() {
        let o =
            Outcome { latencies_us: vec![10; 500], errors: 2, first_error: None, elapsed: Duration::from_millis(250) };
        assert_eq!(o.rps(), 2000.0);
        assert_eq!(Outcome::default().rps(), 0.0);
    }

    #[test]
    fn merge_keeps_the_first_error() {
        let mut a = Outcome { latencies_us: vec![1], errors: 0, first_error: None, elapsed: Duration::ZERO };
        a.merge(Outcome { latencies_us: vec![2], errors: 1, first_error: Some("404".into()), elapsed: Duration::ZERO });
        a.merge(Outcome { latencies_us: vec![], errors: 1, first_error: Some("500".into()), elapsed: Duration::ZERO });
        assert_eq!((a.latencies_us.len(), a.errors, a.first_error.as_deref()), (2, 2, Some("404")));
    }
}
