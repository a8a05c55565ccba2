use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn register_lookup_and_read_back() {
    let r = TestRegistry::start().await;
    let (status, body) = r.register("orders-value", V1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_i64().unwrap();

    // Registering the same schema again answers the same id.
    assert_eq!(r.register("orders-value", V1).await.1["id"], json!(id));

    let (status, body) = r
        .call(
            Method::GET,
            &format!("/schemas/ids/{id}?deleted=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let schema: serde_json::Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema["name"], "Item");

    let (_, body) = r.call(Method::GET, "/subjects", None).await;
    assert_eq!(body, json!(["orders-value"]));
    let (_, body) = r
        .call(Method::GET, "/subjects/orders-value/versions", None)
        .await;
    assert_eq!(body, json!([1]));

    let (status, body) = r
        .call(Method::GET, "/subjects/orders-value/versions/latest", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["subject"], "orders-value");
    assert_eq!(body["version"], 1);
    assert_eq!(body["id"], json!(id));

    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/orders-value",
            Some(json!({"schema": V1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], 1);

    let (_, body) = r
        .call(Method::GET, &format!("/schemas/ids/{id}/versions"), None)
        .await;
    assert_eq!(body, json!([{"subject": "orders-value", "version": 1}]));
    let (_, body) = r.call(Method::GET, "/schemas/types", None).await;
    assert_eq!(body, json!(["AVRO"]));

    // Compatible evolution: version 2 with a new id.
    let (status, body) = r.register("orders-value", V2_COMPATIBLE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["id"], json!(id));
    let (_, body) = r
        .call(
            Method::GET,
            "/subjects/orders-value/versions/2/schema",
            None,
        )
        .await;
    assert_eq!(body["fields"][1]["name"], "n");
    r.stop().await;
}

#[tokio::test]
async fn bad_requests_answer_confluent_errors_and_store_nothing() {
    let r = TestRegistry::start().await;

    let (status, body) = r.register("s-value", "{\"type\": \"record\", ").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&body), 42201);
    let (status, body) = r
        .register(
            "s-value",
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nope"}]}"#,
        )
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (422, 42201));
    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/s-value/versions",
            Some(json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"})),
        )
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (422, 42201));

    // Wrong content type.
    let resp = reqwest::Client::new()
        .post(format!("{}/subjects/s-value/versions", r.url))
        .header("content-type", "text/plain")
        .body(json!({"schema": V1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body), 415);
    // A body that is not JSON.
    let resp = reqwest::Client::new()
        .post(format!("{}/subjects/s-value/versions", r.url))
        .header("content-type", CT)
        .body("schema=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // None of the above stored anything.
    assert_eq!(r.call(Method::GET, "/subjects", None).await.1, json!([]));

    // Unknown subject, version, id; invalid version; invalid level; unknown path.
    let (status, body) = r.call(Method::GET, "/subjects/nope/versions", None).await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, 40401));
    r.register("s-value", V1).await;
    let (status, body) = r
        .call(Method::GET, "/subjects/s-value/versions/9", None)
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, 40402));
    let (status, body) = r.call(Method::GET, "/schemas/ids/4242", None).await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, 40403));
    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/s-value",
            Some(json!({"schema": V2_COMPATIBLE})),
        )
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, 40403));
    let (status, body) = r
        .call(Method::GET, "/subjects/s-value/versions/zero", None)
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (422, 42202));
    let (status, body) = r
        .call(
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "SIDEWAYS"})),
        )
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (422, 42203));
    let (status, body) = r.call(Method::GET, "/no/such/route", None).await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, 404));
    r.stop().await;
}

#[tokio::test]
async fn soft_and_permanent_deletes() {
    let r = TestRegistry::start().await;
    r.register("d-value", V1).await;
    r.register("d-value", V2_COMPATIBLE).await;

    let (status, body) = r
        .call(Method::DELETE, "/subjects/d-value?permanent=true", None)
        .await;
    assert_eq!((status.as_u16(), error_code(&body)), (404, 40405));
    let (status, body) = r.call(Method::DELETE, "/subjects/d-value", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([1, 2]));
    assert_eq!(r.call(Method::GET, "/subjects", None).await.1, json!([]));
    assert_eq!(
        r.call(Method::GET, "/subjects?deleted=true", None).await.1,
        json!(["d-value"])
    );
    // Ids of deleted versions still resolve, so old records still decode.
    let (status, _) = r
        .call(Method::GET, "/schemas/ids/1?deleted=true", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = r
        .call(Method::DELETE, "/subjects/d-value?permanent=true", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        r.call(Method::GET, "/subjects?deleted=true", None).await.1,
        json!([])
    );
    r.stop().await;
}
