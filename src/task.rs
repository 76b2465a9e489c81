//! Spawning tasks as one boxed type per output.
//!
//! tokio instantiates its task machinery (the harness, the state cell, the waker table, the
//! join handle's reads) for every distinct future or closure type it spawns: the daemon's
//! forty or so spawn sites cost ~160 KiB of the arm64 binary that way (issue 18, lean
//! binary). Boxed first, all the tasks with one output type share one instantiation. Tasks
//! are spawned per device, connection or service, never per reading, so the one allocation
//! and the indirect call per poll cost nothing measurable. A panic inside a task is caught by
//! tokio exactly as before (the `JoinError` says so).

use std::future::Future;
use std::pin::Pin;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// A spawned future, boxed.
pub type BoxedTask<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A blocking closure, boxed.
pub type BoxedBlocking<T> = Box<dyn FnOnce() -> T + Send + 'static>;

/// [`tokio::spawn`], boxed.
pub fn spawn<T: Send + 'static>(task: impl Future<Output = T> + Send + 'static) -> JoinHandle<T> {
    tokio::spawn(Box::pin(task) as BoxedTask<T>)
}

/// [`tokio::task::spawn_blocking`], boxed.
pub fn spawn_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    tokio::task::spawn_blocking(Box::new(f) as BoxedBlocking<T>)
}

/// [`TaskTracker::spawn`], boxed.
pub trait TrackBoxed {
    fn spawn_boxed<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T>;
}

impl TrackBoxed for TaskTracker {
    fn spawn_boxed<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        self.spawn(Box::pin(task) as BoxedTask<T>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_boxed_task_returns_its_output_and_a_panic_in_one_is_caught() {
        assert_eq!(spawn(async { 7 }).await.unwrap(), 7);
        assert_eq!(spawn_blocking(|| 8).await.unwrap(), 8);
        let tracker = TaskTracker::new();
        assert_eq!(tracker.spawn_boxed(async { 9 }).await.unwrap(), 9);
        let panicked = spawn(async { panic!("a task's bug") }).await;
        assert!(panicked.unwrap_err().is_panic());
        let panicked = spawn_blocking(|| -> () { panic!("a blocking bug") }).await;
        assert!(panicked.unwrap_err().is_panic());
    }
}
