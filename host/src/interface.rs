//! The interfaces of `warden:agent` an agent can import, and sets of them.
//!
//! [`with_capabilities!`] is the capability registry: one row per capability, naming its
//! [`Interface`] variant and its module (which is also its WIT interface name and its section
//! of the tier table). A row marked `(wasi)` is a WASI interface the host implements with a
//! governed hook (`http`: `wasi:http/outgoing-handler`), not one of `warden:agent`. The enum here and the link-and-grant table of
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
            Http => http (wasi),
        }
    };
}
pub(crate) use with_capabilities;

macro_rules! define_interface {
    ($($variant:ident => $module:ident $(($kind:ident))?),* $(,)?) => {
        /// A governed interface an agent can import: one of `warden:agent`, or a WASI one the
        /// host links through a governed hook ([`Interface::is_wasi`]).
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

            /// Whether it is a WASI interface (`wasi:http`) rather than one of `warden:agent`.
            pub fn is_wasi(self) -> bool {
                match self {
                    $(Interface::$variant => stringify!($($kind)?) == "wasi",)*
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

    /// The fully qualified import name (`warden:agent/secrets@0.1.0`; `wasi:http/outgoing-handler`
    /// for a WASI interface, whose version is any `0.2.x`).
    pub fn qualified(self) -> String {
        if self.is_wasi() {
            return format!("wasi:{}/outgoing-handler", self.name());
        }
        format!("warden:agent/{}@0.1.0", self.name())
    }

    /// The governed interface a WASI import (`wasi:http/types@0.2.6`) belongs to, if any.
    pub fn from_wasi_import(name: &str) -> Option<Interface> {
        let (interface, version) = name.split_once('@')?;
        if !version.starts_with("0.2.") {
            return None;
        }
        match interface {
            "wasi:http/outgoing-handler" | "wasi:http/types" => Some(Interface::Http),
            _ => None,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_wasi() {
            return write!(f, "wasi:{}", self.name());
        }
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
