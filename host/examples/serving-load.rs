//! A closed-loop serving client for `scripts/bench-serving.sh`: one
//! keep-alive connection asking a running host, one request after another,
//! for a 7-day window of random posts, either one feature of one entity
//! (`single`) or 100 entities × 2 features (`batch`); prints the latency
//! percentiles as JSON. The first tenth of the requests warms up and is not
//! counted. Any answer other than 200 fails the run.
//! Usage: serving-load ADDR single|batch COUNT POSTS AT_MS

use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: serving-load ADDR single|batch COUNT POSTS AT_MS"
    );
    let (addr, mode) = (&args[1], args[2].as_str());
    let (count, posts, at): (usize, u64, i64) =
        (args[3].parse()?, args[4].parse()?, args[5].parse()?);
    anyhow::ensure!(
        mode == "single" || mode == "batch",
        "mode is single or batch"
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1)
        .build()?;
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut post = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        format!("post-{}", x % posts)
    };
    let warm_up = count / 10;
    let mut latencies = Vec::with_capacity(count);
    let mut answers = 0u64;
    for i in 0..warm_up + count {
        let started = Instant::now();
        let resp = if mode == "single" {
            client
                .get(format!(
                    "http://{addr}/v1/features/likes_per_post/entities/{}?window=7d&at={at}",
                    post()
                ))
                .send()?
        } else {
            let entities: Vec<String> = (0..100).map(|_| post()).collect();
            client
                .post(format!("http://{addr}/v1/batch"))
                .json(&serde_json::json!({
                    "entities": entities,
                    "features": ["likes_per_post", "views_per_post"],
                    "window": "7d",
                    "at": at,
                }))
                .send()?
        };
        let status = resp.status();
        let body = resp.bytes()?;
        anyhow::ensure!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        if i >= warm_up {
            latencies.push(started.elapsed());
            answers += u64::from(body.len() > 2);
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e6
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "requests": latencies.len(), "answers": answers,
            "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": pct(1.0),
        })
    );
    Ok(())
}
