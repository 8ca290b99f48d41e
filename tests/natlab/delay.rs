//! A UDP forwarder that adds a fixed delay each way, run inside a lab
//! namespace (the kernel here has no `netem`): a server behind it is
//! "farther" by twice the delay. Each client address gets an upstream
//! socket of its own, so the server sees one client per client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::net::UdpSocket;

use super::inprocess::{join, thread_in};

/// A running forwarder; stops when dropped.
pub struct DelayForwarder {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl DelayForwarder {
    /// Forwards datagrams sent to `listen` to `target` and back, each
    /// `delay` late, from inside the network namespace `netns` (its name
    /// under /var/run/netns).
    pub fn start(netns: &str, listen: SocketAddr, target: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread_in(netns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(runtime) = runtime else {
                let _ = ready_tx.send(Err("cannot start a runtime".to_string()));
                return Ok(());
            };
            runtime.block_on(async move {
                let front = match UdpSocket::bind(listen).await {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {listen}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = stopped => {}
                    _ = forward(front, target, delay) => {}
                }
            });
            Ok(())
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self { stop: Some(stop), thread: Some(thread) }),
            Ok(Err(e)) => bail!("delay forwarder: {e}"),
            // The thread ended without a word: it could not enter the
            // namespace.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match join(thread) {
                Err(e) => bail!("delay forwarder: {e:#}"),
                Ok(()) => bail!("delay forwarder ended before it started"),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!("delay forwarder did not start"),
        }
    }
}

impl Drop for DelayForwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn forward(front: Arc<UdpSocket>, target: SocketAddr, delay: Duration) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else { return };
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind(SocketAddr::new(target.ip(), 0)).await else { continue };
                let socket = Arc::new(socket);
                upstreams.insert(client, socket.clone());
                // Answers go back to this client, as late.
                let (back, front) = (socket.clone(), front.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, _)) = back.recv_from(&mut buf).await {
                        let data = buf[..n].to_vec();
                        let front = front.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = front.send_to(&data, client).await;
                        });
                    }
                });
                socket
            }
        };
        let data = buf[..n].to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = upstream.send_to(&data, target).await;
        });
    }
}
