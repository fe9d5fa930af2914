//! One agent run with structured output as the worker follows it: the profile's parser
//! fed the same bytes as the raw output, the spend cap the worker enforces itself where
//! the agent has no flag for it, whether the agent has reported the end of its run, and
//! what the task reports about the agent (`AgentReport`).

use serde::{Deserialize, Serialize};

use super::profile::{AgentProfile, OutputFormat};
use super::structured::{AgentEvent, ErrorCode, RunResult, StructuredParser, Usage};

/// What a task reports about its agent (`agent` in the task object and in `done`),
/// from the agent's own figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub name: String,
    pub session_id: Option<String>,
    pub num_turns: u64,
    pub usage: Usage,
    /// What this run cost, in US dollars.
    pub cost_usd: f64,
}

/// What one chunk of output brought.
#[derive(Debug, Default)]
pub struct Fed {
    /// The `agent` events of the lines the chunk completed, and a `result` of the
    /// worker's own where it ends the run (over the budget, key refused).
    pub events: Vec<AgentEvent>,
    /// The worker-enforced cap was crossed with this chunk: stop the agent.
    pub over_budget: bool,
    /// The run is over with this chunk: the agent reported its end, or an error no
    /// retry can mend (the model API refused the key: Claude Code would retry a 401
    /// for minutes). The worker stops an agent that does not exit then.
    pub finished: bool,
}

/// The structured side of one run.
#[derive(Debug)]
pub struct RunWatch {
    name: String,
    parser: StructuredParser,
    /// The cap the worker enforces (the agent has no flag for it).
    worker_cap: Option<f64>,
    over_budget: bool,
    /// The run is over (see [`Fed::finished`]).
    ended: bool,
    result: Option<RunResult>,
}

impl RunWatch {
    /// The watch of a run of `profile` with the spend cap `budget_usd`; None when the
    /// profile has no structured output.
    pub fn new(profile: &AgentProfile, budget_usd: Option<f64>) -> Option<RunWatch> {
        if profile.format() == OutputFormat::None {
            return None;
        }
        Some(RunWatch {
            name: profile.name().to_string(),
            parser: StructuredParser::new(profile.format()),
            worker_cap: budget_usd.filter(|_| !profile.caps_budget()),
            over_budget: false,
            ended: false,
            result: None,
        })
    }

    /// Feeds output bytes (an empty slice: the output has ended).
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        let was_ended = self.ended;
        let mut events = if bytes.is_empty() {
            self.parser.finish()
        } else {
            self.parser.feed(bytes)
        };
        let mut made = None;
        for e in &events {
            match e {
                AgentEvent::Result(r) if self.result.is_none() => {
                    self.result = Some(r.clone());
                }
                AgentEvent::Error {
                    error: ErrorCode::AgentAuth,
                    message,
                } if self.result.is_none() => {
                    let t = self.parser.totals();
                    made = Some(RunResult {
                        session_id: self.parser.session_id().map(String::from),
                        num_turns: t.turns,
                        usage: t.usage,
                        cost_usd: t.cost_usd,
                        session_cost_usd: None,
                        is_error: true,
                        error: Some(ErrorCode::AgentAuth),
                        text: message.clone(),
                    });
                }
                _ => {}
            }
        }
        if let Some(r) = made {
            self.ended = true;
            self.result = Some(r.clone());
            events.push(AgentEvent::Result(r));
        }
        self.ended |= self.parser.is_finished();
        let mut over_budget = false;
        if let Some(cap) = self.worker_cap {
            if !self.over_budget && self.result.is_none() && self.parser.totals().exceeds(cap) {
                self.over_budget = true;
                over_budget = true;
                let session = self.parser.session_id().map(String::from);
                let r = self.parser.totals().budget_exceeded(session, cap);
                self.result = Some(r.clone());
                events.push(AgentEvent::Result(r));
            }
        }
        Fed {
            events,
            over_budget,
            finished: !was_ended && self.ended,
        }
    }

    /// The agent's session id, once its output named it.
    pub fn session_id(&self) -> Option<&str> {
        self.parser.session_id()
    }

    /// The end of the run: the agent's result, or the worker's when it stopped the agent
    /// over the cap. None while the run is going, or when it ended without a result.
    pub fn result(&self) -> Option<&RunResult> {
        self.result.as_ref()
    }

    /// What the task reports: the result's figures, else the totals so far.
    pub fn report(&self) -> AgentReport {
        let totals = self.parser.totals();
        match &self.result {
            Some(r) => AgentReport {
                name: self.name.clone(),
                session_id: r
                    .session_id
                    .clone()
                    .or_else(|| self.parser.session_id().map(String::from)),
                num_turns: r.num_turns,
                usage: r.usage,
                cost_usd: r.cost_usd,
            },
            None => AgentReport {
                name: self.name.clone(),
                session_id: self.parser.session_id().map(String::from),
                num_turns: totals.turns,
                usage: totals.usage,
                cost_usd: totals.cost_usd,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::structured::ErrorCode;

    fn step(cost: f64, reason: &str) -> String {
        format!(
            "{{\"type\":\"step_finish\",\"timestamp\":1,\"sessionID\":\"ses_1\",\"part\":{{\"reason\":\"{reason}\",\"cost\":{cost},\"tokens\":{{\"input\":10,\"output\":5,\"reasoning\":0,\"cache\":{{\"read\":0,\"write\":0}}}}}}}}\r\n"
        )
    }

    #[test]
    fn events_leave_the_log_its_id_and_event_keys() {
        let p = AgentProfile::parse("claude", None).unwrap();
        let mut w = RunWatch::new(&p, None).unwrap();
        let line = r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"ls"}}]}}"#;
        let f = w.feed(format!("{line}\r\n").as_bytes());
        assert_eq!(f.events.len(), 1, "{:?}", f.events);
        let v = f.events[0].to_json();
        assert_eq!(v["call_id"], "toolu_1");
        assert!(v.get("id").is_none() && v.get("event").is_none(), "{v}");
    }

    #[test]
    fn a_refused_key_ends_the_run() {
        let p = AgentProfile::parse("claude", None).unwrap();
        let mut w = RunWatch::new(&p, None).unwrap();
        let line = r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"error_status":401,"error":"authentication_failed","session_id":"s1"}"#;
        let f = w.feed(format!("{line}\r\n").as_bytes());
        assert!(f.finished, "{:?}", f.events);
        // The worker's own `result` follows the error.
        assert!(matches!(f.events.last(), Some(AgentEvent::Result(_))));
        let r = w.result().unwrap();
        assert_eq!(r.error, Some(ErrorCode::AgentAuth));
        assert!(r.is_error);
    }

    #[test]
    fn shell_has_no_watch() {
        let p = AgentProfile::parse("shell", None).unwrap();
        assert!(RunWatch::new(&p, Some(1.0)).is_none());
    }

    #[test]
    fn the_worker_enforces_the_cap_where_the_agent_has_no_flag() {
        let p = AgentProfile::parse("opencode", None).unwrap();
        let mut w = RunWatch::new(&p, Some(0.015)).unwrap();
        let f = w.feed(step(0.01, "tool-calls").as_bytes());
        assert!(!f.over_budget && !f.finished && w.result().is_none());
        let f = w.feed(step(0.01, "tool-calls").as_bytes());
        assert!(f.over_budget);
        assert!(matches!(f.events.last(), Some(AgentEvent::Result(_))));
        let r = w.result().unwrap();
        assert_eq!(r.error, Some(ErrorCode::BudgetExceeded));
        let rep = w.report();
        assert_eq!(rep.name, "opencode");
        assert_eq!(rep.session_id.as_deref(), Some("ses_1"));
        assert!((rep.cost_usd - 0.02).abs() < 1e-12);
        assert_eq!(rep.usage.input_tokens, 20);
        // Reported once only.
        assert!(!w.feed(step(0.01, "tool-calls").as_bytes()).over_budget);
    }

    #[test]
    fn the_end_of_the_run_is_seen_once() {
        let p = AgentProfile::parse("opencode", None).unwrap();
        let mut w = RunWatch::new(&p, None).unwrap();
        let f = w.feed(step(0.01, "stop").as_bytes());
        assert!(f.finished);
        assert!(f.events.iter().any(|e| matches!(e, AgentEvent::Result(_))));
        assert!(!w.result().unwrap().is_error);
        assert!(!w.feed(b"").finished);
        // Claude caps its own spend: no worker cap.
        let c = AgentProfile::parse("claude", None).unwrap();
        let mut w = RunWatch::new(&c, Some(0.0)).unwrap();
        assert!(!w.feed(step(1.0, "tool-calls").as_bytes()).over_budget);
    }
}
