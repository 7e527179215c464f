//! Conformance checks of the quotas and of the artifact index: every write a quota bounds is
//! admitted exactly up to its limit and refused one past it, with nothing written; writers
//! racing on one scope never take it past its quota; the index answers the latest version per
//! name and pages in byte order. [`run_all`](super::run_all) runs them.

use std::sync::Arc;

use super::{AT, agent, unique_agent, unique_task};
use crate::state::{
    Admission, AgentId, ArtifactRef, Bound, NewMessage, OverQuota, Quota, Section, StateStore,
    TaskId,
};

fn quota(max_entries: u64, max_bytes: u64) -> Quota {
    Quota {
        max_entries,
        max_bytes,
    }
}

fn over(bound: Bound, limit: u64, used: u64, requested: u64) -> Admission {
    Admission::Refused(OverQuota {
        bound,
        limit,
        used,
        requested,
    })
}

/// Version `version` of artifact `name`, of `size` bytes.
fn version(name: &str, version: u64, size: u64) -> ArtifactRef {
    ArtifactRef {
        name: name.into(),
        digest: format!("sha256:{version:064x}"),
        size,
        author: "conformance".into(),
        created_at: AT.into(),
    }
}

fn message<'a>(sender: &'a AgentId, kind: &'a str, body: &'a str) -> NewMessage<'a> {
    NewMessage {
        sender,
        recipient: None,
        kind,
        body,
        sent_at_ms: 1,
    }
}

fn names(page: &[ArtifactRef]) -> Vec<&str> {
    page.iter().map(|a| a.name.as_str()).collect()
}

/// An agent's state: keys and bytes (key + value, in bytes) up to the quota exactly; a
/// replacement counts the difference; a delete gives its bytes back; a refused write stores
/// nothing; a write that grows nothing passes a quota already exceeded; agents are separate.
pub async fn state_quota_is_exact(store: &dyn StateStore) {
    let (a, b) = (unique_agent("kv-quota"), unique_agent("kv-quota-b"));
    let q = quota(3, 20);
    let set = |key: &'static str, value: &'static str, q: Quota| {
        let a = a.clone();
        async move { store.kv_set(&a, key, value, q, None).await.unwrap() }
    };
    // k1 = 2 + 4, k2 = 2 + 4, k3 = 2 + 2: 3 keys, 16 bytes.
    assert_eq!(
        set("k1", "aaaa", q).await,
        Admission::Stored(()),
        "kv quota: first key"
    );
    assert_eq!(
        set("k2", "bbbb", q).await,
        Admission::Stored(()),
        "kv quota: second key"
    );
    assert_eq!(
        set("k3", "cc", q).await,
        Admission::Stored(()),
        "kv quota: third key"
    );
    assert_eq!(
        set("k4", "d", q).await,
        over(Bound::Entries, 3, 3, 4),
        "kv quota: a fourth key is one past max_entries"
    );
    assert_eq!(
        store.kv_get(&a, "k4").await.unwrap(),
        None,
        "kv quota: a refused write stored its key"
    );
    // k3 = 2 + 6: 20 bytes, the limit exactly; one more byte is refused.
    assert_eq!(
        set("k3", "cccccc", q).await,
        Admission::Stored(()),
        "kv quota: up to max_bytes"
    );
    assert_eq!(
        set("k3", "ccccccc", q).await,
        over(Bound::Bytes, 20, 20, 21),
        "kv quota: one byte past max_bytes"
    );
    assert_eq!(
        store.kv_get(&a, "k3").await.unwrap().as_deref(),
        Some("cccccc"),
        "kv quota: a refused replacement changed the value"
    );
    // A delete gives back key and value: 20 - 6 = 14, 2 keys; k4 of 2 + 4 fits exactly.
    assert!(store.kv_delete(&a, "k2", None).await.unwrap());
    assert_eq!(
        set("k4", "ddddd", q).await,
        over(Bound::Bytes, 20, 14, 21),
        "kv quota: a delete gave back the wrong number of bytes"
    );
    assert_eq!(
        set("k4", "dddd", q).await,
        Admission::Stored(()),
        "kv quota: room after a delete"
    );
    // Values count bytes, not characters: `é` is two.
    assert_eq!(
        set("k1", "éé", q).await,
        Admission::Stored(()),
        "kv quota: k1 = 2 + 4 bytes, as before"
    );
    assert_eq!(
        set("k1", "ééa", q).await,
        over(Bound::Bytes, 20, 20, 21),
        "kv quota: bytes, not characters"
    );
    // Under a quota lowered below what is held, a write that grows nothing passes.
    let tight = quota(1, 5);
    assert_eq!(
        set("k1", "", tight).await,
        Admission::Stored(()),
        "kv quota: a shrinking write"
    );
    assert_eq!(
        set("k5", "", tight).await,
        over(Bound::Entries, 1, 3, 4),
        "kv quota: a new key past a lowered quota"
    );
    assert_eq!(
        store
            .kv_set(&b, "k1", "x", quota(1, 3), None)
            .await
            .unwrap(),
        Admission::Stored(()),
        "kv quota: another agent's state counts on its own"
    );
    assert_eq!(
        store.kv_keys(&a).await.unwrap(),
        ["k1", "k3", "k4"],
        "kv quota: the keys stored"
    );
}

/// 16 writers × 20 keys each on one agent's state under one quota: exactly the quota's keys
/// are stored, whoever wins; then the same for bytes.
pub async fn concurrent_state_writers_never_exceed_the_quota(store: Arc<dyn StateStore>) {
    for (q, expected, what) in [
        (quota(50, u64::MAX), 50, "max_entries"),
        // Each key is `w00-k00` (7 bytes) + `xxx` (3): 10 bytes.
        (quota(u64::MAX, 430), 43, "max_bytes"),
    ] {
        let agent = unique_agent("kv-race");
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (store, agent) = (Arc::clone(&store), agent.clone());
                tokio::spawn(async move {
                    let mut stored = 0u64;
                    for k in 0..20 {
                        let key = format!("w{w:02}-k{k:02}");
                        if store.kv_set(&agent, &key, "xxx", q, None).await.unwrap()
                            == Admission::Stored(())
                        {
                            stored += 1;
                        }
                    }
                    stored
                })
            })
            .collect();
        let mut stored = 0;
        for writer in writers {
            stored += writer.await.expect("kv race: a writer panicked");
        }
        assert_eq!(stored, expected, "kv race ({what}): writes admitted");
        assert_eq!(
            store.kv_keys(&agent).await.unwrap().len() as u64,
            expected,
            "kv race ({what}): keys stored"
        );
    }
}

/// The index: `artifact` is the latest version of a name, `artifact_page` pages the latest
/// versions in byte order of their names, `artifacts` keeps every version; the task quota
/// counts distinct names and the bytes of every version, exactly.
pub async fn artifact_index_and_quota(store: &dyn StateStore) {
    let (task, other) = (unique_task("index"), unique_task("index-other"));
    let q = quota(2, 30);
    let push = |artifact: ArtifactRef| {
        let task = task.clone();
        async move {
            store
                .push_artifact(&task, &artifact, q, None)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        store.artifact(&task, "a").await.unwrap(),
        None,
        "index: unknown task has an artifact"
    );
    assert_eq!(
        push(version("b", 1, 10)).await,
        Admission::Stored(()),
        "index: b"
    );
    assert_eq!(
        push(version("a", 2, 10)).await,
        Admission::Stored(()),
        "index: a"
    );
    assert_eq!(
        push(version("a", 3, 5)).await,
        Admission::Stored(()),
        "index: a again"
    );
    assert_eq!(
        push(version("c", 4, 1)).await,
        over(Bound::Entries, 2, 2, 3),
        "index: a third name is one past max_entries"
    );
    assert_eq!(
        push(version("a", 5, 6)).await,
        over(Bound::Bytes, 30, 25, 31),
        "index: versions count their bytes, one past max_bytes"
    );
    assert_eq!(
        push(version("a", 6, 5)).await,
        Admission::Stored(()),
        "index: a version up to max_bytes exactly"
    );
    assert_eq!(
        store.artifact(&task, "a").await.unwrap(),
        Some(version("a", 6, 5)),
        "index: the latest version of `a`"
    );
    assert_eq!(
        store.artifact(&task, "c").await.unwrap(),
        None,
        "index: a refused name was indexed"
    );
    assert_eq!(
        store.artifacts(&task).await.unwrap(),
        [
            version("b", 1, 10),
            version("a", 2, 10),
            version("a", 3, 5),
            version("a", 6, 5)
        ],
        "index: the history keeps every stored version, oldest first, and no refused one"
    );
    assert_eq!(
        store.artifact_page(&task, None, 10).await.unwrap(),
        [version("a", 6, 5), version("b", 1, 10)],
        "index: a page is the latest version per name, by name"
    );
    assert_eq!(
        store.artifact_page(&other, None, 10).await.unwrap(),
        [],
        "index: another task's page"
    );

    // Byte order of names, and cursors that are not names.
    let sorted = ["B", "a", "a-b", "a.b", "a/b", "a_b", "b"];
    let many = quota(100, 1000);
    for name in ["b", "a_b", "a/b", "a.b", "a-b", "a", "B"] {
        let stored = store
            .push_artifact(&other, &version(name, 1, 1), many, None)
            .await;
        assert_eq!(stored.unwrap(), Admission::Stored(()), "index: {name}");
    }
    let page = |after: Option<&'static str>, limit: usize| {
        let other = other.clone();
        async move { store.artifact_page(&other, after, limit).await.unwrap() }
    };
    assert_eq!(
        names(&page(None, 100).await),
        sorted,
        "index: byte order of names"
    );
    assert_eq!(
        names(&page(None, 2).await),
        ["B", "a"],
        "index: the first page"
    );
    assert_eq!(
        names(&page(Some("a"), 3).await),
        ["a-b", "a.b", "a/b"],
        "index: the page after a name"
    );
    assert_eq!(
        names(&page(Some("a0"), 10).await),
        ["a_b", "b"],
        "index: the page after a cursor that is no name"
    );
    assert_eq!(
        names(&page(Some("b"), 10).await),
        Vec::<&str>::new(),
        "index: past the end"
    );
    assert_eq!(
        names(&page(None, 0).await),
        Vec::<&str>::new(),
        "index: a page of 0"
    );
}

/// Walking 300 artifacts a page at a time visits each name once, in order.
pub async fn artifact_pages_walk_the_task(store: &dyn StateStore) {
    let task = unique_task("pages");
    let mut expected: Vec<String> = (0..300)
        .map(|i| format!("out/{:03}.txt", i * 7 % 300))
        .collect();
    for (i, name) in expected.iter().enumerate() {
        let stored = store
            .push_artifact(&task, &version(name, i as u64, 1), Quota::UNLIMITED, None)
            .await;
        assert_eq!(stored.unwrap(), Admission::Stored(()), "pages: {name}");
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .artifact_page(&task, after.as_deref(), 64)
            .await
            .unwrap();
        seen.extend(page.iter().map(|a| a.name.clone()));
        match page.last() {
            Some(last) if page.len() == 64 => after = Some(last.name.clone()),
            _ => break,
        }
    }
    assert_eq!(
        seen, expected,
        "pages: a walk visits every name once, in order"
    );
}

/// 8 writers × 25 names on one task: exactly `max_entries` names are admitted; and 8 writers
/// × 25 versions of one name: exactly `max_bytes / size` versions.
pub async fn concurrent_artifact_writers_never_exceed_the_quota(store: Arc<dyn StateStore>) {
    let task = unique_task("artifact-race");
    let names = quota(60, u64::MAX);
    let versions = quota(u64::MAX, 700);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, task) = (Arc::clone(&store), task.clone());
            tokio::spawn(async move {
                let (mut named, mut versioned) = (0u64, 0u64);
                for n in 0..25u64 {
                    let fresh = version(&format!("w{w}/n{n:02}"), n, 1);
                    if store
                        .push_artifact(&task, &fresh, names, None)
                        .await
                        .unwrap()
                        == Admission::Stored(())
                    {
                        named += 1;
                    }
                }
                let other = TaskId::new(&format!("{task}-versions")).unwrap();
                for n in 0..25u64 {
                    let again = version("shared", n, 7);
                    if store
                        .push_artifact(&other, &again, versions, None)
                        .await
                        .unwrap()
                        == Admission::Stored(())
                    {
                        versioned += 1;
                    }
                }
                (named, versioned)
            })
        })
        .collect();
    let (mut named, mut versioned) = (0, 0);
    for writer in writers {
        let (n, v) = writer.await.expect("artifact race: a writer panicked");
        named += n;
        versioned += v;
    }
    assert_eq!(named, 60, "artifact race: names admitted");
    assert_eq!(
        store.artifact_page(&task, None, 1000).await.unwrap().len(),
        60,
        "artifact race: names indexed"
    );
    assert_eq!(versioned, 100, "artifact race: versions admitted");
    let other = TaskId::new(&format!("{task}-versions")).unwrap();
    assert_eq!(
        store.artifacts(&other).await.unwrap().len(),
        100,
        "artifact race: versions in the history"
    );
}

/// A task's blackboard: entries of every section count together, a replacement counts its
/// difference, a refused write stores nothing, tasks are separate; racing writers never pass
/// the quota.
pub async fn board_quota_is_per_task_and_atomic(store: Arc<dyn StateStore>) {
    let (task, other) = (unique_task("board-quota"), unique_task("board-quota-b"));
    let q = quota(3, 30);
    let write = |section: Section, key: &'static str, value: &'static str| {
        let (store, task) = (Arc::clone(&store), task.clone());
        async move {
            store
                .board_write(&task, section, key, value, q, None)
                .await
                .unwrap()
        }
    };
    // 2 + 8, 2 + 8 = 20 bytes in two sections.
    assert_eq!(
        write(Section::Problem, "k1", "aaaaaaaa").await,
        Admission::Stored(())
    );
    assert_eq!(
        write(Section::Progress, "k1", "bbbbbbbb").await,
        Admission::Stored(())
    );
    assert_eq!(
        write(Section::Solutions, "k3", "cccccccc").await,
        Admission::Stored(()),
        "board quota: 30 bytes, the limit exactly"
    );
    assert_eq!(
        write(Section::Consensus, "k4", "").await,
        over(Bound::Entries, 3, 3, 4),
        "board quota: sections share the task's entries"
    );
    assert_eq!(
        write(Section::Problem, "k1", "aaaaaaaaa").await,
        over(Bound::Bytes, 30, 30, 31),
        "board quota: a replacement counts its difference"
    );
    assert_eq!(
        write(Section::Problem, "k1", "a").await,
        Admission::Stored(())
    );
    assert_eq!(
        store
            .board_read(&task, Section::Consensus, "k4")
            .await
            .unwrap(),
        None,
        "board quota: a refused write stored its entry"
    );
    assert_eq!(
        store
            .board_write(&other, Section::Problem, "k1", "x", quota(1, 3), None)
            .await
            .unwrap(),
        Admission::Stored(()),
        "board quota: another task counts on its own"
    );

    let race = unique_task("board-race");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, race) = (Arc::clone(&store), race.clone());
            tokio::spawn(async move {
                let mut stored = 0u64;
                for k in 0..20 {
                    let section = Section::ALL[k % 4];
                    let key = format!("w{w}-k{k:02}");
                    let admitted = store
                        .board_write(&race, section, &key, "v", quota(50, u64::MAX), None)
                        .await
                        .unwrap();
                    if admitted == Admission::Stored(()) {
                        stored += 1;
                    }
                }
                stored
            })
        })
        .collect();
    let mut stored = 0;
    for writer in writers {
        stored += writer.await.expect("board race: a writer panicked");
    }
    assert_eq!(stored, 50, "board race: writes admitted");
    let mut held = 0;
    for section in Section::ALL {
        held += store.board_entries(&race, section).await.unwrap().len();
    }
    assert_eq!(held, 50, "board race: entries stored");
}

/// A task's messages are a log: every message sent counts (kind + body), reading gives
/// nothing back, a refused send appends nothing and takes no id; racing senders never pass
/// the quota and the ids stay contiguous.
pub async fn message_quota_counts_what_was_sent(store: Arc<dyn StateStore>) {
    let task = unique_task("msg-quota");
    let (alpha, beta) = (agent("alpha"), agent("beta"));
    let q = quota(3, 30);
    // FEEDBACK (8) + 2 = 10 bytes each.
    for n in 1..=2u64 {
        let sent = store
            .send_message(&task, &message(&alpha, "FEEDBACK", "hi"), q, None)
            .await;
        assert_eq!(
            sent.unwrap(),
            Admission::Stored(n),
            "message quota: message {n}"
        );
    }
    assert_eq!(
        store
            .send_message(&task, &message(&alpha, "FEEDBACK", "hi!"), q, None)
            .await
            .unwrap(),
        Admission::Refused(OverQuota {
            bound: Bound::Bytes,
            limit: 30,
            used: 20,
            requested: 31
        }),
        "message quota: kind and body count"
    );
    assert_eq!(
        store
            .receive_messages(&task, &beta, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .send_message(&task, &message(&alpha, "FEEDBACK", "hi"), q, None)
            .await
            .unwrap(),
        Admission::Stored(3),
        "message quota: a refused send took an id"
    );
    assert_eq!(
        store
            .send_message(&task, &message(&alpha, "X", ""), q, None)
            .await
            .unwrap(),
        Admission::Refused(OverQuota {
            bound: Bound::Entries,
            limit: 3,
            used: 3,
            requested: 4
        }),
        "message quota: read messages still count"
    );
    assert_eq!(
        store.messages(&task).await.unwrap().len(),
        3,
        "message quota: the log"
    );

    let race = unique_task("msg-race");
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let (store, race) = (Arc::clone(&store), race.clone());
            tokio::spawn(async move {
                let sender = agent(&format!("sender-{s}"));
                let mut ids = Vec::new();
                for _ in 0..25 {
                    let sent = store
                        .send_message(
                            &race,
                            &message(&sender, "K", "b"),
                            quota(60, u64::MAX),
                            None,
                        )
                        .await
                        .unwrap();
                    if let Admission::Stored(id) = sent {
                        ids.push(id);
                    }
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for sender in senders {
        ids.extend(sender.await.expect("message race: a sender panicked"));
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=60).collect::<Vec<u64>>(),
        "message race: exactly the quota, contiguous ids"
    );
}
