//! Identifier newtypes. Each is a `u64` on the wire (a bare number in JSON) and
//! prints as its number, so logs and reports stay readable.

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

id_newtype!(
    /// A managed host (hypervisor, storage or system-VM agent).
    HostId
);
id_newtype!(
    /// A virtual machine (user VM or system VM).
    VmId
);
id_newtype!(
    /// A cluster of hosts sharing primary storage and a hypervisor type.
    ClusterId
);
id_newtype!(
    /// A pod: a rack-level grouping of clusters.
    PodId
);
id_newtype!(
    /// A zone: the scope of HA (VMs never restart across zones).
    ZoneId
);
id_newtype!(
    /// One registration in the listener registry (CloudStack's monitor id).
    ListenerId
);
id_newtype!(
    /// A sequence number: request sequences of an attache, or the attache-local ping counter.
    Sequence
);
id_newtype!(
    /// One HA work item.
    WorkId
);

impl Sequence {
    /// The following sequence number (wrapping).
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}
