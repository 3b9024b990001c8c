//! What the suite's tasks do, said once and run by any backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One thing a task does. Every backend runs the same steps: a backend with a shell renders
/// them with [`Program::sh`]; one without (a test double) interprets them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Prints a line to standard output.
    Out(String),
    /// Prints a line to standard error.
    Err(String),
    /// Prints the numbers `1..=n`, one a line, to standard output.
    Count(u32),
    /// Prints `NAME=value` of an environment variable (an empty value when it is not set).
    Env(String),
    /// Prints the content of a file of the working directory.
    Cat(String),
    /// Writes this text to `$FERRY_OUTPUTS`.
    Outputs(String),
    /// Writes this text to `$FERRY_SUBTASKS`.
    Subtasks(String),
    /// Writes a file in the working directory.
    Write { path: String, content: String },
    /// Sleeps this many milliseconds.
    Sleep(u64),
    /// Ends with this status.
    Exit(i32),
}

/// A task: its steps, in order; it ends with status 0 unless a step says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Program(pub Vec<Step>);

impl Program {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Program(steps.into_iter().collect())
    }

    /// The program as a POSIX shell script (`sh -c SCRIPT`): what a backend that runs real
    /// processes or containers gives its compute. Uses only `printf`, `cat`, `seq`, `sleep`
    /// and `exit`, which busybox has.
    pub fn sh(&self) -> String {
        let mut script = Vec::new();
        for step in &self.0 {
            script.push(match step {
                Step::Out(s) => format!("printf '%s\\n' {}", quote(s)),
                Step::Err(s) => format!("printf '%s\\n' {} >&2", quote(s)),
                Step::Count(n) => format!("seq 1 {n}"),
                Step::Env(name) => format!("printf '%s=%s\\n' {} \"${{{name}}}\"", quote(name)),
                Step::Cat(path) => format!("cat {}", quote(path)),
                Step::Outputs(s) => format!("printf '%s' {} > \"$FERRY_OUTPUTS\"", quote(s)),
                Step::Subtasks(s) => format!("printf '%s' {} > \"$FERRY_SUBTASKS\"", quote(s)),
                Step::Write { path, content } => {
                    format!("printf '%s' {} > {}", quote(content), quote(path))
                }
                Step::Sleep(ms) => format!("sleep {}", Duration::from_millis(*ms).as_secs_f64()),
                Step::Exit(code) => format!("exit {code}"),
            });
        }
        script.join("\n")
    }
}

/// `s` in single quotes, for the shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_a_script_the_shell_runs_verbatim() {
        let p = Program::new([
            Step::Out("it's $HOME".into()),
            Step::Env("FERRY_TASK_ID".into()),
            Step::Sleep(250),
            Step::Exit(3),
        ]);
        assert_eq!(
            p.sh(),
            "printf '%s\\n' 'it'\\''s $HOME'\nprintf '%s=%s\\n' 'FERRY_TASK_ID' \"${FERRY_TASK_ID}\"\nsleep 0.25\nexit 3"
        );
    }
}
