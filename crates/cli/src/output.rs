//! Table and JSON rendering. JSON is the canonical proto3 JSON mapping (the same
//! field names grpcurl prints), produced through the descriptor set.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(driftwatch_proto::FILE_DESCRIPTOR_SET).expect("embedded descriptor set decodes")
    })
}

/// Any driftwatch.v1 message as pretty proto3 JSON.
/// `name` is the message's short name in package driftwatch.v1, e.g. "HostSummary".
pub fn to_json(msg: &impl prost::Message, name: &str) -> anyhow::Result<String> {
    let full = format!("driftwatch.v1.{name}");
    let desc = pool().get_message_by_name(&full).ok_or_else(|| anyhow::anyhow!("no descriptor for {full}"))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::pretty(&mut out);
    dynamic.serialize_with_options(&mut ser, &SerializeOptions::new().stringify_64_bit_integers(true))?;
    Ok(String::from_utf8(out)?)
}

/// A plain aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut parts = Vec::new();
        for (i, c) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            parts.push(format!("{c:<w$}"));
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied(), &mut out);
    for r in rows {
        line(&mut r.iter().map(String::as_str), &mut out);
    }
    out
}

pub fn ts(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let age = driftwatch_proto::now_millis() - driftwatch_proto::timestamp_millis(t);
            human_age(age)
        }
    }
}

/// `in 2h` for a time in the future (`3s ago` once past).
pub fn until(t: &prost_types::Timestamp) -> String {
    let ahead = driftwatch_proto::timestamp_millis(t) - driftwatch_proto::now_millis();
    if ahead <= 0 {
        return human_age(-ahead);
    }
    format!("in {}", human_age(ahead).trim_end_matches(" ago"))
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`.
pub fn human_age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// A duration flag (`--bake 5m`, `--timeout 1h30m`): the grammar of every driftwatch
/// config and flag, as a `google.protobuf.Duration` for the request.
pub fn duration_arg(text: &str, flag: &str) -> anyhow::Result<prost_types::Duration> {
    driftwatch_proto::duration::parse(text)
        .map(driftwatch_proto::duration::to_proto)
        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

/// A duration from the server, as the flags take it (`1h30m`); `-` when absent.
pub fn duration_text(d: &Option<prost_types::Duration>) -> String {
    match d.as_ref().map(|d| driftwatch_proto::duration::from_proto("", d)) {
        Some(Ok(d)) => driftwatch_proto::duration::format(d),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn json_uses_proto_field_names() {
        let h = driftwatch_proto::v1::HostSummary { host_id: "web-1".into(), file_count: 3, ..Default::default() };
        let j = to_json(&h, "HostSummary").unwrap();
        assert!(j.contains("\"hostId\": \"web-1\""), "{j}");
        assert!(j.contains("\"fileCount\": 3"), "{j}");
    }

    #[test]
    fn humanises() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(human_age(61_000), "1m ago");
    }
}
