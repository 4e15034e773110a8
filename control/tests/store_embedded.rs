//! What only the embedded backend promises: durability across kill -9, restart, snapshots,
//! group commit, bounded watch buffers and the physical compaction sweep.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rudder_control::store::conformance::next_events;
use rudder_control::store::embedded::{EmbeddedOptions, EmbeddedStore, snapshot_restore};
use rudder_control::store::{Event, ListOptions, Store, StoreError};

/// Set (to a database path) when this test binary runs as the durability test's writer.
const CHILD_DB_ENV: &str = "RUDDER_STORE_DURABILITY_CHILD_DB";
/// Which kill round the child writes for, so each round writes new keys.
const CHILD_ROUND_ENV: &str = "RUDDER_STORE_DURABILITY_ROUND";
const ACKS_BEFORE_KILL: usize = 300;
const KILL_ROUNDS: usize = 3;

/// Kills the child writer even when the test panics, so it never outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test on its own: the writer half of `acknowledged_writes_survive_kill_9`, which
/// runs this binary again with `CHILD_DB_ENV` set. Without it, it returns at once.
#[test]
fn durability_child_writer() {
    let Some(db) = std::env::var_os(CHILD_DB_ENV) else {
        return;
    };
    let round = std::env::var(CHILD_ROUND_ENV).expect("round");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let store = Arc::new(EmbeddedStore::open(&db).await.expect("open"));
        let mut writers = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            let round = round.clone();
            writers.push(tokio::spawn(async move {
                // Bounded so a child the parent failed to kill still stops by itself.
                for i in 0..20_000 {
                    let key = format!("dur/{round}/{w}/{i:05}");
                    let kv = store.create(&key, key.clone().into_bytes()).await.expect("create");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {key} {}", kv.mod_revision).expect("stdout");
                    out.flush().expect("flush");
                }
            }));
        }
        for writer in writers {
            writer.await.expect("writer");
        }
    });
}

/// Runs the child writer on `db` until it has acknowledged `ACKS_BEFORE_KILL` writes,
/// SIGKILLs it mid-burst and returns every (key, revision) it acknowledged.
fn write_until_killed(db: &Path, round: usize) -> Vec<(String, i64)> {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "durability_child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB_ENV, db)
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut acked = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let Some(ack) = line.strip_prefix("ACK ") else { continue };
        let (key, rev) = ack.split_once(' ').expect("ACK key revision");
        acked.push((key.to_owned(), rev.parse().expect("revision")));
        if acked.len() == ACKS_BEFORE_KILL && !killed {
            // SIGKILL mid-burst: 8 writers keep commits in flight at every moment.
            child.0.kill().expect("kill -9 the writer");
            killed = true;
        }
        // Lines already in the pipe when the kill landed were acknowledged too: keep
        // reading to EOF and check them as well.
    }
    let status = child.0.wait().expect("wait for writer");
    assert!(killed, "writer exited on its own ({status}) after {} acks", acked.len());
    acked
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("store.redb");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut acked: Vec<(String, i64)> = Vec::new();
    // Several rounds: each recovery must also leave a file the next crash can recover.
    for round in 0..KILL_ROUNDS {
        acked.extend(write_until_killed(&db, round));
        // redb's own check: every page checksum and the allocator state.
        let mut raw = redb::Database::open(&db).expect("open after kill -9");
        assert!(
            raw.check_integrity().expect("integrity check"),
            "redb found damage after kill -9"
        );
        drop(raw);
        let report = runtime.block_on(async {
            let store = EmbeddedStore::open(&db).await.expect("reopen after kill -9");
            let report = store.verify().await.expect("store is consistent after kill -9");
            let highest = acked.iter().map(|(_, rev)| *rev).max().expect("some acks");
            let current = store.current_revision().await.expect("revision");
            assert!(
                current >= highest,
                "revision {current} is below acknowledged revision {highest}"
            );
            for (key, rev) in &acked {
                let kv = store
                    .get(key)
                    .await
                    .expect("get")
                    .unwrap_or_else(|| panic!("acknowledged {key} lost"));
                assert_eq!((kv.mod_revision, kv.value.as_slice()), (*rev, key.as_bytes()));
            }
            // Every write is a create, so the history holds one event per revision.
            let mut watch = store.watch("dur/", 0).await.expect("watch");
            let events = next_events(&mut watch, (current - 1) as usize).await;
            assert!(events.windows(2).all(|w| w[0].revision() + 1 == w[1].revision()));
            store.close().await.expect("close");
            report
        });
        println!(
            "embedded: kill -9 round {}: {} acknowledged writes so far all present (revision {}, {} keys)",
            round + 1,
            acked.len(),
            report.revision,
            report.keys
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_revision_and_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    let store = EmbeddedStore::open(&path).await.expect("open");
    assert_eq!(
        store.current_revision().await.expect("revision"),
        1,
        "a fresh store is at revision 1, like etcd"
    );
    let a = store.create("r/a", b"1".to_vec()).await.expect("create");
    let a2 = store
        .update("r/a", b"2".to_vec(), a.mod_revision)
        .await
        .expect("update");
    store.create("r/b", b"1".to_vec()).await.expect("create");
    store.compact(a.mod_revision).await.expect("compact");
    let before = store.current_revision().await.expect("revision");
    store.close().await.expect("close");

    let store = EmbeddedStore::open(&path).await.expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), before);
    assert_eq!(store.compacted_revision().await.expect("compacted"), a.mod_revision);
    assert_eq!(store.get("r/a").await.expect("get"), Some(a2.clone()));
    let mut watch = store.watch("r/", a.mod_revision).await.expect("watch");
    let events = next_events(&mut watch, 2).await;
    assert_eq!(events[0], Event::Put { kv: a2, prev: Some(a) });
    let next = store.create("r/c", vec![]).await.expect("create");
    assert_eq!(next.mod_revision, before + 1, "revisions continue after a restart");
    store.verify().await.expect("consistent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_save_and_restore_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(dir.path().join("live.redb")).await.expect("open"));
    for i in 0..50 {
        let kv = store.create(&format!("s/{i:02}"), vec![i]).await.expect("create");
        if i % 3 == 0 {
            store
                .update(&kv.key, vec![i, i], kv.mod_revision)
                .await
                .expect("update");
        }
        if i % 7 == 0 {
            store.delete(&kv.key, None).await.expect("delete");
        }
    }
    let compacted = store.current_revision().await.expect("revision") - 20;
    store.compact(compacted).await.expect("compact");

    // Saved while another task keeps writing: the snapshot is one consistent revision.
    let base = store.current_revision().await.expect("revision");
    let busy = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                store.create(&format!("busy/{i}"), vec![]).await.expect("create");
            }
        })
    };
    while store.current_revision().await.expect("revision") < base + 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let snap = dir.path().join("backup.snap");
    let info = store.snapshot_save(&snap).await.expect("snapshot save");
    busy.await.expect("writer");
    assert!(
        matches!(store.snapshot_save(&snap).await, Err(StoreError::Backend(_))),
        "never overwrites"
    );

    let data = dir.path().join("restored.redb");
    let restored_info = snapshot_restore(&snap, &data).expect("restore");
    assert_eq!(restored_info, info);
    assert!(
        snapshot_restore(&snap, &data).is_err(),
        "restore refuses an existing data file"
    );
    let restored = EmbeddedStore::open(&data).await.expect("open restored");
    restored.verify().await.expect("restored store is consistent");
    assert_eq!(restored.current_revision().await.expect("revision"), info.revision);
    assert_eq!(restored.compacted_revision().await.expect("compacted"), compacted);

    let all = |revision| ListOptions {
        prefix: String::new(),
        revision: Some(revision),
        ..Default::default()
    };
    for revision in [info.revision, compacted, compacted + 7] {
        let original = store.list(all(revision)).await.expect("list original");
        let copy = restored.list(all(revision)).await.expect("list restored");
        assert_eq!(copy, original, "state at revision {revision}");
    }
    let live_keys = restored
        .list(ListOptions {
            prefix: "busy/".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        live_keys.items.len() as i64,
        info.revision - base,
        "busy writes up to the snapshot only"
    );
    assert!(info.revision > base, "the snapshot was taken while writes went on");
    let mut original_watch = store.watch("s/", compacted).await.expect("watch");
    let mut restored_watch = restored.watch("s/", compacted).await.expect("watch");
    let n = 20; // the history after `compacted` is all under s/
    assert_eq!(
        next_events(&mut restored_watch, n).await,
        next_events(&mut original_watch, n).await
    );

    let garbage = dir.path().join("garbage.snap");
    std::fs::write(&garbage, b"not a redb file").expect("write");
    let target = dir.path().join("from-garbage.redb");
    assert!(snapshot_restore(&garbage, &target).is_err());
    assert!(
        !target.exists() && !has_part_file(dir.path()),
        "a failed restore leaves nothing behind"
    );
    println!(
        "embedded: snapshot of {} keys at revision {} (taken during writes) saved and restored",
        info.keys, info.revision
    );
}

fn has_part_file(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .expect("read dir")
        .any(|e| e.expect("entry").file_name().to_string_lossy().ends_with(".part"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_commits() {
    const TASKS: usize = 8;
    const EACH: usize = 200;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(dir.path().join("store.redb")).await.expect("open"));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    store.create(&format!("gc/{t}/{i}"), vec![0; 64]).await.expect("create");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let elapsed = started.elapsed();
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.writes, (TASKS * EACH) as u64);
    assert!(
        stats.commits < stats.writes,
        "no batching: {} commits for {} writes",
        stats.commits,
        stats.writes
    );
    println!(
        "embedded: {} creates by {TASKS} writers in {elapsed:.2?}: {} fsync'd commits, {:.1} writes per commit",
        stats.writes,
        stats.commits,
        stats.writes as f64 / stats.commits as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_ends_with_watch_lagged_and_can_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = EmbeddedOptions {
        watch_buffer: 8,
        ..Default::default()
    };
    let store = EmbeddedStore::open_with(dir.path().join("store.redb"), options)
        .await
        .expect("open");
    let start = store.current_revision().await.expect("revision");
    store.create("lag/0", vec![]).await.expect("create");
    let mut watch = store.watch("lag/", start).await.expect("watch");
    // The first event comes from history; after it the watcher is subscribed live.
    assert_eq!(next_events(&mut watch, 1).await.len(), 1);
    for i in 1..=50 {
        store.create(&format!("lag/{i}"), vec![]).await.expect("create");
    }
    let mut delivered = Vec::new();
    let last = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("no hang")
        {
            Some(Ok(event)) => delivered.push(event.revision()),
            Some(Err(StoreError::WatchLagged { last_delivered })) => break last_delivered,
            other => panic!("expected WatchLagged, got {other:?}"),
        }
    };
    assert!(
        delivered.len() <= 8,
        "buffer is bounded: {} events delivered",
        delivered.len()
    );
    assert_eq!(Some(&last), delivered.last().or(Some(&(start + 1))));
    assert!(watch.next().await.is_none(), "the stream ends after WatchLagged");
    // Nothing is lost in the store: a new watch from the last delivered revision resumes.
    let mut resumed = store.watch("lag/", last).await.expect("re-watch");
    let rest = next_events(&mut resumed, (start + 51 - last) as usize).await;
    assert_eq!(rest.first().map(Event::revision), Some(last + 1));
    assert_eq!(rest.last().map(Event::revision), Some(start + 51));
    assert_eq!(
        store.stats().await.expect("stats").watchers,
        1,
        "the lagging watcher was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_sweep_removes_old_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(dir.path().join("store.redb")).await.expect("open"));
    // More rows than one sweep step takes, written concurrently to keep the test quick.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = format!("sweep/{t}");
                let mut kv = store.create(&key, vec![0]).await.expect("create");
                for i in 1..400u32 {
                    kv = store
                        .update(&key, i.to_be_bytes().to_vec(), kv.mod_revision)
                        .await
                        .expect("update");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    store.create("sweep/gone", vec![]).await.expect("create");
    store.delete("sweep/gone", None).await.expect("delete");
    let before = store.stats().await.expect("stats");
    assert_eq!(before.history_rows, 3202);

    let at = store.current_revision().await.expect("revision");
    store.compact(at).await.expect("compact");
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let stats = store.stats().await.expect("stats");
        if stats.swept == at {
            break stats;
        }
        assert!(Instant::now() < deadline, "sweep stuck at {} of {at}", stats.swept);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        after.history_rows, 8,
        "one row per live key; the deleted key's rows are gone"
    );
    store.verify().await.expect("consistent after the sweep");
    let listed = store
        .list(ListOptions {
            prefix: "sweep/".into(),
            revision: Some(at),
            ..Default::default()
        })
        .await;
    assert_eq!(listed.expect("list at the compacted revision").items.len(), 8);
    println!(
        "embedded: compaction swept {} history rows down to {}",
        before.history_rows, after.history_rows
    );
}
