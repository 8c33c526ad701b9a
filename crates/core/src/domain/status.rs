//! Statuses of proposals, missions and steps and their legal transitions
//! (DESIGN.md "The loop"). An illegal transition is an [`IllegalTransition`],
//! never a silent no-op.

use std::fmt;
use std::str::FromStr;

/// A transition the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entity} cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub entity: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// A status string that names no status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {entity} status {value:?}")]
pub struct UnknownStatus {
    pub entity: &'static str,
    pub value: String,
}

macro_rules! status_enum {
    ($name:ident, $entity:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every status, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (lowercase) name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownStatus { entity: $entity, value: other.to_owned() }),
                }
            }
        }
    };
}

status_enum!(ProposalStatus, "proposal", {
    Pending => "pending",
    Approved => "approved",
    Rejected => "rejected",
    Expired => "expired",
});

status_enum!(MissionStatus, "mission", {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

status_enum!(StepStatus, "step", {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl ProposalStatus {
    /// `pending → approved | rejected | expired`; nothing leaves a final status.
    pub fn can_become(self, to: ProposalStatus) -> bool {
        use ProposalStatus::*;
        matches!(
            (self, to),
            (Pending, Approved) | (Pending, Rejected) | (Pending, Expired)
        )
    }

    pub fn transition(self, to: ProposalStatus) -> Result<ProposalStatus, IllegalTransition> {
        check("proposal", self.can_become(to), self.as_str(), to.as_str())?;
        Ok(to)
    }

    pub fn is_final(self) -> bool {
        self != ProposalStatus::Pending
    }
}

impl MissionStatus {
    /// `running → succeeded | failed | cancelled`.
    pub fn can_become(self, to: MissionStatus) -> bool {
        use MissionStatus::*;
        matches!(
            (self, to),
            (Running, Succeeded) | (Running, Failed) | (Running, Cancelled)
        )
    }

    pub fn transition(self, to: MissionStatus) -> Result<MissionStatus, IllegalTransition> {
        check("mission", self.can_become(to), self.as_str(), to.as_str())?;
        Ok(to)
    }

    pub fn is_final(self) -> bool {
        self != MissionStatus::Running
    }
}

impl StepStatus {
    /// `queued → running → succeeded | failed`, `running → queued` (lease
    /// expired or retryable failure with attempts left), `queued|running →
    /// cancelled`. When one step fails terminally the others are cancelled,
    /// so there is no `queued → failed` edge.
    pub fn can_become(self, to: StepStatus) -> bool {
        use StepStatus::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Queued)
                | (Queued, Cancelled)
                | (Running, Cancelled)
        )
    }

    pub fn transition(self, to: StepStatus) -> Result<StepStatus, IllegalTransition> {
        check("step", self.can_become(to), self.as_str(), to.as_str())?;
        Ok(to)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Cancelled
        )
    }
}

fn check(
    entity: &'static str,
    legal: bool,
    from: &'static str,
    to: &'static str,
) -> Result<(), IllegalTransition> {
    if legal {
        Ok(())
    } else {
        Err(IllegalTransition { entity, from, to })
    }
}

/// What a mission's step statuses say about the mission, for the finalizer:
/// `Some(final status)` once it should end, `None` while work remains.
pub fn mission_outcome(steps: &[StepStatus]) -> Option<MissionStatus> {
    if steps.contains(&StepStatus::Failed) {
        return Some(MissionStatus::Failed);
    }
    if !steps.is_empty() && steps.iter().all(|s| *s == StepStatus::Succeeded) {
        return Some(MissionStatus::Succeeded);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_transitions_table() {
        use ProposalStatus::*;
        let legal = [(Pending, Approved), (Pending, Rejected), (Pending, Expired)];
        for from in ProposalStatus::ALL {
            for to in ProposalStatus::ALL {
                let expected = legal.contains(&(*from, *to));
                assert_eq!(from.can_become(*to), expected, "{from} -> {to}");
                assert_eq!(from.transition(*to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn mission_transitions_table() {
        use MissionStatus::*;
        let legal = [
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
        ];
        for from in MissionStatus::ALL {
            for to in MissionStatus::ALL {
                assert_eq!(
                    from.can_become(*to),
                    legal.contains(&(*from, *to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn step_transitions_table() {
        use StepStatus::*;
        let legal = [
            (Queued, Running),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Queued),
            (Queued, Cancelled),
            (Running, Cancelled),
        ];
        for from in StepStatus::ALL {
            for to in StepStatus::ALL {
                let expected = legal.contains(&(*from, *to));
                assert_eq!(from.can_become(*to), expected, "{from} -> {to}");
                if !expected {
                    let err = from.transition(*to).expect_err("illegal");
                    assert_eq!(err.entity, "step");
                }
            }
        }
    }

    #[test]
    fn statuses_round_trip_and_reject_unknown() {
        for s in StepStatus::ALL {
            assert_eq!(s.as_str().parse::<StepStatus>(), Ok(*s));
        }
        for s in ProposalStatus::ALL {
            assert_eq!(s.as_str().parse::<ProposalStatus>(), Ok(*s));
        }
        for s in MissionStatus::ALL {
            assert_eq!(s.as_str().parse::<MissionStatus>(), Ok(*s));
        }
        assert!("done".parse::<StepStatus>().is_err());
    }

    #[test]
    fn mission_outcome_from_steps() {
        use StepStatus::*;
        let table: &[(&[StepStatus], Option<MissionStatus>)] = &[
            (&[Succeeded, Succeeded], Some(MissionStatus::Succeeded)),
            (&[Succeeded, Queued], None),
            (&[Running, Failed], Some(MissionStatus::Failed)),
            (&[Succeeded, Failed, Cancelled], Some(MissionStatus::Failed)),
            (&[], None),
        ];
        for (steps, expected) in table {
            assert_eq!(mission_outcome(steps), *expected, "{steps:?}");
        }
    }
}
