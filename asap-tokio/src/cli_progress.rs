//! What `asap send` / `asap discover` are waiting for, on a terminal: a spinner
//! with the elapsed time on stderr, redrawn in place and erased when the wait
//! ends. Off when stderr is not a terminal (pipes, files, tests) and with
//! `--json`, so scripts never see it.

use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits shorter than this draw nothing.
const FIRST_FRAME_AFTER: Duration = Duration::from_millis(400);
/// Time between two frames.
const FRAME_EVERY: Duration = Duration::from_millis(120);
/// The spinner's frames.
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Whether progress is shown: only on a terminal, and never with `--json`.
pub fn enabled(stderr_is_terminal: bool, json: bool) -> bool {
    stderr_is_terminal && !json
}

/// One frame: spinner, what is awaited, seconds so far.
pub fn frame(n: usize, elapsed: Duration, what: &str) -> String {
    format!(
        "{} {what} ({} s)",
        SPINNER[n % SPINNER.len()],
        elapsed.as_secs()
    )
}

#[derive(Debug)]
struct Line {
    what: String,
    /// A frame is on screen (erase it before printing anything else).
    drawn: bool,
    /// The wait ended: draw nothing more.
    done: bool,
}

impl Line {
    fn erase(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// The progress line of one command; erased when dropped.
#[derive(Debug)]
pub struct Progress {
    line: Option<Arc<Mutex<Line>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `what` (on a terminal, without `--json`); call inside the runtime.
    pub fn start(what: impl Into<String>, json: bool) -> Self {
        if !enabled(std::io::stderr().is_terminal(), json) {
            return Self {
                line: None,
                task: None,
            };
        }
        let line = Arc::new(Mutex::new(Line {
            what: what.into(),
            drawn: false,
            done: false,
        }));
        let shared = Arc::clone(&line);
        let started = Instant::now();
        let task = tokio::spawn(async move {
            tokio::time::sleep(FIRST_FRAME_AFTER).await;
            let mut every = tokio::time::interval(FRAME_EVERY);
            for n in 0.. {
                every.tick().await;
                let mut l = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if l.done {
                    return;
                }
                let text = frame(n, started.elapsed(), &l.what);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{text}");
                let _ = err.flush();
                l.drawn = true;
            }
        });
        Self {
            line: Some(line),
            task: Some(task),
        }
    }

    /// Says what is awaited now.
    pub fn set(&self, what: impl Into<String>) {
        if let Some(line) = &self.line {
            line.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .what = what.into();
        }
    }

    /// Prints `text` as a line of its own on stderr (the spinner redraws below it).
    pub fn eprintln(&self, text: &str) {
        match &self.line {
            Some(line) => {
                let mut l = line
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                l.erase();
                eprintln!("{text}");
            }
            None => eprintln!("{text}"),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(line) = &self.line {
            let mut l = line
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            l.done = true;
            l.erase();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_only_on_a_terminal_without_json() {
        assert!(enabled(true, false));
        assert!(!enabled(true, true));
        assert!(!enabled(false, false));
        assert!(!enabled(false, true));
    }

    #[test]
    fn a_frame_names_the_wait_and_the_whole_seconds() {
        assert_eq!(
            frame(
                0,
                Duration::from_millis(2_900),
                "waiting for urn:asap:agent:x"
            ),
            "⠋ waiting for urn:asap:agent:x (2 s)"
        );
        assert!(frame(11, Duration::ZERO, "x").starts_with('⠙'));
    }
}
