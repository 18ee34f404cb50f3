//! `tim cache stats|ls|gc|clear`: the fixture artifact cache, as the daemon
//! keeps it (the daemon owns `.tim/cache/` and its index).

use crate::error::ClientError;
use crate::error::exit;
use crate::pytest::{answer, seconds_words};
use tim_proto::layout::Layout;
use tim_proto::{
    CacheGcParams, CacheGcReply, CacheStatsParams, CacheStatsReply, CacheTransferParams,
    CacheTransferReply, Request, Response,
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
    /// Evict least recently used entries until the cache holds at most SIZE (default: [cache] max_size, 2GiB).
    Gc {
        /// The size to keep: bytes, or with a unit (500MB, 2GiB).
        #[arg(long, value_name = "SIZE", value_parser = tim_daemon::config::parse_size)]
        max_size: Option<u64>,
        #[command(flatten)]
        json: crate::JsonFlag,
    },
    /// Remove every entry and its counters.
    Clear {
        #[command(flatten)]
        json: crate::JsonFlag,
    },
    /// Write every entry and its artifact to DIR (tim-cache.json and blobs/), to commit or hand to CI.
    Export {
        dir: std::path::PathBuf,
        #[command(flatten)]
        json: crate::JsonFlag,
    },
    /// Add the entries exported to DIR (each artifact checked against its digest).
    Import {
        dir: std::path::PathBuf,
        #[command(flatten)]
        json: crate::JsonFlag,
    },
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
        CacheAction::Export { dir, json } => return transfer(layout, &dir, true, json.json),
        CacheAction::Import { dir, json } => return transfer(layout, &dir, false, json.json),
    }
    Ok(exit::OK)
}

fn transfer(
    layout: &Layout,
    dir: &std::path::Path,
    export: bool,
    json: bool,
) -> anyhow::Result<u8> {
    // The daemon works in the root; the user means a path from here.
    let dir = std::path::absolute(dir)
        .map_err(|e| ClientError::io(format!("cannot use {}", dir.display()), e))?;
    let params = CacheTransferParams {
        dir: dir.display().to_string(),
    };
    let request = if export {
        Request::CacheExport(params)
    } else {
        Request::CacheImport(params)
    };
    let pick = |r| match r {
        Response::CacheTransfer(t) => Some(t),
        _ => None,
    };
    let Some(reply): Option<CacheTransferReply> = answer(layout, request, pick, json)? else {
        return Ok(exit::OK);
    };
    println!(
        "{} {} entries ({}) {} {}",
        if export { "exported" } else { "imported" },
        reply.entries,
        bytes_words(reply.bytes),
        if export { "to" } else { "from" },
        dir.display()
    );
    for why in &reply.skipped {
        println!("  left out: {why}");
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
