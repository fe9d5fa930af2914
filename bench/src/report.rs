//! The result rows, their goals, and how they are printed: a table or JSON.

use serde::Serialize;

/// A performance goal for one row.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// outpost / baseline must be at least this (throughput).
    RatioAtLeast(f64),
    /// outpost / baseline must be at most this (time taken; the clone goals).
    RatioAtMost(f64),
    /// The outpost figure must be at most this (in the row's unit).
    AtMost(f64),
    /// A yes/no check: outpost figure 1 means yes.
    Yes,
}

impl Goal {
    fn describe(self, unit: &str) -> String {
        match self {
            Goal::RatioAtLeast(r) => format!(">= {r}x"),
            Goal::RatioAtMost(r) => format!("<= {r}x"),
            Goal::AtMost(v) => format!("<= {} {unit}", fmt_num(v)),
            Goal::Yes => "yes".to_string(),
        }
    }

    fn met(self, outpost: Option<f64>, ratio: Option<f64>) -> Option<bool> {
        match self {
            Goal::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Goal::RatioAtMost(r) => ratio.map(|x| x <= r),
            Goal::AtMost(v) => outpost.map(|x| x <= v),
            Goal::Yes => outpost.map(|x| x >= 1.0),
        }
    }
}

/// One measured figure next to its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub outpost: Option<f64>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub goal: Option<String>,
    pub met: Option<bool>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, metric: impl Into<String>, unit: &str) -> Self {
        Row {
            scenario: scenario.to_string(),
            metric: metric.into(),
            unit: unit.to_string(),
            outpost: None,
            baseline: None,
            ratio: None,
            goal: None,
            met: None,
            note: None,
        }
    }

    pub fn outpost(mut self, v: Option<f64>) -> Self {
        self.outpost = v;
        self.recompute(None);
        self
    }

    pub fn baseline(mut self, v: Option<f64>) -> Self {
        self.baseline = v;
        self.recompute(None);
        self
    }

    pub fn goal(mut self, g: Goal) -> Self {
        self.recompute(Some(g));
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Self {
        let n = n.into();
        self.note = Some(match self.note.take() {
            Some(old) => format!("{old}; {n}"),
            None => n,
        });
        self
    }

    fn recompute(&mut self, goal: Option<Goal>) {
        self.ratio = match (self.outpost, self.baseline) {
            (Some(o), Some(b)) if b != 0.0 => Some(o / b),
            _ => None,
        };
        if let Some(g) = goal {
            self.goal = Some(g.describe(&self.unit));
            self.met = g.met(self.outpost, self.ratio);
        }
    }
}

/// A row that says a scenario could not be measured, and why.
pub fn failed(scenario: &str, why: &str) -> Row {
    Row::new(scenario, "(not measured)", "").note(why.to_string())
}

/// Formats a figure with a precision suited to its size.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{v:.0}");
        group_thousands(&s)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn group_thousands(s: &str) -> String {
    let (sign, digits) = s.strip_prefix('-').map_or(("", s), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn cell(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if unit == "yes/no" => if v >= 1.0 { "yes" } else { "no" }.to_string(),
        Some(v) if unit.is_empty() => fmt_num(v),
        Some(v) => format!("{} {unit}", fmt_num(v)),
    }
}

/// Renders the rows as an aligned text table (notes go underneath, numbered).
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario", "metric", "outpost", "baseline", "ratio", "goal", "met?",
    ];
    let mut notes = Vec::new();
    let mut lines: Vec<[String; 7]> = Vec::new();
    for r in rows {
        let mut metric = r.metric.clone();
        if let Some(n) = &r.note {
            notes.push(n.clone());
            metric = format!("{metric} [{}]", notes.len());
        }
        lines.push([
            r.scenario.clone(),
            metric,
            cell(r.outpost, &r.unit),
            cell(r.baseline, &r.unit),
            r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x")),
            r.goal.clone().unwrap_or_else(|| "-".to_string()),
            match r.met {
                Some(true) => "yes".to_string(),
                Some(false) => "NO".to_string(),
                None => "-".to_string(),
            },
        ]);
    }
    let mut widths = header.map(str::len);
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let render = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let mut out = String::new();
    out.push_str(&render(&header.map(String::from)));
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for l in &lines {
        out.push_str(&render(l));
        out.push('\n');
    }
    for (i, n) in notes.iter().enumerate() {
        out.push_str(&format!("[{}] {n}\n", i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_goal_are_computed() {
        let r = Row::new("hello", "h1 req/s", "req/s")
            .outpost(Some(8000.0))
            .baseline(Some(10000.0))
            .goal(Goal::RatioAtLeast(0.8));
        assert_eq!(r.ratio, Some(0.8));
        assert_eq!(r.met, Some(true));
        let r = Row::new("memory", "idle RSS", "MiB")
            .outpost(Some(12.0))
            .goal(Goal::AtMost(10.0));
        assert_eq!(r.met, Some(false));
        assert_eq!(r.goal.as_deref(), Some("<= 10.0 MiB"));
    }

    #[test]
    fn table_has_every_column_and_numbered_notes() {
        let rows = vec![
            Row::new("stream", "1 stream", "MiB/s")
                .outpost(Some(1234.6))
                .baseline(Some(2000.0))
                .goal(Goal::RatioAtLeast(0.5)),
            failed("clone", "needs git support (issue 3)"),
        ];
        let t = table(&rows);
        assert!(t.contains("| scenario |"), "{t}");
        assert!(t.contains("1,235 MiB/s"), "{t}");
        assert!(t.contains("0.62x"), "{t}");
        assert!(t.contains("[1] needs git support (issue 3)"), "{t}");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(-1234.0), "-1,234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.01234), "0.012");
    }
}
