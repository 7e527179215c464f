//! `warden:agent/types`: the shared types of the package. It has no functions, and every
//! tier links it, so it takes no section of the tier table.

use super::AgentCtx;
use crate::bindings::warden::agent::types::Host;
use crate::interface::Interface;
use crate::policy::SectionSpec;

pub(super) const SECTION: SectionSpec = SectionSpec::always(Interface::Types);

impl Host for AgentCtx {}
