//! The durable outbox as a chat adapter will use it: every event reaches a consumer in order per
//! run, and a store reopened after a stop resumes exactly after the last confirmed delivery
//! (and still knows the inbound deliveries it took).

mod common;

use std::time::Duration;

use portbot::app::{App, AppError, Consumer, Delivery, Pending, Received, RunRequest};
use portbot::core::action::RawInputs;
use portbot::core::ids::{Identity, RunId};
use portbot::core::run::EventKind;
use portbot::metrics::Metrics;
use portbot::store::Store;

async fn open(dir: &std::path::Path) -> App {
    let settings = common::settings_for(dir);
    let definitions = portbot::definitions::load(&settings).expect("definitions load");
    let store = Store::open(
        &settings.storage.path,
        16,
        std::time::Duration::from_secs(1),
    )
    .expect("store opens");
    App::new(
        store,
        definitions,
        vec![Consumer::new("chat", |_, _| true)],
        Metrics::new(),
    )
    .await
    .expect("app builds")
}

/// `add-documentdb` on `mailer` with two instances, for `dev`.
fn two_instances(dev: &Identity) -> RunRequest<'_> {
    RunRequest {
        who: dev,
        action: "add-documentdb",
        entity: Some("mailer"),
        inputs: RawInputs::Text(vec![("instances".into(), "2".into())]),
        origin: "TEST",
        channel: None,
        received: None,
    }
}

fn up_to(seq: u64) -> Delivery<'static> {
    Delivery {
        seq,
        note: None,
        reference: None,
        keep_due: false,
        read: None,
    }
}

fn kinds(events: &[portbot::core::run::RunEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.kind {
            EventKind::Log { message } => format!("log {message}"),
            other => serde_json::to_value(other).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn consumers_resume_exactly_after_the_last_delivery() {
    let dir = common::deployment(&[]);
    let dev = Identity::try_from("dev@example.com").unwrap();
    let (first, second): (RunId, RunId);
    {
        let app = open(dir.path()).await;
        first = app.request_run(two_instances(&dev)).await.unwrap().id;
        second = app.request_run(two_instances(&dev)).await.unwrap().id;
        app.append_logs(&first, vec!["a".into(), "b".into()])
            .await
            .unwrap();
        assert_eq!(
            app.outbox_due("chat").unwrap(),
            vec![first.clone(), second.clone()]
        );

        let pending = app.outbox_pending("chat", &first).unwrap().events;
        assert_eq!(
            kinds(&pending),
            ["CREATED", "APPROVAL_REQUESTED", "log a", "log b"]
        );
        // Deliver the first two, then stop before confirming the rest.
        app.outbox_delivered("chat", &first, up_to(pending[1].seq))
            .await
            .unwrap();
    }
    // Let the store's flush task notice it is no longer used and release the database.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let app = open(dir.path()).await;
    assert_eq!(
        app.outbox_due("chat").unwrap(),
        vec![first.clone(), second.clone()]
    );
    let pending = app.outbox_pending("chat", &first).unwrap().events;
    assert_eq!(
        kinds(&pending),
        ["log a", "log b"],
        "resumes after the confirmed delivery"
    );
    app.outbox_delivered("chat", &first, up_to(pending[1].seq))
        .await
        .unwrap();
    let pending = app.outbox_pending("chat", &second).unwrap().events;
    app.outbox_delivered("chat", &second, up_to(pending.last().unwrap().seq))
        .await
        .unwrap();
    assert!(app.outbox_due("chat").unwrap().is_empty());
    assert!(app
        .outbox_pending("chat", &first)
        .unwrap()
        .events
        .is_empty());

    // A new event makes the run due again, with only that event pending.
    app.append_log(&first, "c".into(), None, None, None)
        .await
        .unwrap();
    assert_eq!(app.outbox_due("chat").unwrap(), vec![first.clone()]);
    assert_eq!(
        kinds(&app.outbox_pending("chat", &first).unwrap().events),
        ["log c"]
    );
}

/// A delivery of all that `pending` holds, with a note, from that reading of the run.
fn noted<'a>(pending: &'a Pending, line: &str) -> Delivery<'a> {
    Delivery {
        seq: pending.events.last().unwrap().seq,
        note: Some(line.to_owned().into()),
        reference: None,
        keep_due: false,
        read: Some(pending),
    }
}

#[tokio::test]
async fn a_run_kept_due_with_nothing_pending_stays_due_across_a_restart() {
    let dir = common::deployment(&[]);
    let dev = Identity::try_from("dev@example.com").unwrap();
    let run;
    {
        let app = open(dir.path()).await;
        run = app.request_run(two_instances(&dev)).await.unwrap().id;
        let last = app.outbox_pending("chat", &run).unwrap().events[1].seq;
        // All delivered, but something is left to do about them (a card to update later).
        let kept = Delivery {
            keep_due: true,
            ..up_to(last)
        };
        app.outbox_delivered("chat", &run, kept).await.unwrap();
        let pending = app.outbox_pending("chat", &run).unwrap();
        assert!(pending.events.is_empty());
        assert_eq!(pending.cursor, Some(last));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let app = open(dir.path()).await;
    assert_eq!(app.outbox_due("chat").unwrap(), vec![run.clone()]);
    let pending = app.outbox_pending("chat", &run).unwrap();
    assert!(pending.events.is_empty());
    let last = pending.cursor.expect("still due after the restart");
    // Recording again at the same cursor, without keeping it due, is done with it.
    app.outbox_delivered("chat", &run, up_to(last))
        .await
        .unwrap();
    assert!(app.outbox_due("chat").unwrap().is_empty());
    assert_eq!(app.outbox_pending("chat", &run).unwrap().cursor, None);
}

#[tokio::test]
async fn a_delivery_recorded_from_an_old_reading_keeps_what_changed_since() {
    let dir = common::deployment(&[]);
    let app = open(dir.path()).await;
    let dev = Identity::try_from("dev@example.com").unwrap();
    let run = app.request_run(two_instances(&dev)).await.unwrap().id;
    // Nothing changed between the reading and the record: the note lands on the run as read.
    let pending = app.outbox_pending("chat", &run).unwrap();
    app.outbox_delivered("chat", &run, noted(&pending, "first note"))
        .await
        .unwrap();
    // A line arrives while the consumer delivers: the record must build on it, not on the
    // consumer's older reading.
    let pending = app.outbox_pending("chat", &run).unwrap();
    app.append_log(&run, "meanwhile".into(), None, None, None)
        .await
        .unwrap();
    app.outbox_delivered("chat", &run, noted(&pending, "second note"))
        .await
        .unwrap();

    let logged = kinds(&app.events(&run, 0).unwrap());
    let lines: Vec<_> = logged.iter().filter(|k| k.starts_with("log ")).collect();
    assert_eq!(
        lines,
        ["log first note", "log meanwhile", "log second note"]
    );
    let stored = app.run(&run).unwrap();
    assert_eq!(
        stored.last_seq,
        app.events(&run, 0).unwrap().last().unwrap().seq
    );
}

#[tokio::test]
async fn deliveries_taken_are_known_again_after_a_restart() {
    let dir = common::deployment(&[]);
    let dev = Identity::try_from("dev@example.com").unwrap();
    let asked = || RunRequest {
        received: Some(Received::Delivery("slack:1.2.three")),
        ..two_instances(&dev)
    };
    fn repeated<T>(result: Result<T, AppError>) -> Option<RunId> {
        match result {
            Err(AppError::Repeated(repeated)) => repeated.run,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("taken twice"),
        }
    }
    let run;
    {
        let app = open(dir.path()).await;
        run = app.request_run(asked()).await.unwrap().id;
        assert_eq!(repeated(app.request_run(asked()).await), Some(run.clone()));
        let event = app.claim_delivery("github:d1").unwrap();
        assert!(app.claim_delivery("github:d1").is_err());
        app.keep_delivery(event).await.unwrap();
        // A claim not kept (the work failed) is taken again.
        drop(app.claim_delivery("github:d2").unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let app = open(dir.path()).await;
    assert_eq!(repeated(app.request_run(asked()).await), Some(run));
    assert_eq!(
        app.claim_delivery("github:d1").err().map(|r| r.run),
        Some(None)
    );
    assert!(app.claim_delivery("github:d2").is_ok());
    assert_eq!(app.runs(10, false, |_| true).unwrap().len(), 1);
}
