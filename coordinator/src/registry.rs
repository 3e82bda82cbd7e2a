//! The nodes connected right now, by consortium identity.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medfed_protocol::messages::PartialModel;
use medfed_protocol::model::ModelHash;
use medfed_transport::Connection;
use tokio::sync::watch;

/// One admitted node connection.
#[derive(Debug)]
pub struct NodeHandle {
    /// Identity: the subject of the node's certificate.
    pub identity: String,
    /// The connection to it (QUIC or TCP).
    pub connection: Connection,
    /// The certificate it presented (DER), relayed to its peers so they can check its signed
    /// secure-aggregation keys.
    pub certificate: Vec<u8>,
    /// Hash of the model the node holds, so an unchanged model is not sent twice.
    held_model: Mutex<Option<ModelHash>>,
    /// The part of a model a push cut short left the node with (its `Hello` says), so that the
    /// next push of that model starts after it; used once.
    partial_model: Mutex<Option<PartialModel>>,
    /// Bytes received from this node, shared with the registry's totals per identity.
    bytes_received: Arc<AtomicU64>,
}

impl NodeHandle {
    /// A handle for a freshly admitted connection.
    pub fn new(
        identity: String,
        connection: Connection,
        certificate: Vec<u8>,
        held_model: Option<ModelHash>,
        partial_model: Option<PartialModel>,
        bytes_received: Arc<AtomicU64>,
    ) -> Self {
        Self {
            identity,
            connection,
            certificate,
            held_model: Mutex::new(held_model),
            partial_model: Mutex::new(partial_model),
            bytes_received,
        }
    }

    /// The model the node is known to hold.
    pub fn held_model(&self) -> Option<ModelHash> {
        *self
            .held_model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that the node now holds `hash`.
    pub fn set_held_model(&self, hash: ModelHash) {
        *self
            .held_model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(hash);
    }

    /// The chunk a push of the model `hash` starts from: after the chunks the node holds of
    /// it, or 0. Asked once per push; the node's announcement is used up by the first push.
    pub fn resume_point(&self, hash: ModelHash, chunks: u32) -> u32 {
        let partial = self
            .partial_model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match partial {
            Some(partial) if partial.hash == hash && partial.chunks < chunks => partial.chunks,
            _ => 0,
        }
    }

    /// Adds to the bytes received from this node.
    pub fn add_received(&self, bytes: u64) {
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Total bytes received from this node on request streams.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Whether the connection is still open.
    pub fn is_connected(&self) -> bool {
        self.connection.close_reason().is_none()
    }
}

/// Connected nodes, and a signal when the set changes.
#[derive(Debug)]
pub struct Registry {
    nodes: Mutex<HashMap<String, Arc<NodeHandle>>>,
    /// Bumped on every change, so waiters re-check.
    changed: watch::Sender<u64>,
    /// Bytes received from each identity over all its connections, for accounting.
    received: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            nodes: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            received: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Registry {
    /// The byte counter of an identity, created on first use; it outlives connections.
    pub fn received_counter(&self, identity: &str) -> Arc<AtomicU64> {
        let mut received = self
            .received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        received.entry(identity.to_owned()).or_default().clone()
    }

    /// Bytes received from each identity so far, over all its connections.
    pub fn bytes_received(&self) -> BTreeMap<String, u64> {
        let received = self
            .received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        received
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }

    /// Adds a node; a previous connection of the same identity (a node that reconnected before
    /// its old connection timed out) is closed and replaced.
    pub fn admit(&self, node: Arc<NodeHandle>) {
        let previous = self.lock().insert(node.identity.clone(), node);
        if let Some(old) = previous {
            old.connection.close(0, b"replaced by a newer connection");
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Removes the node if `connection` is still the one registered for it.
    pub fn remove(&self, identity: &str, connection: &Connection) {
        let mut nodes = self.lock();
        if nodes
            .get(identity)
            .is_some_and(|n| n.connection.stable_id() == connection.stable_id())
        {
            nodes.remove(identity);
        }
        drop(nodes);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Nodes with an open connection, sorted by identity.
    pub fn connected(&self) -> Vec<Arc<NodeHandle>> {
        let mut nodes: Vec<_> = self
            .lock()
            .values()
            .filter(|n| n.is_connected())
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.identity.cmp(&b.identity));
        nodes
    }

    /// The node of an identity, if connected.
    pub fn get(&self, identity: &str) -> Option<Arc<NodeHandle>> {
        self.lock()
            .get(identity)
            .filter(|n| n.is_connected())
            .cloned()
    }

    /// Waits until at least `min` nodes are connected, or `timeout` passes; returns the nodes
    /// connected at that moment.
    pub async fn wait_for(&self, min: usize, timeout: Duration) -> Vec<Arc<NodeHandle>> {
        let mut changes = self.changed.subscribe();
        let wait = async {
            loop {
                let nodes = self.connected();
                if nodes.len() >= min {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        // A timeout is not an error here: the caller decides with what it gets.
        let _ = tokio::time::timeout(timeout, wait).await;
        self.connected()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<NodeHandle>>> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
