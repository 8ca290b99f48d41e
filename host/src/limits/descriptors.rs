//! The process's file descriptor limit: raised at start where allowed,
//! and split between connections and the descriptors a server must keep
//! for itself (listeners, relay sockets, files, the runtime).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft descriptor limit to the hard one (what an unprivileged
/// process may do) and returns the soft limit in force afterwards, `None`
/// when it cannot be read or is unlimited.
pub fn raise_descriptor_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(maximum), maximum: Some(maximum) }) {
            Ok(()) => tracing::debug!(from = current, to = maximum, "descriptor limit raised"),
            Err(e) => tracing::debug!("cannot raise the descriptor limit from {current}: {e}"),
        }
    }
    getrlimit(Resource::Nofile).current
}

/// How many descriptors a server may spend on client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft limit in force (`None`: unlimited or unknown).
    pub limit: Option<u64>,
    /// Descriptors kept back for the server itself.
    pub reserved: u64,
}

impl DescriptorBudget {
    /// The budget under the current soft limit, keeping `reserved` back.
    pub fn current(reserved: u64) -> Self {
        Self { limit: getrlimit(Resource::Nofile).current, reserved }
    }

    /// `wanted` connections, or fewer when the limit leaves less room (at
    /// least 1).
    pub fn connections(&self, wanted: usize) -> usize {
        match self.limit {
            Some(limit) => {
                let room = limit.saturating_sub(self.reserved).max(1);
                wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
            }
            None => wanted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_under_the_limit_with_the_reserve_kept() {
        let budget = DescriptorBudget { limit: Some(1024), reserved: 64 };
        assert_eq!(budget.connections(100_000), 960);
        assert_eq!(budget.connections(10), 10);
        assert_eq!(DescriptorBudget { limit: Some(10), reserved: 64 }.connections(5), 1);
        assert_eq!(DescriptorBudget { limit: None, reserved: 64 }.connections(7), 7);
    }
}
