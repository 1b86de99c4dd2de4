//! Configuration problems, collected so that a process reports every one
//! of them at startup, together.

/// Collects configuration problems so they can be reported all at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub fn into_result(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "invalid configuration:\n  - {}",
                self.0.join("\n  - ")
            ))
        }
    }
}
