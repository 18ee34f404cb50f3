//! `tim cache stats|ls|gc|clear`: the fixture artifact cache, as the daemon
//! keeps it (the daemon owns `.tim/cache/` and its index).

use crate::error::exit;
use crate::pytest::{answer, seconds_words};
use tim_proto::layout::Layout;
use tim_proto::{
    CacheGcParams, CacheGcReply, CacheStatsParams, CacheStatsReply, Request, Response,
};

#[derive(clap::Subcommand, Debug)]
pub enum CacheAction {
    /// Entries, bytes, hits, misses and time saved, per fixture.
    Stats {
        #[command(flatten)]
        json: crate::JsonFlag,
    },
    /// Every entry, most recently used first.
    Ls {
        #[command(flatten)]
        json: crate::JsonFlag,
    },
    /// Evict least recently used entries until the cache holds at most SIZE (default 2GiB).
    Gc {
        /// The size to keep: bytes, or with a unit (500MB, 2GiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        #[command(flatten)]
        json: crate::JsonFlag,
    },
    /// Remove every entry and its counters.
    Clear {
        #[command(flatten)]
        json: crate::JsonFlag,
    },
}

/// `123`, `500KB`, `500MB`, `2GB` (powers of 1000) or `KiB`, `MiB`, `GiB`
/// (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size: write bytes, or a number with KB, MB, GB, KiB, MiB or GiB")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000 * 1000,
        "gb" | "g" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    Ok((number * scale as f64) as u64)
}

fn bytes_words(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn run(layout: &Layout, action: CacheAction) -> anyhow::Result<u8> {
    let stats = |json| {
        let pick = |r| match r {
            Response::CacheStats(s) => Some(s),
            _ => None,
        };
        answer(layout, Request::CacheStats(CacheStatsParams {}), pick, json)
    };
    match action {
        CacheAction::Stats { json } => {
            let Some(reply): Option<CacheStatsReply> = stats(json.json)? else {
                return Ok(exit::OK);
            };
            println!(
                "{} entries, {} in {}",
                reply.entries.len(),
                bytes_words(reply.bytes),
                reply.dir
            );
            for f in &reply.fixtures {
                println!(
                    "  {}: {} entries, {}, {} hits, {} misses, about {} saved",
                    f.fixture,
                    f.entries,
                    bytes_words(f.bytes),
                    f.hits,
                    f.misses,
                    seconds_words(f.saved_seconds)
                );
            }
        }
        CacheAction::Ls { json } => {
            let Some(reply): Option<CacheStatsReply> = stats(json.json)? else {
                return Ok(exit::OK);
            };
            if reply.entries.is_empty() {
                println!("the artifact cache is empty");
            }
            for e in &reply.entries {
                println!(
                    "{}  {}  {}  {} hits  took {}{}",
                    e.fixture,
                    bytes_words(e.size),
                    e.serializer,
                    e.hits,
                    seconds_words(e.produce_seconds),
                    if e.tracks_code { "" } else { "  (inputs only)" }
                );
            }
        }
        CacheAction::Gc { max_size, json } => {
            return gc(
                layout,
                CacheGcParams {
                    max_bytes: max_size,
                    clear: false,
                },
                json.json,
            );
        }
        CacheAction::Clear { json } => {
            return gc(
                layout,
                CacheGcParams {
                    max_bytes: None,
                    clear: true,
                },
                json.json,
            );
        }
    }
    Ok(exit::OK)
}

fn gc(layout: &Layout, params: CacheGcParams, json: bool) -> anyhow::Result<u8> {
    let pick = |r| match r {
        Response::CacheGc(g) => Some(g),
        _ => None,
    };
    let Some(reply): Option<CacheGcReply> = answer(layout, Request::CacheGc(params), pick, json)?
    else {
        return Ok(exit::OK);
    };
    println!(
        "removed {} entries ({}); {} entries ({}) kept",
        reply.removed,
        bytes_words(reply.freed_bytes),
        reply.kept,
        bytes_words(reply.bytes)
    );
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        for (text, want) in [
            ("123", Some(123)),
            ("500MB", Some(500_000_000)),
            ("2GiB", Some(2 << 30)),
            ("1.5 KiB", Some(1536)),
            ("10 parsecs", None),
            ("MB", None),
        ] {
            assert_eq!(parse_size(text).ok(), want, "{text}");
        }
    }
}
