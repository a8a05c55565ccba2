use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_restarted_registry_serves_the_same_ids_subjects_and_configs() {
    let r = TestRegistry::start().await;
    let a = r.register("a-value", V1).await.1["id"].clone();
    let b = r.register("b-value", V2_INCOMPATIBLE).await.1["id"].clone();
    r.call(
        Method::PUT,
        "/config",
        Some(json!({"compatibility": "FULL"})),
    )
    .await;
    r.call(
        Method::PUT,
        "/config/b-value",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    r.call(Method::DELETE, "/subjects/a-value", None).await;
    let topic = r.topic.clone();
    r.stop().await;

    let r = TestRegistry::start_on(&topic).await;
    assert_eq!(
        r.call(Method::GET, "/subjects", None).await.1,
        json!(["b-value"])
    );
    assert_eq!(
        r.call(Method::GET, "/subjects?deleted=true", None).await.1,
        json!(["a-value", "b-value"])
    );
    assert_eq!(
        r.call(Method::GET, "/subjects/b-value/versions/1", None)
            .await
            .1["id"],
        b
    );
    assert_eq!(
        r.call(Method::GET, "/config", None).await.1["compatibilityLevel"],
        "FULL"
    );
    assert_eq!(
        r.call(Method::GET, "/config/b-value", None).await.1["compatibilityLevel"],
        "NONE"
    );
    // The next new schema gets a new id, never a reused one.
    let c = r.register("c-value", V2_COMPATIBLE).await.1["id"].clone();
    assert_ne!(c, a);
    assert_ne!(c, b);
    // Re-registering a's schema under a's subject reuses a's id.
    assert_eq!(r.register("a-value", V1).await.1["id"], a);
    r.stop().await;
}
