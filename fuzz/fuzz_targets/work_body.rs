//! `POST /work` / `POST /run` bodies: arbitrary bytes through the JSON parser and the
//! field checks. Properties: a request that is accepted has names git accepts (its
//! branch, or the `polecat/<issue_id>` default), URLs the git layer accepts, and it
//! survives being stored (meta.json) and checked again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::fuzzing::{git_accepts_branch, remote_url, work_body};

fuzz_target!(|data: &[u8]| {
    let (run_compat, body) = match data.split_first() {
        Some((b'R', rest)) => (true, rest),
        _ => (false, data),
    };
    let Ok(req) = work_body(body, run_compat) else {
        return;
    };
    if let Some(branch) = &req.branch {
        assert!(
            git_accepts_branch(branch),
            "accepted branch {branch:?} git refuses"
        );
    }
    if let Some(issue) = &req.issue_id {
        let default = format!("polecat/{issue}");
        assert!(
            git_accepts_branch(&default),
            "accepted issue_id {issue:?} makes the branch {default:?} that git refuses"
        );
    }
    if let Some(r) = &req.git_ref {
        assert!(git_accepts_branch(r), "accepted ref {r:?} git refuses");
    }
    for u in [&req.rig_url, &req.beads_url].into_iter().flatten() {
        if let Err(e) = remote_url(u, true) {
            panic!("accepted URL {u:?} the git layer refuses: {e}");
        }
    }
    // Stored as meta.json and read back on restart; checked again, it is the same.
    let stored = serde_json::to_vec(&req).unwrap();
    let back: outpost::task::model::WorkRequest = serde_json::from_slice(&stored).unwrap();
    let again = work_body(&serde_json::to_vec(&back).unwrap(), false)
        .unwrap_or_else(|e| panic!("a stored request is refused when sent again: {e}"));
    assert_eq!(
        serde_json::to_value(&again).unwrap(),
        serde_json::to_value(&req).unwrap()
    );
});
