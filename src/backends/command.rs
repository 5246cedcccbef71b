//! The `COMMAND` backend: runs a configured program without a shell.
//!
//! The run's context goes to the program as JSON on stdin and as `PORT_*` environment variables
//! (`PORT_RUN_ID`, `PORT_ACTION`, `PORT_ENTITY`, `PORT_USER`, `PORT_INPUT_<NAME>`). Its stdout
//! and stderr lines become run log lines, batched when they come quickly. Exit code 0 ends the
//! run SUCCESS, anything else FAILURE. On timeout, or when the run ends meanwhile (checked twice
//! a second), the program's whole process group is killed. portbot's own `PORTBOT*` variables (secrets) are not passed on.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::{Dispatcher, Outcome};
use crate::core::action::CommandInvocation;
use crate::core::run::{Run, RunStatus};
use crate::core::schema::plain_text;
use crate::core::template;

/// Lines longer than this are cut, so one runaway line cannot flood the thread.
const MAX_LINE_CHARS: usize = 4000;
/// Lines that arrive within this window are recorded in one change.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
const MAX_BATCH: usize = 200;
/// How often a running command checks whether its run ended by other means.
const ENDED_CHECK: Duration = Duration::from_millis(500);

enum Ending {
    Exited(std::process::ExitStatus),
    TimedOut,
    Stopped,
}

pub(super) async fn run(dispatcher: &Dispatcher, run: &Run, cmd: &CommandInvocation) -> Outcome {
    let context = dispatcher.app.template_context(run);
    let argv = match cmd
        .command
        .iter()
        .map(|part| template::render_text(part, &context))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(argv) => argv,
        Err(error) => {
            return dispatcher
                .end(
                    &run.id,
                    format!("the command could not be built: {error}"),
                    RunStatus::Failure,
                )
                .await
        }
    };

    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTBOT") {
            command.env_remove(key);
        }
    }
    command
        .env("PORT_RUN_ID", run.id.as_str())
        .env("PORT_ACTION", run.action.identifier.as_str())
        .env("PORT_USER", run.created_by.as_str())
        .env(
            "PORT_ENTITY",
            run.entity
                .as_ref()
                .map(|e| e.identifier.as_str())
                .unwrap_or(""),
        );
    for (name, value) in &run.properties {
        command.env(format!("PORT_INPUT_{}", env_name(name)), plain_text(value));
    }
    if let Some(dir) = &cmd.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return dispatcher
                .end(
                    &run.id,
                    format!("the command `{}` could not be started: {error}", argv[0]),
                    RunStatus::Failure,
                )
                .await
        }
    };
    dispatcher
        .log(&run.id, format!("running `{}`", argv.join(" ")))
        .await;

    if let Some(mut stdin) = child.stdin.take() {
        let input = serde_json::to_vec(&context).expect("JSON values serialise");
        // A program that does not read its stdin closes it early; that is not an error.
        let _ = stdin.write_all(&input).await;
    }
    let (lines_tx, mut lines_rx) = mpsc::channel::<String>(1024);
    let readers = [
        child
            .stdout
            .take()
            .map(|out| spawn_reader(out, lines_tx.clone())),
        child
            .stderr
            .take()
            .map(|err| spawn_reader(err, lines_tx.clone())),
    ];
    drop(lines_tx);

    let pid = child.id();
    let forward_logs = async {
        while let Some(first) = lines_rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, lines_rx.recv()).await {
                    Ok(Some(line)) => batch.push(line),
                    _ => break,
                }
            }
            if let Err(error) = dispatcher.app.append_logs(&run.id, batch).await {
                tracing::debug!(run = %run.id, %error, "command output not recorded");
            }
        }
    };
    let wait = async {
        let (status, ()) = tokio::join!(child.wait(), forward_logs);
        status
    };
    let ending = tokio::select! {
        status = wait => match status {
            Ok(status) => Ending::Exited(status),
            Err(error) => {
                return dispatcher.end(&run.id, format!("waiting for the command failed: {error}"), RunStatus::Failure).await
            }
        },
        _ = tokio::time::sleep(cmd.timeout) => Ending::TimedOut,
        _ = run_ended(dispatcher, run) => Ending::Stopped,
    };
    if !matches!(ending, Ending::Exited(_)) {
        kill_group(pid);
        // Keep what the program printed before it was killed.
        let mut rest = Vec::new();
        while let Ok(line) = lines_rx.try_recv() {
            rest.push(line);
        }
        if !rest.is_empty() {
            if let Err(error) = dispatcher.app.append_logs(&run.id, rest).await {
                tracing::debug!(run = %run.id, %error, "command output not recorded");
            }
        }
    }
    for reader in readers.into_iter().flatten() {
        reader.abort();
    }
    match ending {
        Ending::Exited(status) if status.success() => {
            dispatcher
                .end(
                    &run.id,
                    "the command exited with code 0".into(),
                    RunStatus::Success,
                )
                .await
        }
        Ending::Exited(status) => {
            let how = match status.code() {
                Some(code) => format!("exited with code {code}"),
                None => "was killed by a signal".to_owned(),
            };
            dispatcher
                .end(&run.id, format!("the command {how}"), RunStatus::Failure)
                .await
        }
        Ending::TimedOut => {
            dispatcher
                .end(
                    &run.id,
                    format!(
                        "the command did not finish within {} s and was killed",
                        cmd.timeout.as_secs()
                    ),
                    RunStatus::Failure,
                )
                .await
        }
        Ending::Stopped => Ok(None),
    }
}

/// Resolves once the run has ended by other means (cancelled, or ended by a backend).
async fn run_ended(dispatcher: &Dispatcher, run: &Run) {
    let mut tick = tokio::time::interval(ENDED_CHECK);
    loop {
        tick.tick().await;
        if dispatcher
            .app
            .run(&run.id)
            .is_ok_and(|r| r.status.is_ended())
        {
            return;
        }
    }
}

/// `instance-class` -> `INSTANCE_CLASS`.
fn env_name(input: &str) -> String {
    input
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn spawn_reader(
    stream: impl AsyncRead + Unpin + Send + 'static,
    lines: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\n', '\r']);
                    let mut line: String = line.chars().take(MAX_LINE_CHARS).collect();
                    if text.chars().count() > MAX_LINE_CHARS + 1 {
                        line.push_str(" [line cut]");
                    }
                    if lines.send(line).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Kills the program and everything it started (it leads its own process group).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}
