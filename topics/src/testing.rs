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
