//! The threads of the log's two small pools (the syncers, the sync helpers): each is
//! started when work finds none idle, waits for more once it is done, and ends after
//! [`IDLE_EXIT`] without any. A quiet worker then keeps no thread it does not use: each
//! holds its stack's touched pages and its allocator cache (the seven after a task:
//! 90 KiB of the static build's RSS, docs/bench.md) and, in the kernel, a stack and its
//! task struct, which a memory cgroup counts too. The next burst starts them again in
//! tens of microseconds.

use std::sync::{Condvar, MutexGuard};
use std::time::{Duration, Instant};

/// How long a pool thread waits for work before it ends.
pub(super) const IDLE_EXIT: Duration = Duration::from_secs(2);

/// A pool's thread count, kept under the pool's lock.
#[derive(Debug, Default)]
pub(super) struct Crew {
    /// Threads running.
    pub threads: usize,
    /// Of them, those waiting for work.
    pub idle: usize,
}

/// For a pool thread: the next job `take` finds in the pool's state, waiting on `ready`
/// (which the pool signals for each job it queues while a thread is idle) for up to
/// [`IDLE_EXIT`] in all. `None`: none came, and the thread is counted out of the crew
/// (under the lock, so a job queued from now on starts a new thread).
pub(super) fn next_job<S, T>(
    mut st: MutexGuard<'_, S>,
    ready: &Condvar,
    crew: impl Fn(&mut S) -> &mut Crew,
    mut take: impl FnMut(&mut S) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + IDLE_EXIT;
    // Bounded by the deadline: every wait is at most what is left of it.
    loop {
        if let Some(job) = take(&mut st) {
            return Some(job);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            crew(&mut st).threads -= 1;
            return None;
        }
        crew(&mut st).idle += 1;
        let (back, _) = ready
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner());
        st = back;
        crew(&mut st).idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct State {
        jobs: Vec<u32>,
        crew: Crew,
    }

    #[test]
    fn a_thread_takes_queued_work_and_ends_once_idle() {
        let pool = Arc::new((Mutex::new(State::default()), Condvar::new()));
        pool.0.lock().unwrap().crew.threads = 1;
        let p = pool.clone();
        let t = std::thread::spawn(move || {
            let mut done = Vec::new();
            while let Some(j) =
                next_job(p.0.lock().unwrap(), &p.1, |s| &mut s.crew, |s| s.jobs.pop())
            {
                done.push(j);
            }
            done
        });
        // A job queued while the thread waits wakes it.
        std::thread::sleep(Duration::from_millis(100));
        {
            let mut st = pool.0.lock().unwrap();
            assert_eq!(st.crew.idle, 1, "the thread waits for work");
            st.jobs.push(7);
        }
        pool.1.notify_one();
        let started = Instant::now();
        assert_eq!(t.join().unwrap(), vec![7]);
        assert!(
            started.elapsed() >= IDLE_EXIT,
            "it waited for more before it ended"
        );
        let st = pool.0.lock().unwrap();
        assert_eq!((st.crew.threads, st.crew.idle), (0, 0), "counted out");
    }
}
