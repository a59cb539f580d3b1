//! Leadership as the writers see it, and the gates that keep every write behind it.
//!
//! The election publishes the instant until which this replica may act ([`LeaderView`]). Each
//! API-server write (a tower layer on the client MIC writes with) and each ARM identity update
//! ([`GatedArm`]) checks it right before it is sent, and is abandoned the moment the instant
//! passes: a replica that cannot prove it renewed stops writing on its own clock, without
//! waiting for a hung renewal to fail.

use std::sync::Arc;
use std::task::{Context, Poll};

use aadpodid_azure::arm::{Arm, ArmError, NodeIdentities, VmTarget};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::lease;

/// Why a write was refused or abandoned.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("not the leader: write refused")]
pub struct NotLeader;

// === LeaderView ===

/// Read side of the election: until when this replica leads (`None`: it does not).
/// Renewals move the instant without waking anyone; gaining or losing leadership does.
#[derive(Clone, Debug)]
pub struct LeaderView(watch::Receiver<Option<Instant>>);

/// Write side, owned by the election.
#[derive(Debug)]
pub struct LeaderPublisher(watch::Sender<Option<Instant>>);

/// A connected publisher and view; nobody leads yet.
pub fn channel() -> (LeaderPublisher, LeaderView) {
    let (tx, rx) = watch::channel(None);
    (LeaderPublisher(tx), LeaderView(rx))
}

impl LeaderPublisher {
    /// Records the new deadline; only a change between leading and not leading wakes watchers.
    /// False when no view is left.
    pub fn publish(&self, until: Option<Instant>) -> bool {
        self.0.send_if_modified(|current| {
            let transition = current.is_some() != until.is_some();
            *current = until;
            transition
        });
        !self.0.is_closed()
    }

    /// The deadline last published.
    pub fn until(&self) -> Option<Instant> {
        *self.0.borrow()
    }
}

impl LeaderView {
    /// Whether this replica may write now.
    pub fn is_leading(&self) -> bool {
        lease::is_leading(*self.0.borrow(), Instant::now())
    }

    /// Completes once this replica does not lead (at once if it does not lead now): when its
    /// deadline passes without a renewal, or when the election says so.
    pub async fn lost(&self) {
        let mut rx = self.0.clone();
        loop {
            let Some(until) = *rx.borrow_and_update() else { return };
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Completes when leadership is gained or lost; an error when the election is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.0.changed().await
    }

    /// Runs `work` while this replica leads; `Err` when it did not lead at the start or stopped
    /// leading before `work` finished (then `work` is dropped, abandoning what it was sending).
    pub async fn while_leading<T>(&self, work: impl Future<Output = T>) -> Result<T, NotLeader> {
        if !self.is_leading() {
            return Err(NotLeader);
        }
        tokio::select! {
            biased;
            () = self.lost() => Err(NotLeader),
            out = work => Ok(out),
        }
    }
}

// === API-server writes ===

/// A tower layer for the kube client MIC writes with: reads pass, every other request is sent
/// only while this replica leads and is abandoned when it stops leading.
#[derive(Clone, Debug)]
pub struct WriteGateLayer(pub LeaderView);

impl<S> tower::Layer<S> for WriteGateLayer {
    type Service = WriteGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WriteGate { inner, leader: self.0.clone() }
    }
}

/// See [`WriteGateLayer`].
#[derive(Clone, Debug)]
pub struct WriteGate<S> {
    inner: S,
    leader: LeaderView,
}

fn is_read(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

impl<S, B> tower::Service<http::Request<B>> for WriteGate<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<S::Response, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_read(req.method()) {
            let sent = self.inner.call(req);
            return Box::pin(async move { sent.await.map_err(Into::into) });
        }
        if !self.leader.is_leading() {
            tracing::debug!(method = %req.method(), path = req.uri().path(), "API write refused: not the leader");
            return Box::pin(std::future::ready(Err(NotLeader.into())));
        }
        let sent = self.inner.call(req);
        let leader = self.leader.clone();
        Box::pin(async move {
            match leader.while_leading(sent).await {
                Ok(res) => res.map_err(Into::into),
                Err(e) => Err(e.into()),
            }
        })
    }
}

// === ARM writes ===

/// [`Arm`] whose updates are sent only while this replica leads and abandoned when it stops
/// leading (reads pass).
pub struct GatedArm {
    inner: Arc<dyn Arm>,
    leader: LeaderView,
}

impl GatedArm {
    pub fn wrap(inner: Arc<dyn Arm>, leader: LeaderView) -> Arc<dyn Arm> {
        Arc::new(Self { inner, leader })
    }
}

#[async_trait::async_trait]
impl Arm for GatedArm {
    async fn identities(&self, target: &VmTarget) -> Result<NodeIdentities, ArmError> {
        self.inner.identities(target).await
    }

    async fn update_user_msi(&self, target: &VmTarget, add: &[String], remove: &[String]) -> Result<(), ArmError> {
        match self.leader.while_leading(self.inner.update_user_msi(target, add, remove)).await {
            Ok(res) => res,
            Err(e) => {
                tracing::warn!(%target, "ARM identity update not sent or abandoned: not the leader");
                Err(ArmError::Abandoned(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn leadership_lapses_at_its_deadline_without_any_message() {
        let (publisher, view) = channel();
        assert!(!view.is_leading());
        publisher.publish(Some(Instant::now() + Duration::from_secs(5)));
        assert!(view.is_leading());
        let started = Instant::now();
        view.lost().await;
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn work_is_abandoned_when_leadership_lapses() {
        let (publisher, view) = channel();
        publisher.publish(Some(Instant::now() + Duration::from_secs(2)));
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert!(view.while_leading(slow).await.is_err());
        assert!(view.while_leading(async { 1 }).await.is_err(), "refused once lapsed");
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_extend_without_waking_and_losing_wakes() {
        let (publisher, mut view) = channel();
        publisher.publish(Some(Instant::now() + Duration::from_secs(2)));
        view.changed().await.expect("gained");
        publisher.publish(Some(Instant::now() + Duration::from_secs(4)));
        let quiet = tokio::time::timeout(Duration::from_secs(1), view.changed()).await;
        assert!(quiet.is_err(), "a renewal wakes nobody");
        assert!(view.while_leading(tokio::time::sleep(Duration::from_secs(2))).await.is_ok(), "renewal counted");
        publisher.publish(None);
        view.changed().await.expect("lost");
        assert!(!view.is_leading());
    }
}
