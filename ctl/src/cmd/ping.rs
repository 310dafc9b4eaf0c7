//! `sockctl ping`: log in, send PINGs, print the round trips.

use super::Context;
use crate::client::ClientError;
use crate::output;
use clap::Args;
use sockd_proto::code::exit;
use sockd_proto::hex;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Number of pings
    #[arg(short = 'c', long = "count", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// Seconds between pings
    #[arg(short = 'i', long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("expected seconds between 0 and 3600, found {s:?}")),
    }
}

pub async fn run(ctx: &Context, args: PingArgs) -> Result<u8, ClientError> {
    let client = ctx.connect().await?;
    let info = client.info().clone();
    let fingerprint = hex::encode(&info.certificate_sha256);
    let limit = ctx.config.connect_timeout;
    let mut times = Vec::new();
    for i in 0..args.count {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs_f64(args.interval)).await;
        }
        let rtt = match tokio::time::timeout(limit, client.ping()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::new(
                    exit::CONNECT,
                    format!("no PONG from {} within {} s", info.address, limit.as_secs()),
                ));
            }
        };
        let ms = rtt.as_secs_f64() * 1000.0;
        times.push(ms);
        if !args.json {
            output::print(&format!(
                "pong from {} ({}) as {}: time={ms:.2} ms; server certificate sha256:{fingerprint}\n",
                info.identity, info.software, info.user
            ))?;
        }
    }
    client.close().await;
    if args.json {
        let value = serde_json::json!({
            "identity": info.identity,
            "software": info.software,
            "user": info.user,
            "address": info.address.to_string(),
            "session_id": info.session_id,
            "certificate_sha256": fingerprint,
            "times_ms": times,
        });
        output::print_json(&value.to_string())?;
    } else if times.len() > 1 {
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let avg = times.iter().sum::<f64>() / times.len() as f64;
        output::print(&format!(
            "{} pings: min/avg/max = {min:.2}/{avg:.2}/{max:.2} ms\n",
            times.len()
        ))?;
    }
    Ok(exit::OK)
}
