//! Worker threads owned by one call.
//!
//! faer parallelises on rayon, and rayon work started from a thread that is
//! not one of its workers goes to rayon's process-wide pool, which then
//! lives until the process ends. A process that forks after such a call
//! gets a child whose copy of that pool has no threads: the child's next
//! parallel call waits forever. So nothing here uses the global pool: a
//! call with `threads > 1` builds its own pool of that many workers with
//! [`on_pool`], runs its work on it (faer's `Par::rayon(n)` then means
//! "this pool"), and joins every worker before it returns; with one thread
//! the work runs on the calling thread with `Par::Seq`. After the call no
//! thread of the library is alive. (faer's convenience functions, such as
//! `partial_piv_lu` or the `*` operator, pick a process-wide parallelism
//! that starts the global pool even for tiny matrices; the library calls
//! the explicit forms with the call's `Par` instead.)
//!
//! The host's callbacks (progress, allreduce) are promised to run on the
//! thread that called; the work runs on a worker, so it hands each callback
//! invocation back to the calling thread through a [`Caller`] and waits for
//! the answer.

use crate::error::{Error, Result};
use crate::numerics::{resolve_threads, Par};
use std::sync::mpsc;

/// A job the calling thread runs for the worker; the worker waits for it.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Hands closures from the work back to the thread that called [`on_pool`]
/// (`None`: the work runs on that thread itself).
pub(crate) struct Caller {
    jobs: Option<mpsc::Sender<Job>>,
}

impl Caller {
    /// Runs `f` on the calling thread and returns its result.
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let Some(jobs) = &self.jobs else {
            return f();
        };
        let (reply, answer) = mpsc::sync_channel::<T>(1);
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            // The worker waits below, so the receiver is alive.
            let _ = reply.send(f());
        });
        // SAFETY: `job` borrows from this frame, which outlives it: the
        // worker blocks on `answer` until the job has run (or been dropped
        // unrun, when the calling thread stopped serving, which closes the
        // reply channel), so the borrow never outlives the frame.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
        if jobs.send(job).is_err() {
            panic!("the calling thread stopped serving callbacks");
        }
        answer
            .recv()
            .expect("the calling thread dropped a callback unrun")
    }
}

/// Marks a callback that the work may only call through [`Caller::run`],
/// i.e. on the thread that owns it.
pub(crate) struct OnCaller<T>(pub(crate) T);

// SAFETY: the wrapped value is only touched inside `Caller::run`, on the
// thread that created it, while the thread that carries the wrapper waits.
unsafe impl<T> Send for OnCaller<T> {}
unsafe impl<T> Sync for OnCaller<T> {}

/// Runs `work` on a pool of `resolve_threads(threads)` workers created for
/// this call, with faer's parallelism for that many threads, and serves the
/// work's [`Caller`] requests on the calling thread meanwhile; one thread
/// means the calling thread itself and `Par::Seq`. Every worker has exited
/// when it returns. A pool that cannot be created (the system refuses
/// threads) is `ErrorKind::OutOfMemory`.
pub(crate) fn on_pool<R: Send>(
    threads: usize,
    work: impl FnOnce(Par, &Caller) -> R + Send,
) -> Result<R> {
    let n = resolve_threads(threads);
    if n == 1 {
        return Ok(work(Par::Seq, &Caller { jobs: None }));
    }
    let mut handles = Vec::with_capacity(n);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("coreflow-{i}"))
        .spawn_handler(|thread| {
            let h = std::thread::Builder::new()
                .name(thread.name().unwrap_or("coreflow").to_owned())
                .spawn(|| thread.run())?;
            handles.push(h);
            Ok(())
        })
        .build()
        .map_err(|e| {
            Error::out_of_memory(format!(
                "opts->threads: cannot start {n} worker threads: {e}"
            ))
        });
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            // Workers started before the failure end with the builder.
            for h in handles {
                let _ = h.join();
            }
            return Err(e);
        }
    };
    let par = Par::rayon(n);
    let (jobs, requests) = mpsc::channel::<Job>();
    let mut result = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.in_place_scope(|scope| {
            let caller = Caller { jobs: Some(jobs) };
            let result = &mut result;
            scope.spawn(move |_| {
                *result = Some(work(par, &caller));
                // `caller` drops here and ends the serving loop below.
            });
            // Serve callbacks until the work drops its sender.
            while let Ok(job) = requests.recv() {
                job();
            }
        })
    }));
    drop(pool);
    for h in handles {
        let _ = h.join();
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    result.ok_or_else(|| Error::internal("pool: the work ended without a result"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_run_on_the_calling_thread() {
        let me = std::thread::current().id();
        let seen = OnCaller(std::cell::RefCell::new(Vec::new()));
        let out = on_pool(3, |par, caller| {
            assert_ne!(std::thread::current().id(), me);
            assert_eq!(rayon::current_num_threads(), 3);
            assert!(matches!(par, Par::Rayon(_)));
            let seen = &seen;
            for i in 0..4 {
                caller.run(move || {
                    assert_eq!(std::thread::current().id(), me);
                    seen.0.borrow_mut().push(i);
                });
            }
            7
        })
        .unwrap();
        assert_eq!(out, 7);
        assert_eq!(seen.0.into_inner(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn one_thread_is_the_calling_thread() {
        let me = std::thread::current().id();
        let r = on_pool(1, |par, caller| {
            assert!(matches!(par, Par::Seq));
            assert_eq!(std::thread::current().id(), me);
            caller.run(|| std::thread::current().id())
        })
        .unwrap();
        assert_eq!(r, me);
    }
}
