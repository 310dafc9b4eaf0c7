//! The stop signal: one broadcast that every task listens to. `Shutdown`
//! is the receiving end; `is_shutdown` stays true once the signal fired.

use tokio::sync::watch;

/// Fires once; cloned into every task that must stop.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending end, held by the server.
pub struct Trigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when the signal fires (at once if it already has).
    pub async fn recv(&mut self) {
        let _ = self.rx.wait_for(|stopped| *stopped).await;
    }
}
