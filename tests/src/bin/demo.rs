//! `cutover-demo`: the proxy's main job on one machine. Two local backends stand in
//! for the old and the new cluster; the demo starts `cutover-proxy` in front of them,
//! shows the sticky split, moves it over the admin API and through the config file,
//! and prints the `curl` commands to try by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use cutover_tests::{Backend, Client, Proxy, ProxyBuilder, two_backend_config};
use http::Method;

const HOST: &str = "shop.example.com";

/// Runs two local backends and cutover-proxy, and walks through a weight change.
#[derive(Parser, Debug)]
#[command(name = "cutover-demo", version, about)]
struct Cli {
    /// Keep everything running after the walkthrough, until Ctrl-C, to try the
    /// printed curl commands by hand.
    #[arg(long)]
    serve: bool,
    /// Requests per measurement (each one a new user without a cookie).
    #[arg(long, default_value_t = 2000)]
    users: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let config = two_backend_config(
        old.addr,
        new.addr,
        &[HOST, "*.shop.example.com"],
        (90.0, 10.0),
        "writes = \"old\"\nsticky = { cookie = \"cutover\" }",
    );
    println!("== cutover demo ==");
    println!("backends: old at {}, new at {}", old.addr, new.addr);
    let proxy = match ProxyBuilder::new(config).start() {
        Ok(p) => p,
        Err((status, logs)) => {
            eprintln!("cutover-proxy did not start ({status:?}):\n{logs}");
            std::process::exit(1);
        }
    };
    println!(
        "cutover-proxy: traffic on {}, admin API on {}",
        proxy.http, proxy.admin
    );
    println!("config file: {}\n", proxy.config_path().display());

    let c = Client::new();
    let before = measure(
        &proxy,
        &c,
        cli.users,
        "weights old=90 new=10 (from the file)",
    )
    .await;

    step("move weights to 50/50 over the admin API");
    let started = Instant::now();
    let r = proxy.put_weights(HOST, r#"{"old":50,"new":50}"#).await;
    println!(
        "PUT /routes/{HOST}/weights -> {} in {:?}",
        r.status,
        started.elapsed()
    );
    measure(&proxy, &c, cli.users, "weights old=50 new=50 (admin API)").await;

    step("users who were on new stay on new");
    let mut stayed = 0;
    let mut moved = 0;
    let on_new: Vec<_> = before.iter().filter(|(_, b)| b == "new").collect();
    for (cookie, _) in &on_new {
        let h = format!("cutover={cookie}");
        let r = c
            .send(proxy.http, Method::GET, HOST, "/", &[("cookie", &h)], "")
            .await
            .unwrap();
        if r.backend() == "new" {
            stayed += 1
        } else {
            moved += 1
        }
    }
    println!(
        "{stayed} of {} users who were on new are still on new ({moved} moved back)",
        on_new.len()
    );

    step("writes go to the write side (writes = \"old\")");
    let r = c
        .send(proxy.http, Method::POST, HOST, "/orders", &[], "{}")
        .await
        .unwrap();
    println!("POST /orders -> {} from {}", r.status, r.backend());

    step("edit the config file: new=100 (hot reload)");
    let text = std::fs::read_to_string(proxy.config_path()).unwrap();
    let text = text.replace("old = 90, new = 10", "old = 0, new = 100");
    let tmp = proxy.dir.path().join(".cutover.toml.new");
    std::fs::write(&tmp, text).unwrap();
    let written = Instant::now();
    std::fs::rename(&tmp, proxy.config_path()).unwrap();
    loop {
        let s = proxy.status().await;
        if s["routes"][0]["weights"]["new"] == 100.0 {
            println!(
                "generation {} applied {:?} after the file was replaced",
                s["generation"],
                written.elapsed()
            );
            break;
        }
        if written.elapsed() > Duration::from_secs(5) {
            println!("not applied after 5s: {}", proxy.status().await);
            std::process::exit(1);
        }
    }
    measure(&proxy, &c, cli.users, "weights old=0 new=100 (file)").await;

    println!("\n== try it yourself ==");
    println!(
        "curl -si -H 'Host: {HOST}' http://{}/ | grep -i -e x-cutover-backend -e set-cookie",
        proxy.http
    );
    println!("curl -s http://{}/status", proxy.admin);
    println!(
        "curl -s -X PUT http://{}/routes/{HOST}/weights -H 'content-type: application/json' -d '{{\"old\":90,\"new\":10}}'",
        proxy.admin
    );
    println!(
        "curl -s http://{}/metrics | grep cutover_requests_total",
        proxy.admin
    );
    if cli.serve {
        println!("\nserving until Ctrl-C ...");
        let _ = tokio::signal::ctrl_c().await;
    } else {
        println!("\n(run with --serve to keep it running)");
    }
    drop(proxy);
    drop((old, new));
}

fn step(what: &str) {
    println!("\n-- {what}");
}

/// Sends `users` requests without cookies; prints the split; returns each user's
/// cookie and side.
async fn measure(proxy: &Proxy, c: &Client, users: usize, label: &str) -> Vec<(String, String)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(users);
    for _ in 0..users {
        let r = c.get(proxy.http, HOST, "/").await.unwrap();
        let cookie = r
            .header("set-cookie")
            .trim_start_matches("cutover=")
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        *counts.entry(r.backend().to_string()).or_default() += 1;
        out.push((cookie, r.backend().to_string()));
    }
    let split: Vec<String> = counts
        .iter()
        .map(|(b, n)| format!("{b} {:.1}%", *n as f64 * 100.0 / users as f64))
        .collect();
    println!("{label}: {users} new users -> {}", split.join(", "));
    out
}
