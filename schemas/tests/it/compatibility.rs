use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn backward_is_the_default_and_none_lets_anything_in() {
    let r = TestRegistry::start().await;
    assert_eq!(
        r.call(Method::GET, "/config", None).await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    r.register("c-value", V1).await;

    let (status, body) = r
        .call(
            Method::POST,
            "/compatibility/subjects/c-value/versions/latest?verbose=true",
            Some(json!({"schema": V2_INCOMPATIBLE})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["is_compatible"], false);
    assert!(!body["messages"].as_array().unwrap().is_empty(), "{body}");

    let (status, body) = r.register("c-value", V2_INCOMPATIBLE).await;
    assert_eq!((status.as_u16(), error_code(&body)), (409, 409));
    assert_eq!(
        r.call(Method::GET, "/subjects/c-value/versions", None)
            .await
            .1,
        json!([1])
    );

    // A subject-level NONE overrides the global BACKWARD for that subject only.
    let (status, body) = r
        .call(
            Method::PUT,
            "/config/c-value",
            Some(json!({"compatibility": "NONE"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"compatibility": "NONE"}));
    assert_eq!(
        r.call(Method::GET, "/config/c-value", None).await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    let (status, body) = r.register("c-value", V2_INCOMPATIBLE).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Other subjects still follow the global level.
    r.register("other-value", V1).await;
    let (status, _) = r.register("other-value", V2_INCOMPATIBLE).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Without a subject level: 40408, unless defaultToGlobal.
    let (status, body) = r.call(Method::GET, "/config/other-value", None).await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, 40408));
    assert_eq!(
        r.call(
            Method::GET,
            "/config/other-value?defaultToGlobal=true",
            None
        )
        .await
        .1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    let (status, _) = r.call(Method::DELETE, "/config/c-value", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = r.call(Method::GET, "/config/c-value", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    r.stop().await;
}

#[tokio::test]
async fn forward_full_and_transitive_levels() {
    let r = TestRegistry::start().await;
    let put = |level: &'static str| {
        let r = &r;
        async move {
            let (status, _) = r
                .call(
                    Method::PUT,
                    "/config",
                    Some(json!({"compatibility": level})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    let removes_id = r#"{"type":"record","name":"Item","namespace":"t","fields":[{"name":"n","type":"int","default":0}]}"#;

    put("FORWARD").await;
    r.register("f-value", V1).await;
    // FORWARD: old readers must read new data, so removing the required `id` is refused...
    assert_eq!(
        r.register("f-value", removes_id).await.0,
        StatusCode::CONFLICT
    );
    // ...and adding a required field is fine.
    assert_eq!(
        r.register("f-value", V2_INCOMPATIBLE).await.0,
        StatusCode::OK
    );

    put("FULL").await;
    r.register("full-value", V1).await;
    assert_eq!(
        r.register("full-value", V2_INCOMPATIBLE).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        r.register("full-value", V2_COMPATIBLE).await.0,
        StatusCode::OK
    );

    // BACKWARD vs BACKWARD_TRANSITIVE: v3 reads v2 data but not v1 data.
    put("BACKWARD").await;
    let v2 = r#"{"type":"record","name":"Item","namespace":"t","fields":[{"name":"id","type":"string"},{"name":"n","type":"int","default":1}]}"#;
    let v3 =
        r#"{"type":"record","name":"Item","namespace":"t","fields":[{"name":"n","type":"int"}]}"#;
    r.register("t-value", V1).await;
    r.register("t-value", v2).await;
    let (_, body) = r
        .call(
            Method::POST,
            "/compatibility/subjects/t-value/versions",
            Some(json!({"schema": v3})),
        )
        .await;
    assert_eq!(body["is_compatible"], true);
    put("BACKWARD_TRANSITIVE").await;
    let (_, body) = r
        .call(
            Method::POST,
            "/compatibility/subjects/t-value/versions",
            Some(json!({"schema": v3})),
        )
        .await;
    assert_eq!(body["is_compatible"], false);
    assert_eq!(r.register("t-value", v3).await.0, StatusCode::CONFLICT);
    r.stop().await;
}

/// Every shipped schema can read what each earlier release wrote: registered after its
/// earlier versions (`schemas/history/<name>.v<N>.avsc`, oldest first) under
/// BACKWARD_TRANSITIVE, the registry accepts it. A change that breaks this fails here rather
/// than at a running platform's first write.
#[tokio::test]
async fn each_schema_is_backward_compatible_with_all_its_earlier_versions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = TestRegistry::start().await;
    let mut checked = Vec::new();
    for name in [
        "item_event",
        "embedding_record",
        "dead_letter",
        "drift_report",
        "query_log",
        "exposure",
        "feedback_event",
        "sink_instance",
        "control_record",
    ] {
        let subject = format!("history-{name}-value");
        let (status, _) = r
            .call(
                Method::PUT,
                &format!("/config/{subject}"),
                Some(json!({"compatibility": "BACKWARD_TRANSITIVE"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let mut versions = 0;
        for n in 1.. {
            let path = root.join(format!("history/{name}.v{n}.avsc"));
            let Ok(schema) = std::fs::read_to_string(&path) else {
                break;
            };
            let (status, body) = r.register(&subject, &schema).await;
            assert_eq!(status, StatusCode::OK, "{}: {body}", path.display());
            versions += 1;
        }
        let current = std::fs::read_to_string(root.join(format!("{name}.avsc"))).unwrap();
        let (status, body) = r.register(&subject, &current).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{name}.avsc cannot read what an earlier version wrote: {body}"
        );
        checked.push((name, versions));
    }
    assert!(checked.iter().any(|(_, n)| *n > 0), "{checked:?}");
}
