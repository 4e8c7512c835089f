//! The `process` source: runs a command without a shell, bounded in time and output; its
//! standard output is the secret. Called by a refresher in `refresh`.

use crate::secret::Secret;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long the command may run before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The most standard output taken as a secret.
const MAX_STDOUT: u64 = 64 * 1024;
/// Standard error read for the failure summary, and the length of the summary.
const MAX_STDERR: u64 = 4096;
const SUMMARY_CHARS: usize = 200;

/// Runs `command` (relative to `base_dir` when its program path is relative and has a `/`)
/// and returns its standard output without one trailing newline. Fails on a spawn error, a
/// timeout (the command is killed), a non-zero exit, an empty or oversized output; the cause
/// carries a summary of standard error, never standard output.
pub async fn run(command: &[String], base_dir: &Path) -> Result<Secret, String> {
    let (program, args) = command.split_first().ok_or("names no program")?;
    let program_path = Path::new(program);
    let program = if program.contains('/') && program_path.is_relative() {
        base_dir.join(program_path)
    } else {
        program_path.to_path_buf()
    };
    let mut child = tokio::process::Command::new(&program)
        .args(args)
        .current_dir(base_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {}", program.display(), e.kind()))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let ran = tokio::time::timeout(TIMEOUT, async {
        let (out, err) = tokio::join!(bounded(stdout, MAX_STDOUT), bounded(stderr, MAX_STDERR));
        (child.wait().await, out, err)
    })
    .await;
    // On timeout the future above is dropped with the child: kill_on_drop kills it.
    let Ok((status, out, err)) = ran else {
        return Err(format!(
            "timed out after {}s and was killed",
            TIMEOUT.as_secs()
        ));
    };
    let status = status.map_err(|e| format!("cannot wait for it: {}", e.kind()))?;
    let out = String::from_utf8(out).map_err(|_| "printed a value that is not UTF-8")?;
    let value = out
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&out);
    if !status.success() {
        return Err(format!("{status}{}", summary(&err, value)));
    }
    if out.len() as u64 > MAX_STDOUT {
        return Err(format!("printed more than {MAX_STDOUT} bytes"));
    }
    if value.is_empty() {
        return Err(format!("printed nothing{}", summary(&err, value)));
    }
    Ok(Secret::new(value))
}

/// Reads at most `limit + 1` bytes (one more shows the limit was passed), then drains the
/// rest so the command is not stalled on a full pipe.
async fn bounded(stream: Option<impl AsyncRead + Unpin>, limit: u64) -> Vec<u8> {
    let Some(mut stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let _ = (&mut stream).take(limit + 1).read_to_end(&mut kept).await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    kept
}

/// `: <stderr>` on one line, bounded, with anything the command also printed on standard
/// output masked (a command may echo its secret to both); empty when stderr was.
fn summary(stderr: &[u8], stdout: &str) -> String {
    let mut text = String::from_utf8_lossy(stderr).into_owned();
    let stdout = stdout.trim();
    if !stdout.is_empty() {
        text = text.replace(stdout, "[redacted]");
    }
    let line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if line.is_empty() {
        return String::new();
    }
    let mut short: String = line.chars().take(SUMMARY_CHARS).collect();
    if short.len() < line.len() {
        short.push_str("...");
    }
    format!(": stderr: {short}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cmd(body: &str) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, vec!["./s.sh".into(), "arg one".into(), "$HOME".into()])
    }

    #[tokio::test]
    async fn stdout_is_the_secret_and_arguments_reach_the_program_without_a_shell() {
        let (dir, c) = cmd("printf '%s|%s\\n' \"$1\" \"$2\"");
        let s = run(&c, dir.path()).await.unwrap();
        assert_eq!(s.expose(), "arg one|$HOME");
    }

    #[tokio::test]
    async fn failures_summarise_stderr_and_never_show_stdout() {
        let (dir, c) =
            cmd("echo CANARY-out; echo \"bad CANARY-out\n  login   needed\" >&2; exit 2");
        let err = run(&c, dir.path()).await.unwrap_err();
        assert_eq!(err, "exit status: 2: stderr: bad [redacted] login needed");
        let (dir, c) = cmd("echo; exit 0");
        assert_eq!(run(&c, dir.path()).await.unwrap_err(), "printed nothing");
        let (dir, c) = cmd(&format!(
            "head -c {} /dev/zero | tr '\\0' a",
            MAX_STDOUT + 10
        ));
        assert!(run(&c, dir.path())
            .await
            .unwrap_err()
            .starts_with("printed more than"));
        let (dir, c) = cmd("head -c 3000 /dev/zero | tr '\\0' e >&2; exit 1");
        let err = run(&c, dir.path()).await.unwrap_err();
        assert!(err.len() < 260 && err.ends_with("..."), "{err}");
        let missing = vec!["./nope".to_string()];
        assert!(run(&missing, dir.path())
            .await
            .unwrap_err()
            .contains("cannot start"));
    }

    #[tokio::test(start_paused = false)]
    async fn a_command_that_hangs_is_killed_at_the_timeout() {
        let (dir, c) = cmd("exec sleep 60");
        let started = std::time::Instant::now();
        let err = run(&c, dir.path()).await.unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(started.elapsed() < TIMEOUT + Duration::from_secs(5));
    }
}
