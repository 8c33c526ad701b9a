//! The loop's domain, pure and without I/O: the state machines of proposals,
//! missions and steps, typed inputs parsed at the boundary, policy values with
//! their schemas, the submit gates and the retry backoff. The workflow module
//! calls these from inside its transactions; everything here is unit-tested
//! without a database.

pub mod backoff;
pub mod gate;
pub mod governance;
pub mod input;
pub mod policy;
pub mod rollout;
pub mod rule_spec;
pub mod status;

pub use backoff::{Backoff, Doubling, retry_delay};
pub use gate::{Decision, GateInput, GatePlan, GateRejection, KindGate, StopState};
pub use input::{
    DedupeKey, EventKind, JsonDocument, Limits, NewEvent, NewProposal, ProposalSource, StepKind,
    StepSpec, ValidationError,
};
pub use policy::{PolicyKey, PolicyValue};
pub use status::{IllegalTransition, MissionStatus, ProposalStatus, StepStatus};
