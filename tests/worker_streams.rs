//! The event log through the real binary: resume mid-task with Last-Event-ID and
//! ?after=, lossless bytes (UTF-8 split at every offset, invalid bytes, a 2 MiB blob
//! through a raw terminal), heartbeats, a stalled client that must not stall the
//! agent, and replay after kill -9 and a restart on the same data dir.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn resume_with_last_event_id_and_after_has_no_gap_and_no_duplicate() {
    let w = Worker::start(&[]);
    let c = h1();
    let id = submit(
        &c,
        &w,
        json!({"prompt": "for i in $(seq 1 40); do echo line$i; sleep 0.02; done"}),
    )
    .await;
    // Read a few events, then drop the connection mid-task.
    let r = open_events(&c, &w, &id).await;
    let mut sse = Sse::new(r);
    let mut first = Vec::new();
    for _ in 0..6 {
        first.push(sse.next(T).await.unwrap());
    }
    drop(sse);
    let last = first.last().unwrap().id;
    // Reconnect as EventSource does.
    let r = events_after(&c, &w, &id, last).await;
    let rest = Sse::new(r).collect(T).await;
    assert_eq!(rest[0].id, last + 1);
    let mut all = first.clone();
    all.extend(rest);
    assert_complete(&all, 1);
    let text = String::from_utf8(output_of(&all)).unwrap();
    let expected: String = (1..=40).map(|i| format!("line{i}\r\n")).collect();
    assert_eq!(text, expected);
    // ?after=N replays exactly the events after N, over h2c too.
    for n in [0, 1, 5, all.len() as u64 - 1] {
        let r = h2c()
            .get(w.url(&format!("/work/{id}/events?after={n}")))
            .send()
            .await
            .unwrap();
        let evs = Sse::new(r).collect(T).await;
        assert_eq!(evs.len() as u64, all.len() as u64 - n);
        assert_eq!(evs[0].id, n + 1);
    }
    // After the end: nothing but the stream's end.
    let r = c
        .get(w.url(&format!("/work/{id}/events?after={}", all.len())))
        .send()
        .await
        .unwrap();
    assert!(Sse::new(r).collect(T).await.is_empty());
}

#[tokio::test]
async fn multibyte_characters_split_at_every_offset_arrive_intact() {
    let w = Worker::start(&[("OUTPOST_MAX_TASKS", "8")]);
    let c = h1();
    let text = "é✓𝄞ü€";
    let bytes = text.as_bytes();
    // For every split point, the agent writes the two halves in separate writes with a
    // pause between, so the PTY delivers them in separate reads.
    for cut in 1..bytes.len() {
        let oct = |b: &[u8]| b.iter().map(|x| format!("\\{:03o}", x)).collect::<String>();
        let prompt = format!(
            "stty raw -echo; printf '{}'; sleep 0.05; printf '{}'",
            oct(&bytes[..cut]),
            oct(&bytes[cut..])
        );
        let r = post_work(&c, &w, json!({ "prompt": prompt })).await;
        let evs = Sse::new(r).collect(T).await;
        assert_eq!(output_of(&evs), bytes, "cut at {cut}");
        // All of it came as text (no b64), since nothing was invalid.
        let outs: Vec<&Value> = evs
            .iter()
            .filter(|e| e.event == "output")
            .map(|e| &e.data)
            .collect();
        assert!(
            outs.iter().all(|d| d.get("data").is_some()),
            "cut {cut}: {outs:?}"
        );
        let joined: String = outs.iter().map(|d| d["data"].as_str().unwrap()).collect();
        assert_eq!(joined, text);
    }
}

#[tokio::test]
async fn invalid_bytes_come_as_b64_and_the_log_is_exact() {
    let w = Worker::start(&[]);
    let c = h1();
    let r = post_work(&c, &w, json!({ "prompt": "stty raw -echo; printf 'ok \\377\\376 then'; printf '\\303'; sleep 0.05; printf '\\251 end'" })).await;
    let evs = Sse::new(r).collect(T).await;
    let expected = b"ok \xff\xfe then\xc3\xa9 end".to_vec();
    assert_eq!(output_of(&evs), expected);
    assert!(evs.iter().any(|e| e.data.get("b64").is_some()));
    let id = c
        .get(w.url("/work?limit=1"))
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = c
        .get(w.url(&format!("/work/{id}/log")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(raw.to_vec(), expected);
}

/// `/log` promises its length up front; a record written but still being synced when
/// the request came is waited for, never left out (the body once ended short: the
/// client saw a cut connection, `IncompleteRead` in Python's http.client).
#[tokio::test]
async fn the_log_read_while_the_agent_writes_is_whole_and_a_prefix_of_the_end() {
    let w = Worker::start(&[]);
    let c = h1();
    let id = submit(
        &c,
        &w,
        json!({"prompt": "for i in $(seq 1 400); do echo line$i; done; sleep 0.3; for i in $(seq 401 800); do echo line$i; sleep 0.001; done"}),
    )
    .await;
    let url = w.url(&format!("/work/{id}/log"));
    let mut reads = 0;
    let mut last = String::new();
    // Bounded by time, not by a count of reads: a fast machine reads 2,000 times
    // before the agent's 800 lines are out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let promised = r.content_length().unwrap();
        let body = r.bytes().await.unwrap_or_else(|e| {
            panic!("read {reads}: a /log body promised {promised} bytes and was cut: {e}")
        });
        assert_eq!(body.len() as u64, promised);
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.starts_with(&last),
            "read {reads} is not a continuation of the one before"
        );
        reads += 1;
        last = text;
        if last.contains("line800\r\n") {
            break;
        }
    }
    let expected: String = (1..=800).map(|i| format!("line{i}\r\n")).collect();
    assert_eq!(last, expected, "after {reads} reads");
    assert!(
        reads > 20,
        "the task ended before the log was read often: {reads} reads"
    );
}

#[tokio::test]
async fn two_mib_blob_through_a_raw_terminal_is_byte_exact() {
    let w = Worker::start(&[]);
    let blob: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let shared = shared_dir();
    let path = shared.path().join("blob");
    std::fs::write(&path, &blob).unwrap();
    let c = h2c();
    let prompt = format!("stty raw -echo; cat {}", path.display());
    let r = post_work(&c, &w, json!({ "prompt": prompt })).await;
    let evs = Sse::new(r).collect(T).await;
    assert_complete(&evs, 1);
    let got = output_of(&evs);
    assert_eq!(got.len(), blob.len());
    assert!(got == blob, "the blob came back different");
    let done = &evs.last().unwrap().data;
    assert_eq!(done["status"], "done");
}

#[tokio::test]
async fn a_stalled_client_does_not_stall_the_agent_or_others() {
    let w = Worker::start(&[]);
    let c = h1();
    // ~24 MiB of output: far more than socket buffers hold.
    let id = submit(
        &c,
        &w,
        json!({"prompt": "stty raw -echo; head -c 25000000 /dev/zero | tr '\\0' 'a'; echo END"}),
    )
    .await;
    // A subscriber that never reads.
    let stalled = open_events(&c, &w, &id).await;
    assert_eq!(stalled.status(), 200);
    // The task still finishes, and another client sees everything.
    let t = wait_terminal(&c, &w, &id, Duration::from_secs(120)).await;
    assert_eq!(t["status"], "done");
    assert_eq!(t["output_bytes"], 25_000_004);
    let evs = events_of(&h2c(), &w, &id).await;
    assert_complete(&evs, 1);
    assert_eq!(output_of(&evs).len(), 25_000_004);
    drop(stalled);
}

#[tokio::test]
async fn heartbeat_comments_while_idle() {
    let w = Worker::start(&[("OUTPOST_HEARTBEAT_S", "1")]);
    let c = h1();
    let r = post_work(&c, &w, json!({"prompt": "sleep 2.5; echo done"})).await;
    let mut sse = Sse::new(r);
    while let Some(e) = sse.next(T).await {
        if e.event == "done" {
            break;
        }
    }
    assert!(sse.comments >= 1, "no keep-alive comment during 2.5 s idle");
}

#[tokio::test]
async fn a_stream_past_stream_max_ends_cleanly_with_retry_and_resumes_without_gap() {
    let w = Worker::start(&[("OUTPOST_STREAM_MAX_S", "1")]);
    let c = h1();
    let prompt = "for i in $(seq 1 30); do echo line$i; sleep 0.1; done";
    // The POST's own stream is cut at 1 s like every other: cleanly, with a retry hint.
    let r = post_work(&c, &w, json!({ "prompt": prompt })).await;
    let id = r.headers()["x-task-id"].to_str().unwrap().to_string();
    let mut sse = Sse::new(r);
    let mut all = Vec::new();
    while let Some(e) = sse.try_next(T).await.expect("the stream must end cleanly") {
        all.push(e);
    }
    assert!(
        !all.iter().any(|e| e.event == "done"),
        "the task lasts 3 s: {all:?}"
    );
    assert_eq!(sse.retry_ms(), Some(1000), "no retry: hint at the cut");
    // Reconnect as EventSource does, until done (bounded: the task lasts about 3 s).
    let mut cuts = 1;
    for _ in 0..20 {
        if all.last().is_some_and(|e| e.event == "done") {
            break;
        }
        let last = all.last().map_or(0, |e| e.id);
        let r = events_after(&c, &w, &id, last).await;
        let mut sse = Sse::new(r);
        while let Some(e) = sse.try_next(T).await.expect("the stream must end cleanly") {
            all.push(e);
        }
        if sse.retry_ms().is_some() {
            cuts += 1;
        }
    }
    assert!(
        cuts >= 2,
        "a 3 s task under a 1 s limit was cut {cuts} time(s)"
    );
    assert_complete(&all, 1);
    let text = String::from_utf8(output_of(&all)).unwrap();
    let expected: String = (1..=30).map(|i| format!("line{i}\r\n")).collect();
    assert_eq!(text, expected);
    // NDJSON has no retry field: it just ends, and its lines are whole.
    let id2 = submit(&c, &w, json!({"prompt": "sleep 3"})).await;
    let started = std::time::Instant::now();
    let body = text_of(
        c.get(w.url(&format!("/work/{id2}/events")))
            .header("accept", "application/x-ndjson"),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "NDJSON was not cut"
    );
    for line in body.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_ne!(v["event"], "done", "{body}");
    }
}

#[tokio::test]
async fn a_worker_starting_on_a_shared_data_dir_leaves_the_other_workers_live_task_alone() {
    // Two instances on one volume (an old one draining while a new one starts): the
    // newcomer reads back the tasks it finds, and must not take the other's live task for
    // a crash's leftover (ending it `interrupted`, or killing its processes).
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let a = Worker::start_on(&data, free_port(), &[]);
    let c = h1();
    let id = submit(&c, &a, json!({"prompt": "sleep 3; echo finished"})).await;
    // Its own agent uids: the uid fallback kills what a slot's uid runs.
    let b = Worker::start_on(&data, free_port(), &[("OUTPOST_AGENT_USER", "63980")]);
    let seen = c.get(b.url(&format!("/work/{id}"))).send().await.unwrap();
    assert_eq!(
        seen.status(),
        404,
        "the newcomer took the other's live task as its own"
    );
    let t = wait_terminal(&c, &a, &id, T).await;
    assert_eq!(t["status"], "done", "{t}\nlog of b:\n{}", b.log_text());
    let evs = events_of(&c, &a, &id).await;
    assert_complete(&evs, 1);
    assert!(String::from_utf8(output_of(&evs))
        .unwrap()
        .contains("finished"));
    assert!(
        b.log_text()
            .contains("leaving alone a task another worker runs"),
        "{}",
        b.log_text()
    );
    // Once it has ended, a worker starting on the dir reads it back as it ended.
    let b2 = Worker::start_on(&data, free_port(), &[("OUTPOST_AGENT_USER", "63980")]);
    let back: Value = get_json(&c, b2.url(&format!("/work/{id}"))).await;
    assert_eq!(back["status"], "done", "{back}");
}

#[tokio::test]
async fn kill_9_then_restart_replays_and_marks_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let mut w = Worker::start_on(&data, port, &[]);
    let c = h1();
    let done_id = submit(&c, &w, json!({"prompt": "echo finished"})).await;
    wait_terminal(&c, &w, &done_id, T).await;
    let id = submit(&c, &w, json!({"prompt": "echo before; sleep 60"})).await;
    let r = open_events(&c, &w, &id).await;
    let mut sse = Sse::new(r);
    let mut seen = Vec::new();
    loop {
        let e = sse.next(T).await.unwrap();
        let is_out = e.event == "output";
        seen.push(e);
        if is_out {
            break;
        }
    }
    drop(sse);
    w.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .expect("killed");
    drop(w);

    let w = Worker::start_on(&data, port, &[]);
    let c = h1();
    let t: Value = get_json(&c, w.url(&format!("/work/{id}"))).await;
    assert_eq!(t["status"], "interrupted");
    assert!(t["error"].as_str().unwrap().contains("stopped"));
    let evs = events_of(&c, &w, &id).await;
    assert_complete(&evs, 1);
    for (a, b) in seen.iter().zip(&evs) {
        assert_eq!(
            (a.id, &a.event, &a.data),
            (b.id, &b.event, &b.data),
            "replay differs"
        );
    }
    assert_eq!(output_of(&evs), b"before\r\n");
    assert_eq!(evs.last().unwrap().data["status"], "interrupted");
    let hello: Value = get_json(&c, w.url("/hello")).await;
    assert_eq!(hello["totalTasksExecuted"], 2);
    assert_eq!(hello["activeTasks"], 0);
    let d: Value = get_json(&c, w.url(&format!("/work/{done_id}"))).await;
    assert_eq!(d["status"], "done");
    // Resuming from the middle after the restart works the same.
    let r = c
        .get(w.url(&format!("/work/{id}/events")))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .unwrap();
    let tail = Sse::new(r).collect(T).await;
    assert_eq!(tail[0].id, 3);
}

#[tokio::test]
async fn old_finished_tasks_are_pruned_and_counts_stay_true() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let env = [("OUTPOST_KEEP_TASKS", "2")];
    let w = Worker::start_on(&data, port, &env);
    let c = h1();
    let mut ids = Vec::new();
    for i in 0..4 {
        let id = submit(&c, &w, json!({ "prompt": format!("echo {i}") })).await;
        wait_terminal(&c, &w, &id, T).await;
        ids.push(id);
    }
    // Deletion happens just after the task ends; allow it a moment (bounded).
    for _ in 0..100 {
        if !data.join("tasks").join(&ids[1]).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list: Vec<Value> = get_json(&c, w.url("/work")).await;
    let listed: Vec<&str> = list.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[3].as_str(), ids[2].as_str()]);
    assert!(!data.join("tasks").join(&ids[0]).exists());
    assert!(!data.join("tasks").join(&ids[1]).exists());
    // Task directories are spread over the disk (see placement.rs).
    assert_spreads_children(&data.join("tasks"));
    let r = c
        .get(w.url(&format!("/work/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let hello: Value = get_json(&c, w.url("/hello")).await;
    assert_eq!(hello["totalTasksExecuted"], 4);
    drop(w);
    let w = Worker::start_on(&data, port, &env);
    // A new client: the old one's pooled connection went with the old worker.
    let c = h1();
    let hello: Value = get_json(&c, w.url("/hello")).await;
    assert_eq!(hello["totalTasksExecuted"], 4);
    let list: Vec<Value> = get_json(&c, w.url("/work")).await;
    assert_eq!(list.len(), 2);
}
