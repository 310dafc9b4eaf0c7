//! Call threads, reused. Every plugin call runs on its own OS thread (it
//! may block); starting a thread costs more than a trivial call, so a
//! finished worker waits for the next call instead of exiting, and a new
//! one is started only when none is idle. Idle workers exit after a while.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How long an idle worker waits for a call before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    idle: usize,
}

pub struct Workers {
    queue: Mutex<Queue>,
    wake: Condvar,
    stack_size: usize,
}

impl Workers {
    pub fn global(stack_size: usize) -> &'static Workers {
        static WORKERS: OnceLock<Workers> = OnceLock::new();
        WORKERS.get_or_init(|| Workers {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
            }),
            wake: Condvar::new(),
            stack_size,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job` on an idle worker, or on a new one.
    pub fn run(&'static self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let job: Job = Box::new(job);
        {
            let mut q = self.lock();
            if q.idle > q.jobs.len() {
                q.jobs.push_back(job);
                drop(q);
                // Notified after unlocking, so the worker does not wake up
                // only to wait for the lock we still hold.
                self.wake.notify_one();
                return Ok(());
            }
        }
        std::thread::Builder::new()
            .name("sockd-call".into())
            .stack_size(self.stack_size)
            .spawn(move || self.work(job))
            .map(|_| ())
    }

    fn work(&self, first: Job) {
        let mut job = first;
        loop {
            // The plugin glue catches panics already; this keeps a bug in
            // the host's own call code from losing the worker's count.
            let _ = catch_unwind(AssertUnwindSafe(job));
            let mut q = self.lock();
            q.idle += 1;
            loop {
                if let Some(next) = q.jobs.pop_front() {
                    q.idle -= 1;
                    job = next;
                    break;
                }
                let (guard, timeout) = self
                    .wake
                    .wait_timeout(q, IDLE_EXIT)
                    .unwrap_or_else(|p| p.into_inner());
                q = guard;
                if timeout.timed_out() && q.jobs.is_empty() {
                    q.idle -= 1;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn workers_are_reused_and_run_concurrently() {
        let workers = Workers::global(256 * 1024);
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        workers
            .run(move || tx2.send(std::thread::current().id()).unwrap())
            .unwrap();
        let first = rx.recv().unwrap();
        // Wait until that worker is idle again, then the next job reuses it.
        while workers.lock().idle == 0 {
            std::thread::yield_now();
        }
        workers
            .run(move || tx.send(std::thread::current().id()).unwrap())
            .unwrap();
        assert_eq!(rx.recv().unwrap(), first);
        // A blocked worker does not stop another job from running.
        let (block_tx, block_rx) = mpsc::channel::<()>();
        workers
            .run(move || {
                let _ = block_rx.recv();
            })
            .unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        workers.run(move || done_tx.send(()).unwrap()).unwrap();
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(block_tx);
    }
}
