//! The interfaces of `warden:agent` an agent can import, and sets of them.
//!
//! [`with_capabilities!`] is the capability registry: one row per capability, naming its
//! [`Interface`] variant and its module (which is also its WIT interface name and its section
//! of the tier table). The enum here and the link-and-grant table of
//! [`capabilities`](crate::capabilities) are both expanded from it, so a capability is added in
//! one place.

use std::fmt;

/// The capability registry, in the order the WIT package lists the interfaces. Expands
/// `$callback! { Variant => module, … }`.
macro_rules! with_capabilities {
    ($callback:ident) => {
        $callback! {
            Types => types,
            Ledger => ledger,
            State => state,
            Artifacts => artifacts,
            Llm => llm,
            Blackboard => blackboard,
            Messaging => messaging,
            Consensus => consensus,
            Tools => tools,
            Secrets => secrets,
            Governance => governance,
        }
    };
}
pub(crate) use with_capabilities;

macro_rules! define_interface {
    ($($variant:ident => $module:ident),* $(,)?) => {
        /// A WIT interface of `warden:agent` an agent can import.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Interface {
            $(
                #[doc = concat!("`warden:agent/", stringify!($module), "`.")]
                $variant,
            )*
        }

        impl Interface {
            /// Every interface of `warden:agent`, in registry order.
            pub const ALL: &'static [Interface] = &[$(Interface::$variant),*];

            /// The interface's WIT name (`secrets`), also the name of its tier-table section.
            pub fn name(self) -> &'static str {
                match self {
                    $(Interface::$variant => stringify!($module),)*
                }
            }
        }
    };
}
with_capabilities!(define_interface);

impl Interface {
    /// Parse a WIT interface name (`secrets`).
    pub fn from_name(name: &str) -> Option<Interface> {
        Interface::ALL.iter().copied().find(|i| i.name() == name)
    }

    /// The fully qualified import name (`warden:agent/secrets@0.1.0`).
    pub fn qualified(self) -> String {
        format!("warden:agent/{}@0.1.0", self.name())
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warden:agent/{}", self.name())
    }
}

/// A set of interfaces, as a bitmask: the call gate tests membership on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceSet(u32);

impl InterfaceSet {
    /// Whether the set holds `interface`.
    pub fn contains(self, interface: Interface) -> bool {
        self.0 & interface.bit() != 0
    }

    /// Add `interface`.
    pub fn insert(&mut self, interface: Interface) {
        self.0 |= interface.bit();
    }

    /// Whether every interface of `other` is in this set.
    pub fn is_superset(self, other: InterfaceSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// The interfaces of the set, in registry order.
    pub fn iter(self) -> impl Iterator<Item = Interface> {
        Interface::ALL
            .iter()
            .copied()
            .filter(move |i| self.contains(*i))
    }
}

impl FromIterator<Interface> for InterfaceSet {
    fn from_iter<I: IntoIterator<Item = Interface>>(iter: I) -> Self {
        let mut set = InterfaceSet::default();
        for interface in iter {
            set.insert(interface);
        }
        set
    }
}

// The set is a `u32` bitmask.
const _: () = assert!(Interface::ALL.len() <= 32);
