//! The peers' figures as rows: per figure, outpost against each peer (the baseline
//! column), with each side's notes; a peer that was skipped or stopped is a row saying why.

use super::Figures;
use crate::report::{self, Goal, Row};

/// The figures in rows: per figure, outpost against each peer (the baseline column).
pub fn rows(o: &Figures, peers: &[Figures]) -> Vec<Row> {
    type Get = fn(&Figures) -> Option<f64>;
    let figures: [(&'static str, &str, &str, Get, Goal); 8] = [
        (
            "commands",
            "small commands/s",
            "cmd/s",
            |f| f.cmds_per_s,
            Goal::RatioAtLeast(1.0),
        ),
        (
            "stream",
            "stream MiB/s",
            "MiB/s",
            |f| f.mib_s,
            Goal::RatioAtLeast(1.0),
        ),
        (
            "first byte",
            "stream first byte",
            "ms",
            |f| f.first_byte_ms,
            Goal::RatioAtMost(1.0),
        ),
        (
            "peak",
            "stream peak RSS",
            "MiB",
            |f| f.stream_peak_mib,
            Goal::RatioAtMost(1.0),
        ),
        (
            "idle",
            "idle RSS",
            "MiB",
            |f| f.idle_mib,
            Goal::RatioAtMost(1.0),
        ),
        (
            "per stream",
            "RSS per open stream",
            "KiB",
            |f| f.per_stream_kib,
            Goal::RatioAtMost(1.0),
        ),
        (
            "replay disconnect",
            "replay after disconnect",
            "yes/no",
            |f| f.replay_disconnect.map(|b| b as u8 as f64),
            Goal::Yes,
        ),
        (
            "replay restart",
            "replay after restart",
            "yes/no",
            |f| f.replay_restart.map(|b| b as u8 as f64),
            Goal::Yes,
        ),
    ];
    let mut rows = Vec::new();
    for (_, text) in o
        .notes
        .iter()
        .filter(|(k, _)| *k == "skipped" || *k == "failed")
    {
        rows.push(report::failed("peers", &format!("outpost: {text}")));
    }
    for p in peers {
        let broken: Vec<&String> = p
            .notes
            .iter()
            .filter(|(k, _)| *k == "skipped" || *k == "failed")
            .map(|(_, t)| t)
            .collect();
        for t in &broken {
            rows.push(report::failed("peers", t));
        }
        if p.notes.iter().any(|(k, _)| *k == "skipped") {
            continue;
        }
        for (key, metric, unit, get, goal) in &figures {
            let mut row = Row::new("peers", format!("{metric}: vs {}", p.label), unit)
                .outpost(get(o))
                .baseline(get(p))
                .goal(*goal);
            for (_, n) in p.notes.iter().filter(|(k, _)| k == key) {
                row = row.note(format!("{}: {n}", p.label));
            }
            if rows.iter().all(|r: &Row| !r.metric.starts_with(metric)) {
                for (_, n) in o.notes.iter().filter(|(k, _)| k == key) {
                    row = row.note(format!("outpost: {n}"));
                }
            }
            if *unit == "yes/no" {
                row.ratio = None; // yes against no is not a ratio
            }
            rows.push(row);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_compare_outpost_with_each_peer_and_say_why_one_is_missing() {
        let o = Figures {
            label: "outpost".into(),
            cmds_per_s: Some(300.0),
            idle_mib: Some(4.0),
            replay_disconnect: Some(true),
            ..Figures::default()
        };
        let mut p = Figures {
            label: "peer 1".into(),
            cmds_per_s: Some(100.0),
            idle_mib: Some(2.0),
            replay_disconnect: Some(false),
            ..Figures::default()
        };
        p.note("idle", "a note");
        let mut gone = Figures {
            label: "peer 2".into(),
            ..Figures::default()
        };
        gone.note("skipped", "peer 2 skipped: no Python");
        let rows = rows(&o, &[p, gone]);
        let cmds = rows
            .iter()
            .find(|r| r.metric == "small commands/s: vs peer 1")
            .unwrap();
        assert_eq!(cmds.ratio, Some(3.0));
        assert_eq!(cmds.met, Some(true));
        let idle = rows
            .iter()
            .find(|r| r.metric == "idle RSS: vs peer 1")
            .unwrap();
        assert_eq!(idle.met, Some(false));
        assert!(idle.note.as_deref().unwrap().contains("a note"));
        let replay = rows
            .iter()
            .find(|r| r.metric == "replay after disconnect: vs peer 1")
            .unwrap();
        assert_eq!((replay.ratio, replay.met), (None, Some(true)));
        assert!(rows
            .iter()
            .any(|r| r.note.as_deref() == Some("peer 2 skipped: no Python")));
        assert!(!rows.iter().any(|r| r.metric.contains("peer 2")));
    }
}
