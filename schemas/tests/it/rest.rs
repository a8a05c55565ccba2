use embedstream_schemas::Codec;
use embedstream_schemas::access::Secret;
use embedstream_schemas::records::ItemEvent;
use embedstream_schemas::registry::WriteAuth;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

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

#[tokio::test]
async fn with_a_users_file_only_listed_credentials_change_the_registry_and_reads_stay_open() {
    let auth = WriteAuth::parse(&format!(
        "[users]\nembedstream = \"sha256:{}\"\n[tokens]\n\"a-deployer-token-000001\" = \"deployer\"\n",
        Secret::hex_of("the-embedstream-password")
    ))
    .unwrap();
    let reg = TestRegistry::start_with_auth(auth).await;
    let subject = "guarded-value";
    let with_user = reg
        .url
        .replacen("http://", "http://embedstream:the-embedstream-password@", 1);
    let send = |method: Method, url: String, auth: Option<&'static str>, body: Option<Value>| async move {
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.header("content-type", CT).body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        (status, value)
    };
    let schema = json!({ "schema": V1 });
    let versions = |base: &str| format!("{base}/subjects/{subject}/versions");

    // No credentials, a wrong password, an unknown token: 401 with Confluent's code; nothing stored.
    let (status, body) = send(Method::POST, versions(&reg.url), None, Some(schema.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), 40101);
    let wrong = reg
        .url
        .replacen("http://", "http://embedstream:not-the-password-at-all@", 1);
    let (status, _) = send(Method::POST, versions(&wrong), None, Some(schema.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(
        Method::POST,
        versions(&reg.url),
        Some("Bearer not-a-listed-token-0001"),
        Some(schema.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = reg
        .call(Method::GET, &format!("/subjects/{subject}/versions"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused write stored nothing"
    );

    // Basic auth from the URL's user info (as Confluent's clients send it) registers.
    let (status, body) = send(
        Method::POST,
        versions(&with_user),
        None,
        Some(schema.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_i64().unwrap();

    // Reads, lookups and compatibility checks stay open.
    let (status, _) = reg
        .call(Method::GET, &format!("/schemas/ids/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = reg
        .call(
            Method::POST,
            &format!("/subjects/{subject}"),
            Some(schema.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = reg
        .call(
            Method::POST,
            &format!("/compatibility/subjects/{subject}/versions/latest"),
            Some(json!({ "schema": V2_COMPATIBLE })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Config and deletes are changes too; the bearer token makes them.
    let config = format!("{}/config/{subject}", reg.url);
    let (status, _) = send(
        Method::PUT,
        config.clone(),
        None,
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(
        Method::DELETE,
        format!("{}/subjects/{subject}", reg.url),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = reg
        .call(Method::GET, &format!("/subjects/{subject}/versions"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "a refused delete deleted nothing");
    let (status, body) = send(
        Method::PUT,
        config,
        Some("Bearer a-deployer-token-000001"),
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The platform's codec takes the credentials from the URL: it registers and reads back.
    let codec = Codec::new(&with_user);
    let topic = "guarded-codec";
    let record = crate::codec::event(1);
    let bytes = codec
        .encode(topic, &record)
        .await
        .expect("the codec registers with the URL's credentials");
    let back: ItemEvent = Codec::new(&reg.url).decode(&bytes).await.unwrap();
    assert_eq!(back, record);
    let refused = Codec::new(&reg.url)
        .encode("guarded-codec-2", &record)
        .await
        .unwrap_err();
    // Missing credentials are not the record's fault: the writer pauses and retries (never
    // dead-letters), and the error says why.
    assert!(refused.is_retryable(), "{refused}");
    assert!(refused.to_string().contains("401"), "{refused}");
    reg.stop().await;
}
