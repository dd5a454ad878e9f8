//! Per-request functions of the routing model: route lookup and side selection.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use cutover_config::{Config, RouteTable, Snapshot, bucket_of};

fn snapshot() -> Snapshot {
    let mut text = String::from(
        "[backends.old]\naddrs=[\"127.0.0.1:1\"]\n[backends.new]\naddrs=[\"127.0.0.1:2\"]\n",
    );
    for i in 0..50 {
        text.push_str(&format!(
            "[[routes]]\nhosts=[\"app{i}.example.com\", \"*.app{i}.example.com\"]\nweights={{old=90,new=10}}\n"
        ));
    }
    text.push_str("[[routes]]\nhosts=[\"*\"]\nweights={old=50,new=50}\n");
    match Config::parse(&text, Path::new("bench.toml")) {
        Ok(c) => Snapshot::new(c),
        Err(e) => panic!("{e}"),
    }
}

fn route_lookup(c: &mut Criterion) {
    let s = snapshot();
    c.bench_function("route_lookup/exact", |b| {
        b.iter(|| {
            s.table
                .lookup(&RouteTable::normalize(black_box("app37.example.com:8080")))
        })
    });
    c.bench_function("route_lookup/wildcard", |b| {
        b.iter(|| {
            s.table
                .lookup(&RouteTable::normalize(black_box("www.app37.example.com")))
        })
    });
    c.bench_function("route_lookup/default", |b| {
        b.iter(|| {
            s.table
                .lookup(&RouteTable::normalize(black_box("unknown.org")))
        })
    });
}

fn side_selection(c: &mut Criterion) {
    let s = snapshot();
    let key = b"5f0c1d9e8a7b6c5d4e3f2a1b0c9d8e7f";
    c.bench_function("side_selection/cookie_key", |b| {
        b.iter(|| s.weights(3).pick(bucket_of(black_box(key))))
    });
}

criterion_group!(benches, route_lookup, side_selection);
criterion_main!(benches);
