//! The platform as `embedstream up` runs it, seen through its status page in a real browser
//! (Debian's `chromium`, headless, which `compose/dev` installs): the version with its index
//! size, the consumers with their plans and the latency of their queries, the drift consumer's
//! report, and the search box answering a query given in the page's address.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Up, up_dir};
use crate::stage::{MINILM, Platform, terminate, upsert};

/// The `<tr …>` row of the table whose attribute `attr` is `value`, as the browser left it.
fn row<'a>(dom: &'a str, attr: &str, value: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr {attr}=\"{value}\""))
        .unwrap_or_else(|| panic!("no row {attr}={value:?} in the page:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// The cells' texts of a row.
fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|c| {
            let inner = &c[c.find('>').map_or(0, |i| i + 1)..];
            let mut text = String::new();
            let mut tag = false;
            for ch in inner.chars() {
                match ch {
                    '<' => tag = true,
                    '>' => tag = false,
                    c if !tag => text.push(c),
                    _ => {}
                }
            }
            text.trim().to_owned()
        })
        .collect()
}

async fn status(client: &reqwest::Client, query: u16) -> serde_json::Value {
    client
        .get(format!("http://127.0.0.1:{query}/v1/status"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_running_platform_in_a_browser() {
    let platform = Platform::new("status-page");
    platform.ensure_topics().await;
    let drift = up_dir(&platform).join("drift");
    let mut up = Up::start(
        &platform,
        &[
            "--drift-interval-secs",
            "15",
            "--drift-canaries",
            "50",
            "--drift-state-dir",
            drift.to_str().unwrap(),
        ],
    );
    let query = up.query;

    let mut events: Vec<_> = (0..40)
        .map(|i| {
            upsert(
                &format!("pkg:filler-{i}"),
                &format!("Library number {i} for parsing configuration files"),
            )
        })
        .collect();
    events.push(upsert(
        "pkg:gimp",
        "GNU Image Manipulation Program: an image editor for photos and drawings",
    ));
    platform.produce_events(&events).await;

    // Everything searchable, and one drift report (the reference is made, then scored).
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ok = match client
            .get(format!("http://127.0.0.1:{query}/v1/status"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let s: serde_json::Value = r.json().await.unwrap();
                s["versions"][0]["sink"]["items"] == 41
                    && !s["drift"].as_array().unwrap().is_empty()
            }
            _ => false,
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the platform did not index 41 items and report drift in 180 s; its log:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..5 {
        let r = client
            .post(format!("http://127.0.0.1:{query}/v1/search"))
            .json(
                &serde_json::json!({"consumer": "search", "text": "configuration parser", "k": 3}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let json = status(&client, query).await;
    assert_eq!(json["serving_default"], MINILM);

    let page = format!("http://127.0.0.1:{query}/status?consumer=search&q=image%20editor");
    let browser = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            "--dump-dom",
            &page,
        ])
        .output()
        .expect("chromium (Debian's package; compose/dev installs it) must be on the PATH");
    let dom = String::from_utf8_lossy(&browser.stdout).into_owned();
    assert!(
        browser.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&browser.stderr)
    );
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page did not load its status:\n{dom}"
    );

    // The version: active, its topic, all 41 items in the index.
    let version = cells(row(&dom, "data-model", MINILM));
    assert_eq!(version[0], MINILM);
    assert_eq!(version[1], "ACTIVE");
    assert_eq!(version[2], platform.embeddings());
    assert_eq!(version[3], "41", "items: {version:?}");

    // Its one sink: the whole version, serving, up.
    let replica = cells(row(&dom, "data-replica", MINILM));
    assert_eq!(replica[1..3], ["0/1", "shared"], "{replica:?}");
    assert_eq!(replica[4], "serving", "{replica:?}");
    assert_eq!(replica[6], "up", "{replica:?}");

    // The consumer that queried: its plan, 5 queries (the page's own search comes after the
    // table was drawn, or is counted: at least 5), and a p95 next to its 50 ms objective.
    let search = cells(row(&dom, "data-consumer", "search"));
    assert_eq!(search[1], format!("{MINILM} 100%"));
    assert!(number(&search[2]) >= 5.0, "{search:?}");
    assert!(number(&search[4]) > 0.0, "p95 shown: {search:?}");
    assert_eq!(search[6], "50 ms");

    // The drift consumer's self report, plotted and in the table.
    let drift = cells(row(&dom, "data-drift", &format!("{MINILM} (self)")));
    assert_eq!(drift[1], "self");
    assert_eq!(drift[5], "ok", "{drift:?}");
    assert!(number(&drift[3]) > 0.999, "{drift:?}");
    assert!(dom.contains("<polyline"), "the drift chart has a line");

    // The search box ran the address's query: the image editor first.
    assert!(dom.contains("data-searched=\"1\""), "no search ran:\n{dom}");
    let first = dom
        .find("<tr class=\"result\">")
        .map(|i| cells(&dom[i..dom[i..].find("</tr>").unwrap() + i]))
        .expect("search results");
    assert_eq!(first[1], "pkg:gimp", "{first:?}");

    // SIGTERM: a clean stop of every task, exit 0.
    let status = terminate(&mut up.process.0);
    assert!(status.success(), "up exited {status:?}");
}

/// A number as the page shows it: en-US, with thousands separators ("1,153.9").
fn number(cell: &str) -> f64 {
    cell.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("not a number: {cell:?}: {e}"))
}
