//! The controller's intent: VPCs, subnets, hosts, NICs, routes and peerings as declared
//! through the API or `sluicectl apply -f`, validated and persisted.
//!
//! - [`model`]: the resources, the request types ([`VpcSpec`], [`NicSpec`], ...), the
//!   declarative [`Topology`], and [`Intent`], the whole state (read through its getters).
//! - [`validate`]: every change is a pure function of the current intent
//!   (`intent.create_vpc(spec) -> Result<(Intent, Vpc), ValidationError>`), all or nothing;
//!   [`ValidationError::status`] gives 400, 404 or 409.
//! - [`store`]: the intent in redb, one write transaction per committed change.
//! - [`sg`]: security groups (every VPC has a `default` one) and the NICs' groups;
//!   [`blocklist`]: the operator's blocked prefixes.
//! - [`nat`]: EIP pools, elastic IPs and NAT gateways (SNAT/DNAT entries).
//!
//! IDs. Hosts are identified by their name. Every other resource gets an allocated ID that
//! is never reused: `vpc-<n>`, `subnet-<n>`, `nic-<n>`, `pcx-<n>` (peerings), `sg-<n>`
//! (security groups, [`sg`]; their rules `sgr-<n>`), `eipp-<n>`, `eip-<n>`, `natgw-<n>`,
//! `snat-<n>` and `dnat-<n>` ([`nat`]), and a name
//! (given, or the ID). Requests may refer to a resource by ID or by name. VPC, NIC and
//! peering names are unique across the cloud, subnet names within their VPC; a name may
//! not look like an ID. A custom route is identified by its VPC and destination CIDR (its
//! dependents-list form is `route/<vpc id>:<destination>`).
//!
//! Addresses. A VPC's CIDR is a /8 to a /28 (not loopback, link-local, multicast or
//! reserved space); two VPCs may use the same CIDR. A subnet lies inside its VPC, overlaps
//! no sibling, and is at most a /28. Five addresses of every subnet are reserved: the
//! network address, the gateway (network + 1, answered by the virtual router), network + 2
//! and + 3 (kept for DNS and future services), and the broadcast address. A NIC's IP is
//! given or the lowest free address, and never changes; its MAC is given (unicast, unique)
//! or allocated as `02:73:6c:xx:xx:xx` (locally administered). A host's router MAC is given
//! or derived from its name (`06:...`, locally administered).
//!
//! VNIs are allocated from a counter (1, 2, ...) skipping those in use, so a VNI is never
//! shared and not reused until the 24-bit space wraps.

pub mod blocklist;
pub mod lb;
pub mod model;
pub mod nat;
pub mod sg;
pub mod store;
pub mod validate;

pub use blocklist::{BlockAppliesTo, BlocklistEntry, BlocklistSpec};
pub use model::*;
pub use nat::{
    DnatEntry, DnatSpec, Eip, EipAttach, EipBind, EipPool, EipPoolSpec, EipSpec, EipState,
    NatGateway, NatGatewaySpec, NatProtocol, SnatEntry, SnatSource, SnatSpec,
};
pub use sg::{
    Action, Direction, PortRange, Protocol, Remote, SecurityGroup, SecurityGroupSpec, SgRule,
    SgRuleSpec,
};
pub use store::{Store, StoreError, TransactError};
pub use validate::{ErrorKind, ValidationError};
