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

/// The parser of an option whose least sensible value is 1 (a timeout, a
/// limit, a count): 0 is refused at startup, naming the option, rather
/// than taken silently as 1.
pub fn at_least_one<T>() -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::fmt::Display + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::<T>::new().range(1..)
}
