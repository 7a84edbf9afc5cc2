//! Task status and the legal transitions between statuses.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Status of a task (wire values are snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted, not started.
    Submitted,
    /// Running.
    Working,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error (terminal).
    Failed,
    /// Cancelled (terminal).
    Cancelled,
    /// Waiting for input.
    InputRequired,
}

impl TaskStatus {
    /// Every status, in the reference's enum order.
    pub const ALL: [TaskStatus; 6] = [
        Self::Submitted,
        Self::Working,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::InputRequired,
    ];

    /// The wire value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Working => "working",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::InputRequired => "input_required",
        }
    }

    /// Parses a wire value.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Completed, failed and cancelled are terminal: nothing follows them.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The reference's "cancellable" helper: only `submitted` and `working`
    /// (although `input_required → cancelled` is a legal transition).
    #[must_use]
    pub fn is_cancellable(self) -> bool {
        matches!(self, Self::Submitted | Self::Working)
    }

    /// Statuses reachable in one step.
    #[must_use]
    pub fn next_states(self) -> &'static [TaskStatus] {
        use TaskStatus::*;
        match self {
            Submitted => &[Working, Cancelled],
            Working => &[Completed, Failed, Cancelled, InputRequired],
            InputRequired => &[Working, Cancelled],
            Completed | Failed | Cancelled => &[],
        }
    }

    /// Whether `self → to` is legal (self-transitions are not).
    #[must_use]
    pub fn can_transition(self, to: TaskStatus) -> bool {
        self.next_states().contains(&to)
    }

    /// `Ok` if `self → to` is legal, else the reference's `InvalidTransitionError`.
    pub fn check_transition(self, to: TaskStatus) -> Result<(), InvalidTransition> {
        if self.can_transition(to) {
            Ok(())
        } else {
            Err(InvalidTransition {
                from: self,
                to,
                task_id: None,
            })
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An illegal status change (`asap:protocol/invalid_state`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid transition from '{from}' to '{to}'")]
pub struct InvalidTransition {
    /// Current status.
    pub from: TaskStatus,
    /// Requested status.
    pub to: TaskStatus,
    /// The task, when known.
    pub task_id: Option<String>,
}

impl InvalidTransition {
    /// Attaches the task id.
    #[must_use]
    pub fn for_task(mut self, task_id: &str) -> Self {
        self.task_id = Some(task_id.to_owned());
        self
    }

    /// As the reference's `ASAPError.to_dict()`.
    #[must_use]
    pub fn to_asap_error(&self) -> crate::jsonrpc::AsapError {
        let mut details =
            serde_json::json!({"from_state": self.from.as_str(), "to_state": self.to.as_str()});
        if let Some(t) = &self.task_id {
            details["task_id"] = t.clone().into();
        }
        crate::jsonrpc::AsapError::new(
            crate::jsonrpc::asap_codes::INVALID_STATE,
            self.to_string(),
            details,
        )
    }
}
