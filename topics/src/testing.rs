//! Test fixtures: the test broker's address and unique names, so tests can share one broker.

/// The bootstrap address of the broker the tests run against (`KAFKA_BOOTSTRAP`).
///
/// # Panics
/// When `KAFKA_BOOTSTRAP` is not set: the tests need the real broker that `compose/dev test`
/// starts; they never fall back to a mock.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP is not set: run the tests with `compose/dev test`, which starts \
             the broker and the registry, or point KAFKA_BOOTSTRAP at a running broker"
        )
    })
}

/// A name unique to this test run: `<prefix>-<random>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The test broker with the user's client properties from the environment
/// (`EMBEDSTREAM_KAFKA_*`, see [`crate::kafka`]), as every service would read them.
///
/// # Panics
/// As [`bootstrap`], or when those variables name a property that cannot be used.
pub fn kafka() -> crate::KafkaConfig {
    crate::KafkaConfig::from_sources(bootstrap(), None, std::env::vars(), &[])
        .expect("the EMBEDSTREAM_KAFKA_* variables are usable client properties")
}

/// Deletes every topic under `<prefix>.` when dropped (the last clone of what holds it), so a
/// test leaves the shared broker as it found it. Errors are logged, never raised: a test that
/// already failed keeps its own message.
#[derive(Debug)]
pub struct DeleteTopicsOnDrop {
    kafka: crate::KafkaConfig,
    prefix: String,
}

impl DeleteTopicsOnDrop {
    /// Guards the topics under `prefix`.
    pub fn new(kafka: crate::KafkaConfig, prefix: impl Into<String>) -> Self {
        Self {
            kafka,
            prefix: prefix.into(),
        }
    }
}

impl Drop for DeleteTopicsOnDrop {
    fn drop(&mut self) {
        let (kafka, prefix) = (self.kafka.clone(), format!("{}.", self.prefix));
        // A thread of its own: the drop may run inside an async runtime.
        let deleted = std::thread::spawn(move || -> crate::Result<usize> {
            let admin = crate::admin::Admin::new(&kafka, std::time::Duration::from_secs(5))?;
            let names: Vec<String> = admin
                .list()?
                .into_iter()
                .map(|t| t.name)
                .filter(|n| n.starts_with(&prefix))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            if !refs.is_empty() {
                block_on(admin.delete(&refs))?;
            }
            Ok(refs.len())
        })
        .join();
        match deleted {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Cannot delete the test's topics."),
            Err(_) => tracing::warn!("Deleting the test's topics panicked."),
        }
    }
}

/// Runs a future to completion on this thread (rdkafka's admin futures are driven by its own
/// background thread; they only need to be polled).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// The tests' one pseudo-random generator: xorshift64, deterministic per seed, so tests need
/// no `rand` and fail the same way on every run.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator started at `seed` (which must not be 0).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator started at `seed` spread by the golden-ratio constant (any seed, 0 too).
    pub fn mixed(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1), 24 bits.
    pub fn unit_interval(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-0.5, 0.5), 24 bits.
    pub fn centered(&mut self) -> f32 {
        self.unit_interval() - 0.5
    }

    /// `n` values of [`XorShift::centered`].
    pub fn centered_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.centered()).collect()
    }
}
