//! `INFO commandstats`, read into calls and times per command: one parser for the tests'
//! command counts and the benches' reports.

/// One command's entry of `INFO commandstats`
/// (`cmdstat_evalsha:calls=3,usec=41,usec_per_call=13.67,...`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandStat {
    /// The command's name, lowercase (`client|setname` for a subcommand).
    pub name: String,
    /// Times it was called.
    pub calls: u64,
    /// Microseconds the node spent in it, in all.
    pub usec: u64,
    /// Microseconds per call, as the node reports it.
    pub usec_per_call: f64,
}

/// The statistic of one `INFO commandstats` entry from its key (`cmdstat_<name>`) and its
/// value (the comma-separated fields); `None` for any other key, or one without a call
/// count. A missing `usec` or `usec_per_call` reads as 0.
pub fn command_stat(key: &str, fields: &str) -> Option<CommandStat> {
    let name = key.strip_prefix("cmdstat_")?;
    let field = |wanted: &str| {
        fields
            .split(',')
            .find_map(|field| field.strip_prefix(wanted)?.strip_prefix('='))
            .map(str::trim)
    };
    Some(CommandStat {
        name: name.to_ascii_lowercase(),
        calls: field("calls")?.parse().ok()?,
        usec: field("usec").and_then(|v| v.parse().ok()).unwrap_or(0),
        usec_per_call: field("usec_per_call")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
    })
}

/// Every command's statistic from the text of `INFO commandstats`, in the node's order.
pub fn commandstats(info: &str) -> Vec<CommandStat> {
    info.lines()
        .filter_map(|line| {
            let (key, fields) = line.split_once(':')?;
            command_stat(key, fields)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_lines_are_read_into_calls_and_times() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=3,usec=41,usec_per_call=13.67,rejected_calls=0\r\ncmdstat_WAIT:calls=7,usec=9\r\ncmdstat_broken:usec=1\r\nredis_version:7.0.15\r\n";
        let stats = commandstats(info);
        assert_eq!(
            stats,
            vec![
                CommandStat {
                    name: "evalsha".into(),
                    calls: 3,
                    usec: 41,
                    usec_per_call: 13.67,
                },
                CommandStat {
                    name: "wait".into(),
                    calls: 7,
                    usec: 9,
                    usec_per_call: 0.0,
                },
            ]
        );
    }
}
