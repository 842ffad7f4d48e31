//! Read models: lookups, scans and snapshots from other threads while the dataflow runs return
//! exactly the published collection as of the frontier they report, at 1, 2 and 4 workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tideline::differential_dataflow::input::Input;
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::table::read_model::{Read, ReadModel};

/// Deposits and withdrawals: `(account, amount)` at increasing times.
fn movements(seed: u64) -> Vec<((u32, i64), Time)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..1_500u64).map(|i| ((rng.gen_range(0..40), rng.gen_range(-50..100)), i / 3)).collect()
}

/// Balances as of `frontier` (every movement at a time before it), from scratch.
fn balances_before(movements: &[((u32, i64), Time)], frontier: Option<Time>) -> BTreeMap<u32, i64> {
    let mut balances = BTreeMap::new();
    for ((account, amount), time) in movements {
        if frontier.is_none_or(|f| *time < f) {
            *balances.entry(*account).or_insert(0) += amount;
        }
    }
    balances
}

enum Answer {
    Snapshot(Read<Vec<(u32, i64)>>),
    Get(u32, Read<Option<i64>>),
    Range(Read<Vec<(u32, i64)>>),
}

fn check(workers: usize, model: ReadModel<u32, i64>) {
    let movements = Arc::new(movements(71));
    let running = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (model, running) = (model.clone(), Arc::clone(&running));
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                let mut rng = SmallRng::seed_from_u64(reader);
                while running.load(Ordering::Relaxed) {
                    answers.push(match rng.gen_range(0..3) {
                        0 => Answer::Snapshot(model.snapshot()),
                        1 => {
                            let account = rng.gen_range(0..40);
                            Answer::Get(account, model.get(&account))
                        }
                        _ => Answer::Range(model.range(10..20)),
                    });
                    std::thread::sleep(Duration::from_micros(100));
                }
                answers.push(Answer::Snapshot(model.snapshot()));
                answers
            })
        })
        .collect();

    let (m, input) = (model.clone(), Arc::clone(&movements));
    execute(&Cluster::threads(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let model = m.clone();
        let mut session = worker.dataflow::<Time, _, _>(move |scope| {
            let (session, movements) = scope.new_collection::<(u32, i64), isize>();
            movements
                .reduce(|_account, amounts, out| {
                    out.push((amounts.iter().map(|(a, n)| **a * *n as i64).sum::<i64>(), 1))
                })
                .publish(&model);
            session
        });
        for (i, (movement, time)) in input.iter().enumerate() {
            if *time > *session.time() {
                session.advance_to(*time);
                session.flush();
                worker.step();
                if time % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            if i % peers == index {
                session.insert(*movement);
            }
        }
        drop(session);
        while worker.step_or_park(None) {}
    })
    .unwrap();
    assert!(model.wait_complete(Duration::from_secs(10)), "the model completes");
    running.store(false, Ordering::Relaxed);

    let mut frontiers = std::collections::BTreeSet::new();
    let mut answers = 0;
    for reader in readers {
        for answer in reader.join().unwrap() {
            answers += 1;
            match answer {
                Answer::Snapshot(read) => {
                    frontiers.insert(read.frontier);
                    let want: Vec<(u32, i64)> = balances_before(&movements, read.frontier).into_iter().collect();
                    assert_eq!(read.value, want, "snapshot at frontier {:?}, {workers} workers", read.frontier);
                }
                Answer::Get(account, read) => {
                    let want = balances_before(&movements, read.frontier).get(&account).copied();
                    assert_eq!(read.value, want, "account {account} at frontier {:?}", read.frontier);
                }
                Answer::Range(read) => {
                    let want: Vec<(u32, i64)> =
                        balances_before(&movements, read.frontier).range(10..20).map(|(k, v)| (*k, *v)).collect();
                    assert_eq!(read.value, want, "range at frontier {:?}", read.frontier);
                }
            }
        }
    }
    assert!(frontiers.contains(&None), "readers saw the complete model");
    let intermediate = frontiers.iter().filter(|f| f.is_some_and(|f| f > 0)).count();
    assert!(intermediate >= 5, "readers saw only {intermediate} intermediate frontiers in {answers} answers");
    assert_eq!(model.snapshot().value, balances_before(&movements, None).into_iter().collect::<Vec<_>>());
}

#[test]
fn concurrent_reads_are_consistent_with_their_frontier() {
    for workers in [1, 2, 4] {
        check(workers, ReadModel::new());
    }
}

#[test]
fn gathered_read_models_are_consistent_with_their_frontier() {
    check(3, ReadModel::gathered());
}

#[test]
fn string_keys_can_be_scanned_by_prefix() {
    let model: ReadModel<String, i64> = ReadModel::new();
    let m = model.clone();
    execute(&Cluster::threads(2), move |worker| {
        let model = m.clone();
        let index = worker.index();
        worker.dataflow::<Time, _, _>(move |scope| {
            let rows = if index == 0 {
                vec![
                    ("acct-1".to_string(), 5),
                    ("acct-2".to_string(), 7),
                    ("acme".to_string(), 1),
                    ("b".to_string(), 2),
                ]
            } else {
                vec![]
            };
            scope.new_collection_from(rows).1.publish(&model);
        });
    })
    .unwrap();
    let read = model.prefix("acct-");
    assert_eq!(read.value, vec![("acct-1".to_string(), 5), ("acct-2".to_string(), 7)]);
    assert_eq!(read.frontier, None);
    assert_eq!(model.prefix("ac").value.len(), 3);
    assert_eq!(model.prefix("z").value, vec![]);
    assert!(model.wait_past(1_000, Duration::ZERO));
}

/// A cluster of two processes of two workers each (two threads of this test, talking over
/// localhost as timely processes do): with `Placement::Replicate` every process's model holds
/// every key; with `Placement::Local` each process holds the keys its workers own.
#[test]
fn replicated_read_models_are_complete_in_every_process() {
    let movements = Arc::new(movements(72));
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let hostfile = std::env::temp_dir().join(format!("tideline-read-model-hosts-{}", std::process::id()));
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let processes: Vec<_> = (0..2)
        .map(|process| {
            let (movements, hostfile) = (Arc::clone(&movements), hostfile.clone());
            std::thread::spawn(move || {
                let (replicated, local) = (ReadModel::<u32, i64>::replicated(2), ReadModel::<u32, i64>::new());
                let (r, l) = (replicated.clone(), local.clone());
                let cluster = Cluster {
                    workers: 2,
                    processes: 2,
                    process,
                    hostfile: Some(hostfile.display().to_string()),
                    report: false,
                };
                execute(&cluster, move |worker| {
                    let (index, peers) = (worker.index(), worker.peers());
                    let (r, l) = (r.clone(), l.clone());
                    let mut session = worker.dataflow::<Time, _, _>(move |scope| {
                        let (session, movements) = scope.new_collection::<(u32, i64), isize>();
                        let balances = movements.reduce(|_account, amounts, out| {
                            out.push((amounts.iter().map(|(a, n)| **a * *n as i64).sum::<i64>(), 1))
                        });
                        balances.clone().publish(&r);
                        balances.publish(&l);
                        session
                    });
                    for (i, (movement, time)) in movements.iter().enumerate() {
                        session.advance_to(*time);
                        if i % peers == index {
                            session.insert(*movement);
                        }
                    }
                })
                .unwrap();
                assert!(
                    replicated.wait_complete(Duration::from_secs(10)) && local.wait_complete(Duration::from_secs(10))
                );
                (replicated.snapshot().value, local.snapshot().value)
            })
        })
        .collect();
    let views: Vec<_> = processes.into_iter().map(|p| p.join().unwrap()).collect();
    std::fs::remove_file(&hostfile).unwrap();
    let want: Vec<(u32, i64)> = balances_before(&movements, None).into_iter().collect();
    for (process, (replicated, _)) in views.iter().enumerate() {
        assert_eq!(*replicated, want, "process {process} holds the complete replicated model");
    }
    let mut union: Vec<(u32, i64)> = views.iter().flat_map(|(_, local)| local.clone()).collect();
    union.sort();
    assert_eq!(union, want, "the local models partition the keys between the processes");
    assert!(views.iter().all(|(_, local)| !local.is_empty() && local.len() < want.len()), "each holds a part");
}
