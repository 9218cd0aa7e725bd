use glommio::channels::channel_mesh::{Full, MeshBuilder as GlommioMeshBuilder, Receivers, Senders};

/// Builds the all-to-all channel mesh between shards. Cloned into every shard, which then
/// joins it; a message type must be `Send` because it crosses cores.
pub struct MeshBuilder<T: Send>(GlommioMeshBuilder<T, Full>);

impl<T: Send> Clone for MeshBuilder<T> {
    fn clone(&self) -> Self {
        MeshBuilder(self.0.clone())
    }
}

/// A mesh with `shards` members and room for `capacity` messages per pair of shards: a full
/// channel makes the sender wait (back-pressure), never grows.
pub fn mesh<T: Send + 'static>(shards: usize, capacity: usize) -> MeshBuilder<T> {
    MeshBuilder(GlommioMeshBuilder::full(shards, capacity))
}

impl<T: Send + 'static> MeshBuilder<T> {
    /// Joins the mesh from the calling shard; returns once every shard has joined.
    pub async fn join(self) -> std::io::Result<Mesh<T>> {
        let (senders, receivers) = self
            .0
            .join()
            .await
            .map_err(|error| std::io::Error::other(format!("joining the shard mesh failed: {error}")))?;
        Ok(Mesh { senders, receivers })
    }
}

/// This shard's ends of the mesh. Lives on one core.
pub struct Mesh<T: Send> {
    senders: Senders<T>,
    receivers: Receivers<T>,
}

/// Messages from one other shard, in the order it sent them.
pub struct Inbox<T: Send>(glommio::channels::shared_channel::ConnectedReceiver<T>);

impl<T: Send> Inbox<T> {
    /// The next message, or `None` once the sender is gone.
    pub async fn recv(&self) -> Option<T> {
        self.0.recv().await
    }
}

impl<T: Send + 'static> Mesh<T> {
    /// This shard's number, 0..shards.
    pub fn shard(&self) -> usize {
        self.senders.peer_id()
    }

    pub fn shards(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// Sends `message` to another shard, waiting while its channel is full. Gives the message
    /// back if it cannot be delivered (the shard is gone, or it is this shard).
    pub async fn send_to(&self, shard: usize, message: T) -> Result<(), T> {
        self.senders.send_to(shard, message).await.map_err(|error| match error {
            glommio::GlommioError::Closed(glommio::ResourceType::Channel(message)) => message,
            glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message)) => message,
            other => panic!("mesh send failed without returning the message: {other}"),
        })
    }

    /// The inboxes from every other shard; taken once, by the shard's dispatcher.
    pub fn take_inboxes(&mut self) -> Vec<(usize, Inbox<T>)> {
        self.receivers.streams().into_iter().map(|(shard, receiver)| (shard, Inbox(receiver))).collect()
    }
}
