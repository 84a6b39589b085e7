//! Password hashing on a bounded pool, so that sign-ins cannot starve purchases.
//!
//! Argon2id is made to be expensive: with the parameters below one hash takes tens of
//! milliseconds of a core. At a drop, buyers sign in exactly when the rush starts; run on
//! tokio's blocking pool (unbounded: up to 512 threads), a few dozen sign-ins took every core
//! from the purchase path. Here hashing runs on a fixed number of its own threads, at a lower
//! scheduling priority (a higher `nice` value) so that the purchase path wins the cores when
//! both want them, behind a queue of fixed length. When the queue is full a sign-in is refused
//! at once ([`PoolError::Busy`], with an estimate of when a retry may succeed) instead of
//! piling up.
//!
//! The parameters are Argon2id's defaults in the `argon2` crate: m = 19,456 KiB, t = 2, p = 1,
//! the first of OWASP's recommended configurations (Password Storage Cheat Sheet) and what RFC
//! 9106 calls the memory-constrained choice: ~19 MiB per hash in flight bounds the pool's
//! memory (threads × 19 MiB), and a hash stays expensive for a GPU attacker. Stored hashes
//! carry their parameters (PHC strings), so they can be raised later without a migration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use tokio::sync::oneshot;

use crate::domain::Password;

/// How the pool is sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSize {
    /// CPU the hashing may use, in cores (fractions allowed, e.g. 0.5).
    pub cores: f64,
    /// Sign-ins that may wait for a thread; more are refused at once.
    pub queue: usize,
    /// The threads' `nice` value (0 = the server's own priority, 19 = the lowest).
    pub nice: i32,
}

impl PoolSize {
    /// A quarter of the machine's cores, at least half a core; 32 waiting; nice 10.
    pub fn default_for_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self { cores: (cores as f64 / 4.0).max(0.5), queue: 32, nice: 10 }
    }

    /// Hashing threads: the share of cores, rounded up.
    pub fn threads(&self) -> usize {
        (self.cores.ceil() as usize).max(1)
    }

    /// Share of its time each thread may work (the rest it rests), in (0, 1].
    pub fn duty(&self) -> f64 {
        (self.cores / self.threads() as f64).clamp(0.01, 1.0)
    }
}

/// Why the pool did not hash.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every thread is busy and the queue is full.
    #[error("password hashing is at capacity; retry in {retry_after:?}")]
    Busy {
        /// When a retry may find room.
        retry_after: Duration,
    },
    /// The pool's threads are gone (a bug: they never stop while the pool lives).
    #[error("password hashing has stopped")]
    Stopped,
    /// A stored hash is not a PHC string (corruption).
    #[error("stored password hash is malformed: {0}")]
    MalformedHash(String),
    /// Argon2 failed (cannot happen with valid parameters).
    #[error("hashing failed: {0}")]
    Hashing(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Its threads stop when it is dropped.
pub struct PasswordPool {
    /// std `sync_channel` of capacity `queue`: `try_send` fails at once when it is full (or,
    /// with capacity 0, when no thread is idle). std Mutex: held only to send.
    jobs: Mutex<SyncSender<Job>>,
    size: PoolSize,
    /// Mean duration of one hash, in microseconds (exponentially weighted), for retry hints.
    mean_micros: Arc<AtomicU64>,
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPool").field("size", &self.size).finish()
    }
}

impl PasswordPool {
    /// Starts the hashing threads.
    pub fn start(size: PoolSize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(size.queue);
        let queue = Arc::new(Mutex::new(queue));
        // After working for w, a thread rests w * rest so that it works `duty` of its time.
        let rest = (1.0 - size.duty()) / size.duty();
        for i in 0..size.threads() {
            let queue = queue.clone();
            std::thread::Builder::new().name(format!("flashsale-auth-{i}")).spawn(move || {
                lower_priority(size.nice);
                loop {
                    // std Mutex: the idle threads take turns waiting on the queue.
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { return }; // the pool was dropped
                    let started = Instant::now();
                    job();
                    if rest > 0.0 {
                        std::thread::sleep(started.elapsed().mul_f64(rest));
                    }
                }
            })?;
        }
        metrics::gauge!("flashsale_auth_pool_threads").set(size.threads() as f64);
        Ok(Self { jobs: Mutex::new(jobs), size, mean_micros: Arc::new(AtomicU64::new(50_000)) })
    }

    /// How the pool is sized.
    pub fn size(&self) -> PoolSize {
        self.size
    }

    /// Hashes `password` with Argon2id into a PHC string.
    pub async fn hash(&self, password: Password) -> Result<String, PoolError> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|hash: PasswordHash| hash.to_string())
                .map_err(|e| PoolError::Hashing(e.to_string()))
        })
        .await?
    }

    /// Whether `password` matches the PHC string `phc`.
    pub async fn verify(&self, password: Password, phc: String) -> Result<bool, PoolError> {
        self.run(move || {
            let hash = PasswordHash::new(&phc).map_err(|e| PoolError::MalformedHash(e.to_string()))?;
            Ok(Argon2::default().verify_password(password.expose().as_bytes(), &hash).is_ok())
        })
        .await?
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        let (answer, answered) = oneshot::channel();
        let mean = self.mean_micros.clone();
        let job: Job = Box::new(move || {
            // A caller that gave up (deadline, cancel) needs no hash: skip the work.
            if answer.is_closed() {
                return;
            }
            let started = Instant::now();
            let result = work();
            let took = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u64;
            let old = mean.load(Ordering::Relaxed);
            mean.store(old - old / 8 + took / 8, Ordering::Relaxed);
            let _ = answer.send(result);
        });
        let sent = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).try_send(job);
        match sent {
            Ok(()) => answered.await.map_err(|_| PoolError::Stopped),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("flashsale_auth_refused_total").increment(1);
                Err(PoolError::Busy { retry_after: self.retry_after() })
            }
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Stopped),
        }
    }

    /// Roughly how long the queue takes to drain: when a retry may find room.
    fn retry_after(&self) -> Duration {
        let mean = Duration::from_micros(self.mean_micros.load(Ordering::Relaxed));
        let waves = (self.size.queue / self.size.threads() + 1) as u32;
        (mean * waves).div_f64(self.size.duty()).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// Gives the calling thread a lower scheduling priority. On Linux the nice value is a
/// per-thread attribute (setpriority(2), "BUGS"); raising it never needs privileges.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: plain syscalls on the calling thread, no memory is passed.
        let failed = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.min(19)) != 0
        };
        if failed {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "could not lower the priority of a hashing thread");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str) -> Password {
        Password::parse(text).unwrap()
    }

    #[tokio::test]
    async fn hashes_with_argon2id_and_verifies() {
        let pool = PasswordPool::start(PoolSize { cores: 1.0, queue: 4, nice: 0 }).unwrap();
        let hash = pool.hash(password("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(pool.verify(password("correct horse"), hash.clone()).await.unwrap());
        assert!(!pool.verify(password("wrong horse!"), hash).await.unwrap());
        assert!(matches!(
            pool.verify(password("correct horse"), "not a hash".into()).await,
            Err(PoolError::MalformedHash(_))
        ));
    }

    #[tokio::test]
    async fn refuses_at_once_when_every_thread_and_the_queue_are_taken() {
        let pool = Arc::new(PasswordPool::start(PoolSize { cores: 1.0, queue: 1, nice: 0 }).unwrap());
        assert_eq!(pool.size().threads(), 1);
        // Hold the only thread until released.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (running, started) = oneshot::channel();
        let blocker = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    let _ = running.send(());
                    let _ = held.recv();
                })
                .await
            }
        });
        started.await.unwrap();
        // One job fits in the queue: its first poll puts it there...
        let mut queued = Box::pin(pool.hash(password("queued password")));
        assert!(futures::poll!(&mut queued).is_pending());
        // ...and the next is refused at once, with a hint of when to retry.
        match pool.hash(password("one too many")).await {
            Err(PoolError::Busy { retry_after }) => assert!(retry_after >= Duration::from_millis(100)),
            other => panic!("a full pool refuses at once, got {other:?}"),
        }
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        assert!(queued.await.unwrap().starts_with("$argon2id$"), "the queued sign-in is served");
    }

    #[test]
    fn a_share_of_cores_is_whole_threads_working_part_of_the_time() {
        let half = PoolSize { cores: 0.5, queue: 0, nice: 10 };
        assert_eq!((half.threads(), half.duty()), (1, 0.5));
        let two = PoolSize { cores: 2.0, ..half };
        assert_eq!((two.threads(), two.duty()), (2, 1.0));
        let odd = PoolSize { cores: 1.5, ..half };
        assert_eq!((odd.threads(), odd.duty()), (2, 0.75));
    }
}
