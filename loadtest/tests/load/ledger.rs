//! The ledger holds exactly the writes the server acknowledged: no more, no fewer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_load::read_ledger;

use super::server::{TestServer, cutover_load, reply, stderr};

/// (template, request id, id the server returned) of each acknowledged write.
type Acked = Arc<Mutex<BTreeSet<(String, String, String)>>>;

#[test]
fn the_ledger_equals_the_set_of_acknowledged_writes() {
    let acked: Acked = Arc::default();
    let rejected = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let server = {
        let (acked, rejected) = (acked.clone(), rejected.clone());
        TestServer::start(move |req, _conn| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            let request_id = req
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let path = req.uri().path().to_owned();
            // Orders: every 4th rejected with 500, every 4th+1 with 409, the rest created
            // with the id in the JSON body. Carts: every 3rd rejected with 503, the rest
            // created with the id in a Location header. Reads are never recorded.
            let response = match (path.as_str(), request_id) {
                ("/orders", Some(_)) if n % 4 < 2 => {
                    rejected.fetch_add(1, Ordering::Relaxed);
                    if n.is_multiple_of(4) {
                        reply(500, "down", &[])
                    } else {
                        reply(409, "conflict", &[])
                    }
                }
                ("/orders", Some(rid)) => {
                    let id = format!("order-{n}");
                    acked
                        .lock()
                        .unwrap()
                        .insert(("order".into(), rid, id.clone()));
                    reply(201, format!(r#"{{"id":"{id}","ok":true}}"#), &[])
                }
                (p, Some(rid)) if p.starts_with("/carts/") => {
                    if n.is_multiple_of(3) {
                        rejected.fetch_add(1, Ordering::Relaxed);
                        reply(503, "busy", &[])
                    } else {
                        let id = format!("/carts/{n}");
                        acked
                            .lock()
                            .unwrap()
                            .insert(("cart".into(), rid, id.clone()));
                        reply(200, "{}", &[("location", id)])
                    }
                }
                _ => reply(200, "[]", &[]),
            };
            async move { response }
        })
    };

    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("mix.toml");
    std::fs::write(
        &scenario,
        r#"
        [[request]]
        name = "browse"
        weight = 2
        path = "/items?page={{rand:1..50}}"

        [[request]]
        name = "order"
        weight = 3
        method = "POST"
        path = "/orders"
        headers = { content-type = "application/json" }
        body = '{"sku": "sku-{{seq}}", "ref": "{{uuid}}"}'
        ledger = true

        [[request]]
        name = "cart"
        weight = 2
        method = "PUT"
        path = "/carts/{{seq}}"
        ledger = true
        id_header = "location"
        "#,
    )
    .unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let output = cutover_load(
        &[
            "-r",
            "400",
            "-d",
            "1s",
            "--warmup",
            "250ms",
            "-c",
            "8",
            "-q",
            "--seed",
            "7",
            "--scenario",
            scenario.to_str().unwrap(),
            "--ledger",
            ledger.to_str().unwrap(),
            &server.url("/"),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    drop(server);

    let expected = acked.lock().unwrap().clone();
    let entries = read_ledger(&ledger).unwrap();
    let recorded: BTreeSet<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e.template.clone(),
                e.request_id.clone(),
                e.id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(entries.len(), recorded.len(), "no write is recorded twice");
    assert!(entries.iter().all(|e| (200..300).contains(&e.status)));
    assert!(
        rejected.load(Ordering::Relaxed) > 20,
        "the test must include rejected writes"
    );
    assert!(
        expected.len() > 100,
        "the test must include acknowledged writes"
    );
    assert!(
        expected.iter().any(|(t, ..)| t == "cart") && expected.iter().any(|(t, ..)| t == "order")
    );
    assert_eq!(recorded, expected, "ledger and acknowledged writes differ");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains(&format!("ledger     {} acknowledged writes", entries.len())),
        "{out}"
    );
}
