//! Per-request cookie work: finding the sticky cookie among a browser's cookies, and
//! minting one for a new user.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header::COOKIE};

fn cookie_parsing(c: &mut Criterion) {
    let mut typical = HeaderMap::new();
    typical.insert(
        COOKIE,
        HeaderValue::from_static(
            "_ga=GA1.2.1234567890.1700000000; theme=dark; session=eyJhbGciOiJIUzI1NiJ9.payload.sig; \
             cutover=5f0c1d9e8a7b6c5d4e3f2a1b0c9d8e7f; consent=yes",
        ),
    );
    let empty = HeaderMap::new();
    c.bench_function("cookie/find_among_five", |b| {
        b.iter(|| cutover_proxy::cookie(black_box(&typical), "cutover"))
    });
    c.bench_function("cookie/absent", |b| {
        b.iter(|| cutover_proxy::cookie(black_box(&empty), "cutover"))
    });
    c.bench_function("cookie/mint", |b| b.iter(cutover_proxy::mint));
}

criterion_group!(benches, cookie_parsing);
criterion_main!(benches);
