//! The embedded rumqttd router, in process, with no listener of its own.
//!
//! `rumqttd::Router::spawn` runs the router on its own thread and returns the
//! sending end of its event channel. Each client the front has accepted is
//! attached with a [`Link`]: the router's in-process link (`LinkTx` to hand
//! it packets, `LinkRx` for what it has for the client). Nothing listens on
//! a socket, so there is no secret to guard and no port to race for.
//!
//! Three properties of rumqttd 0.20's links shape this module (read in its
//! `link/local.rs` and `router/routing.rs`):
//! - `LinkBuilder::build` blocks its thread until the router answers, so it
//!   runs on the blocking pool ([`Router::attach`]).
//! - `LinkTx`'s sending methods block when the router's event channel (1,000
//!   events) is full. The front therefore never calls them: it pushes packets
//!   into the link's buffer itself and rings the router with a [`Bell`],
//!   which tries a non-blocking send and, when the channel is full, hands
//!   back a future that waits for room without holding a worker thread.
//! - The router's event type is public but not nameable from outside the
//!   crate; the closures and the generic [`Bell`] below let the compiler name
//!   it for us.

use std::{future::Future, pin::Pin, sync::Arc};

use rumqttd::{
    RouterConfig,
    local::{LinkBuilder, LinkError, LinkRx, LinkTx},
    protocol::{Disconnect, DisconnectReasonCode, Packet},
};

use crate::config::Limits;

/// Size of each in-memory commit-log segment, at least. rumqttd keeps
/// `SEGMENT_COUNT` of them per subscription filter, so this bounds the
/// memory a filter holds for slow subscribers.
const MIN_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
const SEGMENT_COUNT: usize = 4;
/// QoS 0 deliveries rumqttd reads for one client in one pass.
const MAX_OUTGOING_PACKETS: u64 = 200;

/// Why a client could not be attached to the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// rumqttd's own error, as text: it carries a whole router event.
    #[error("the router refused the session: {0}")]
    Link(String),
    #[error("the attach task ended without an answer")]
    Gone,
}

/// A future that completes once the router has been told about new packets
/// (`false`: the router is gone).
pub(crate) type Ringing = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What a ring did.
pub(crate) enum Ring {
    /// The router has been told.
    Done,
    /// The router's channel is full: await this, and send nothing more to
    /// the router until it completes.
    Wait(Ringing),
    /// The router has stopped.
    Gone,
}

/// Tells the router that a link's buffer holds new packets, without ever
/// blocking the calling thread.
pub(crate) struct Bell(Box<dyn Ringer>);

impl std::fmt::Debug for Bell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bell")
    }
}

impl Bell {
    pub(crate) fn ring(&mut self) -> Ring {
        self.0.ring()
    }
}

trait Ringer: Send {
    fn ring(&mut self) -> Ring;
}

/// The router's "device data" event is `(connection id, Event::DeviceData)`
/// with `Event` unnameable here. `mint` is a `LinkTx` for the same
/// connection id whose channel is our own: its `try_publish` pushes a dummy
/// packet into a dummy buffer and sends exactly that event into `minted`,
/// from where it is forwarded to the real router channel with `try_send`,
/// or, when that is full, with `send_async`.
struct EventBell<E> {
    router: flume::Sender<(usize, E)>,
    mint: LinkTx,
    minted: flume::Receiver<(usize, E)>,
}

impl<E: Send + 'static> Ringer for EventBell<E> {
    fn ring(&mut self) -> Ring {
        // The dummy buffer is ours alone; emptying it keeps it at one entry.
        self.mint.buffer().clear();
        if self.mint.try_publish("", "").is_err() {
            // Only if `minted` is full, which `try_recv` below prevents.
            return Ring::Gone;
        }
        let Ok(event) = self.minted.try_recv() else {
            return Ring::Gone;
        };
        match self.router.try_send(event) {
            Ok(()) => Ring::Done,
            Err(flume::TrySendError::Full(event)) => {
                let router = self.router.clone();
                Ring::Wait(Box::pin(
                    async move { router.send_async(event).await.is_ok() },
                ))
            }
            Err(flume::TrySendError::Disconnected(_)) => Ring::Gone,
        }
    }
}

/// A client's way into the router. Dropping it detaches it (see
/// [`Link::detach`]) unless that was done already.
pub(crate) struct Link {
    way: Way,
    /// The router restored a persistent session for this client id.
    pub(crate) session_present: bool,
    detached: bool,
}

enum Way {
    /// A link of the client's own: an ops center, which subscribes through
    /// the router.
    Own { tx: LinkTx, rx: LinkRx, bell: Bell },
    /// One of the router's shared ingress links: a post, which only
    /// publishes through the router (its receipts and commands come through
    /// the front), so it needs no router state of its own.
    Shared(Arc<Ingress>),
}

/// A link that many posts publish through. A post always uses the same one,
/// so its publishes stay in order.
struct Ingress {
    tx: LinkTx,
    // std Mutex: held to mint and send one event, never across an await.
    bell: std::sync::Mutex<Bell>,
    /// Kept so that the router's sends to it do not fail; nothing arrives
    /// but its CONNACK, since it never subscribes or publishes at QoS > 0.
    rx: LinkRx,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = match &self.way {
            Way::Own { rx, .. } => rx.id(),
            Way::Shared(ingress) => ingress.rx.id(),
        };
        f.debug_struct("Link")
            .field("id", &id)
            .field("shared", &matches!(self.way, Way::Shared(_)))
            .field("session_present", &self.session_present)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Hands `packets` to the router and rings it.
    pub(crate) fn send(&mut self, packets: impl IntoIterator<Item = Packet>) -> Ring {
        match &mut self.way {
            Way::Own { tx, bell, .. } => {
                tx.buffer().extend(packets);
                bell.ring()
            }
            Way::Shared(ingress) => {
                ingress.tx.buffer().extend(packets);
                ingress.bell.lock().expect("bell lock").ring()
            }
        }
    }

    /// What the router has for this client, for a link of its own.
    pub(crate) fn receiver(&mut self) -> Option<&mut LinkRx> {
        match &mut self.way {
            Way::Own { rx, .. } => Some(rx),
            Way::Shared(_) => None,
        }
    }

    /// Gives back the memory of an idle link's inbound buffer: rumqttd sizes
    /// it for 200 packets of about 400 bytes, and swaps it with its own on
    /// every batch, so a large one comes back after a burst.
    pub(crate) fn shrink(&self, keep: usize) {
        if let Way::Own { tx, .. } = &self.way {
            let mut buffer = tx.buffer();
            if buffer.is_empty() && buffer.capacity() > 4 * keep {
                buffer.shrink_to(keep);
            }
        }
    }

    /// Marks the link as ended by the router itself: nothing to tell it.
    pub(crate) fn forget(&mut self) {
        self.detached = true;
    }

    /// Hands the router `last` (a will, say) and then, for a link of the
    /// client's own, the end of the link, so that the router frees the
    /// connection (saving a persistent session). The router knows a link
    /// only by its slot: a link dropped without this would hold its slot,
    /// and its subscriptions, for the life of the process.
    pub(crate) fn detach(&mut self, last: impl IntoIterator<Item = Packet>) -> Ring {
        self.detached = true;
        let end = matches!(self.way, Way::Own { .. }).then(|| {
            Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            )
        });
        self.send(last.into_iter().chain(end))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.detached || matches!(self.way, Way::Shared(_)) {
            return;
        }
        if let Ring::Wait(ringing) = self.detach([]) {
            // Dropped outside the runtime only if the runtime is gone, and
            // the router with it.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(ringing);
            }
        }
    }
}

type Attach = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Bell, bool), RouterError> + Send + Sync;

/// Shared ingress links for posts. More of them means less contention on
/// each one's buffer lock; each ring makes the router take a whole batch.
const INGRESS_LINKS: usize = 8;

/// The running router.
#[derive(Clone)]
pub(crate) struct Router {
    attach: Arc<Attach>,
    ingress: Arc<[Arc<Ingress>]>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Router")
    }
}

impl Router {
    /// Starts the router thread. It runs until the process exits; a broker
    /// that stops has closed every link first, so the router holds nothing
    /// worth saving.
    pub(crate) async fn start(limits: &Limits) -> Result<Self, RouterError> {
        let config = RouterConfig {
            // Room for every front connection, and for the old session of a
            // client that is being taken over.
            max_connections: limits.max_connections + 16,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: MIN_SEGMENT_BYTES.max(2 * limits.frame_cap()),
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        };
        let router_tx = rumqttd::Router::new(0, config).spawn();
        let attach = move |client_id: &str,
                           clean: bool|
              -> Result<(LinkTx, LinkRx, Bell, bool), RouterError> {
            let (tx, rx, ack) = LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                // Publishes to topics nobody subscribes to yet (events
                // before the ops center connects) are kept, not refused.
                .dynamic_filters(true)
                .build()
                .map_err(|e: LinkError| RouterError::Link(e.to_string()))?;
            let session_present = matches!(
                Option::<Packet>::from(ack),
                Some(Packet::ConnAck(ack, _)) if ack.session_present
            );
            let (mint_tx, minted) = flume::bounded(1);
            let mint = LinkTx::new(rx.id(), mint_tx, Default::default());
            let bell = Bell(Box::new(EventBell {
                router: router_tx.clone(),
                mint,
                minted,
            }));
            Ok((tx, rx, bell, session_present))
        };
        let attach: Arc<Attach> = Arc::new(attach);
        let build = attach.clone();
        // Client ids a certificate identity can never have (`_`).
        let ingress = tokio::task::spawn_blocking(move || {
            (0..INGRESS_LINKS)
                .map(|i| {
                    let (tx, rx, bell, _) = build(&format!("_vigil_ingress_{i}"), true)?;
                    Ok(Arc::new(Ingress {
                        tx,
                        bell: std::sync::Mutex::new(bell),
                        rx,
                    }))
                })
                .collect::<Result<Vec<_>, RouterError>>()
        })
        .await
        .map_err(|_| RouterError::Gone)??;
        Ok(Self {
            attach,
            ingress: ingress.into(),
        })
    }

    /// The way into the router for a post: one of the shared ingress links,
    /// always the same for one identity.
    pub(crate) fn ingress(&self, identity: &str) -> Link {
        let hash = fnv1a(identity.as_bytes());
        let ingress = self.ingress[(hash % self.ingress.len() as u64) as usize].clone();
        Link {
            way: Way::Shared(ingress),
            session_present: false,
            detached: false,
        }
    }

    /// Attaches a client to the router. A client id already attached is
    /// detached by the router first (its link ends). If the caller gives up
    /// waiting (a timeout, a shutdown), the link is detached as soon as it
    /// is made, so no attachment is left behind.
    pub(crate) async fn attach(&self, client_id: &str, clean: bool) -> Result<Link, RouterError> {
        let attach = self.attach.clone();
        let client_id = client_id.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // `build` blocks until the router has registered the link.
        tokio::task::spawn_blocking(move || {
            let link = attach(&client_id, clean).map(|(tx, rx, bell, session_present)| Link {
                way: Way::Own { tx, rx, bell },
                session_present,
                detached: false,
            });
            // If nobody waits any more, dropping the link detaches it.
            let _ = tx.send(link);
        });
        rx.await.map_err(|_| RouterError::Gone)?
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every process and build
/// (std's is seeded per process), for choices that must agree across
/// restarts and broker processes.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
