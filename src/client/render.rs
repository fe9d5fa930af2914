//! What the user sees besides the agent's bytes: clone / push progress on stderr (a bar
//! redrawn in place on a terminal, a few plain lines otherwise) and the one-line summary
//! at the end.

use std::io::Write;

use super::types::{Done, Progress};

/// Draws transfer progress on stderr.
pub struct ProgressView {
    tty: bool,
    /// A bar is drawn on the current line and must be cleared before other output.
    drawn: bool,
    phase: String,
    /// Last quarter printed in plain mode.
    quarter: Option<u64>,
}

impl ProgressView {
    pub fn new(tty: bool) -> ProgressView {
        ProgressView {
            tty,
            drawn: false,
            phase: String::new(),
            quarter: None,
        }
    }

    /// Shows one progress event.
    pub fn update(&mut self, p: &Progress) {
        if p.phase != self.phase {
            self.clear();
            self.phase = p.phase.clone();
            self.quarter = None;
        }
        let done = p.total_objects > 0 && p.received_objects >= p.total_objects;
        let pct = (p.received_objects * 100)
            .checked_div(p.total_objects)
            .unwrap_or(0)
            .min(100);
        let counts = format!(
            "{}/{} objects, {}",
            p.received_objects,
            p.total_objects,
            human_bytes(p.bytes)
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            const WIDTH: u64 = 24;
            let fill = (pct * WIDTH / 100) as usize;
            let bar = format!("{}{}", "#".repeat(fill), "-".repeat(WIDTH as usize - fill));
            let _ = write!(err, "\r\x1b[2K{:<5} [{bar}] {pct:>3}% {counts}", p.phase);
            self.drawn = true;
            if done {
                let _ = writeln!(err);
                self.drawn = false;
            }
        } else {
            let quarter = pct / 25;
            if self.quarter != Some(quarter) || done {
                if !(done && self.quarter == Some(4)) {
                    let _ = writeln!(err, "outpost: {} {pct}% ({counts})", p.phase);
                }
                self.quarter = Some(quarter);
            }
        }
        let _ = err.flush();
    }

    /// Ends a bar left on the line (before output or a message).
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// `1.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The one-line summary of a finished task.
pub fn summary(id: &str, d: &Done) -> String {
    let mut parts = vec![format!("{id} {}", d.status)];
    if let Some(c) = d.exit_code {
        parts.push(format!("exit {c}"));
    }
    if let Some(b) = &d.branch {
        parts.push(format!("branch {b}"));
    }
    if let Some(c) = &d.commit {
        parts.push(format!("commit {}", &c[..c.len().min(12)]));
    }
    if let Some(p) = &d.pr_url {
        parts.push(p.clone());
    }
    if let Some(ms) = d.duration_ms {
        parts.push(format!("{:.1}s", ms as f64 / 1000.0));
    }
    if let Some(r) = &d.resources {
        if let Some(cpu) = r.cpu_seconds {
            parts.push(format!("cpu {cpu:.1}s"));
        }
        if let Some(m) = r.memory_peak_bytes {
            parts.push(format!("peak {}", human_bytes(m)));
        }
    }
    let cost = d
        .cost
        .as_ref()
        .and_then(|c| c.total_usd.or(c.compute_usd))
        .or_else(|| d.agent.as_ref().and_then(|a| a.cost_usd));
    if let Some(usd) = cost {
        parts.push(format!("${usd:.4}"));
    }
    if let Some(a) = &d.agent {
        if let Some(t) = a.num_turns {
            parts.push(format!("{t} turns"));
        }
    }
    if let Some(e) = &d.error {
        parts.push(format!("error: {e}"));
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_shows_added_fields_when_present() {
        let d: Done = serde_json::from_value(json!({
            "status": "done", "exit_code": 0, "branch": "polecat/x",
            "commit": "0123456789abcdef0123", "duration_ms": 2500,
            "cost": {"compute_usd": 0.00012, "total_usd": 0.0312},
            "resources": {"cpu_seconds": 1.25, "memory_peak_bytes": 3145728}
        }))
        .unwrap();
        let s = summary("t-1", &d);
        assert_eq!(
            s,
            "t-1 done · exit 0 · branch polecat/x · commit 0123456789ab · 2.5s · cpu 1.2s · peak 3.0 MiB · $0.0312"
        );
        let d: Done = serde_json::from_value(json!({"status": "failed", "exit_code": 3})).unwrap();
        assert_eq!(summary("t-2", &d), "t-2 failed · exit 3");
    }
}
