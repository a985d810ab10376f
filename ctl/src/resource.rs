//! The intent commands (`create`, `get`, `list`, `delete`, `accept`, `update`, `apply`):
//! their arguments, and the pure mapping from arguments to one API request.
//!
//! Security groups follow the same verbs: `create security-group`, and a group's rules
//! are resources of their own (`create rule --security-group G ...`, `delete rule <id>
//! --security-group G`, `list rules --security-group G`). Blocked prefixes are `block`s:
//! `create block --prefix P`, `get|delete block P`, `list blocklist`. EIP pools, EIPs,
//! NAT gateways and their SNAT/DNAT entries likewise (arguments in `nat.rs`).

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use crate::nat::{self, DnatArgs, EipArgs, EipPoolArgs, NatGatewayArgs, SnatArgs};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::{de::DeserializeOwned, Serialize};
use sluice_dataplane::{
    client::{encode, Method},
    intent::{
        Action, BlockAppliesTo, BlocklistSpec, Direction, HostSpec, NextHop, NicSpec, NicUpdate,
        PeeringSpec, Protocol, RouteSpec, SecurityGroupSpec, SgRuleSpec, SubnetSpec, Topology,
        VpcSpec,
    },
};

/// One API call and how to show its answer.
#[derive(Debug, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub body: Option<serde_json::Value>,
    pub expect: Expect,
}

/// What the answer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    One(Kind),
    List(Kind),
    RouteTable,
    /// A security group's rules (the answer is the group).
    Rules,
    Apply,
    /// `GET /v1/load-balancers/{lb}/status`.
    LbStatus,
    /// 204; the text says what went (`vpc/a`).
    Deleted(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Host,
    Vpc,
    Subnet,
    Nic,
    Route,
    Peering,
    SecurityGroup,
    Rule,
    Block,
    EipPool,
    Eip,
    NatGateway,
    Snat,
    Dnat,
    LoadBalancer,
    LbListener,
    LbBackend,
}

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum CreateCmd {
    /// Register a hypervisor host (its VTEP).
    Host(HostArgs),
    /// A tenant network; the controller allocates its ID and VNI.
    Vpc(VpcArgs),
    /// A subnet (vSwitch) inside a VPC.
    Subnet(SubnetArgs),
    /// A VM's network interface; IP and MAC are allocated when not given.
    Nic(NicArgs),
    /// A custom route of a VPC's route table.
    Route(RouteArgs),
    /// Request a peering between two VPCs (pending until accepted).
    Peering(PeeringArgs),
    /// A security group of a VPC (rules with -f, or added with `create rule`).
    #[command(name = "security-group", alias = "sg")]
    SecurityGroup(SecurityGroupArgs),
    /// A rule of a security group.
    Rule(RuleArgs),
    /// Block a prefix on every host (the operator blocklist).
    Block(BlockArgs),
    /// Public IPv4 ranges EIPs are allocated from (operator).
    #[command(name = "eip-pool")]
    EipPool(EipPoolArgs),
    /// Allocate an elastic IP from a pool.
    Eip(EipArgs),
    /// A NAT gateway in a VPC's subnet.
    #[command(name = "nat-gateway")]
    NatGateway(NatGatewayArgs),
    /// A SNAT entry of a NAT gateway: a source to some of its EIPs.
    Snat(SnatArgs),
    /// A DNAT entry of a NAT gateway: (EIP, protocol, port) to a private address.
    Dnat(DnatArgs),
}

#[derive(Debug, Args)]
pub struct HostArgs {
    /// Read the HostSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE",
          conflicts_with_all = ["name", "underlay_ip", "underlay_ifname", "router_mac", "underlay_mtu", "public_gateway"])]
    pub file: Option<PathBuf>,
    /// The host's name (its ID).
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// The host's VTEP address.
    #[arg(long, required_unless_present = "file")]
    pub underlay_ip: Option<String>,
    /// The host's interface facing the fabric.
    #[arg(long, required_unless_present = "file")]
    pub underlay_ifname: Option<String>,
    /// Default: derived from the name.
    #[arg(long)]
    pub router_mac: Option<String>,
    #[arg(long)]
    pub underlay_mtu: Option<u32>,
    /// The fabric's border router (underlay address) for NATed Internet traffic.
    #[arg(long)]
    pub public_gateway: Option<String>,
    /// Create or update (PUT) instead of refusing an existing host.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct VpcArgs {
    /// Read the VpcSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["name", "cidr"])]
    pub file: Option<PathBuf>,
    /// Default: the allocated ID.
    #[arg(long)]
    pub name: Option<String>,
    /// IPv4 CIDR, /8 to /28.
    #[arg(long, required_unless_present = "file")]
    pub cidr: Option<String>,
}

#[derive(Debug, Args)]
pub struct SubnetArgs {
    /// Read the SubnetSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["vpc", "name", "cidr"])]
    pub file: Option<PathBuf>,
    /// VPC ID or name.
    #[arg(long, required_unless_present = "file")]
    pub vpc: Option<String>,
    /// Default: the allocated ID; unique within the VPC.
    #[arg(long)]
    pub name: Option<String>,
    /// Inside the VPC's CIDR.
    #[arg(long, required_unless_present = "file")]
    pub cidr: Option<String>,
}

#[derive(Debug, Args)]
pub struct NicArgs {
    /// Read the NicSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE",
          conflicts_with_all = ["name", "vpc", "subnet", "host", "ifname", "ip", "mac", "source_check", "security_groups"])]
    pub file: Option<PathBuf>,
    /// Default: the allocated ID.
    #[arg(long)]
    pub name: Option<String>,
    /// VPC ID or name.
    #[arg(long, required_unless_present = "file")]
    pub vpc: Option<String>,
    /// Subnet ID, or its name within the VPC.
    #[arg(long, required_unless_present = "file")]
    pub subnet: Option<String>,
    /// The host the VM runs on.
    #[arg(long, required_unless_present = "file")]
    pub host: Option<String>,
    /// The VM's interface on that host.
    #[arg(long, required_unless_present = "file")]
    pub ifname: Option<String>,
    /// Default: the lowest free address of the subnet.
    #[arg(long)]
    pub ip: Option<String>,
    /// Default: allocated (02:73:6c:...).
    #[arg(long)]
    pub mac: Option<String>,
    /// Drop packets not sourced from the NIC's own address (default true; false for appliances).
    #[arg(long, value_name = "BOOL")]
    pub source_check: Option<bool>,
    /// 1 to 5 groups of the VPC, comma-separated (default: the VPC's `default` group).
    #[arg(long, value_name = "GROUPS", value_delimiter = ',')]
    pub security_groups: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// Read the RouteSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["vpc", "destination", "next_hop"])]
    pub file: Option<PathBuf>,
    /// VPC ID or name.
    #[arg(long, required_unless_present = "file")]
    pub vpc: Option<String>,
    /// Destination CIDR.
    #[arg(long, required_unless_present = "file")]
    pub destination: Option<String>,
    /// nic:<nic>, peering:<peering>, nat-gateway:<gateway> or blackhole.
    #[arg(long, required_unless_present = "file", value_parser = parse_next_hop)]
    pub next_hop: Option<NextHop>,
    /// Create or replace (PUT) instead of refusing an existing (VPC, destination).
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct PeeringArgs {
    /// Read the PeeringSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["name", "vpc", "peer_vpc"])]
    pub file: Option<PathBuf>,
    /// Default: the allocated ID.
    #[arg(long)]
    pub name: Option<String>,
    /// Requester VPC (ID or name).
    #[arg(long, required_unless_present = "file")]
    pub vpc: Option<String>,
    /// Accepter VPC (ID or name).
    #[arg(long, required_unless_present = "file")]
    pub peer_vpc: Option<String>,
}

#[derive(Debug, Args)]
pub struct SecurityGroupArgs {
    /// Read the SecurityGroupSpec (with its rules) from this YAML/JSON file (`-` for stdin).
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["vpc", "name", "description"])]
    pub file: Option<PathBuf>,
    /// VPC ID or name.
    #[arg(long, required_unless_present = "file")]
    pub vpc: Option<String>,
    /// Default: the allocated ID; unique within the VPC.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    /// The group the rule is added to (ID, or name with --vpc).
    #[arg(long, visible_alias = "sg")]
    pub security_group: String,
    /// The VPC a group name is looked up in.
    #[arg(long)]
    pub vpc: Option<String>,
    /// Read the rule (SgRuleSpec) from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE",
          conflicts_with_all = ["direction", "protocol", "ports", "icmp_type", "icmp_code", "cidr", "group", "action", "priority", "description"])]
    pub file: Option<PathBuf>,
    /// Traffic to the NIC (ingress) or from it (egress).
    #[arg(long, required_unless_present = "file", value_parser = ["ingress", "egress"])]
    pub direction: Option<String>,
    /// IP protocol (`all`: every protocol, no ports or ICMP type).
    #[arg(long, required_unless_present = "file", value_parser = ["tcp", "udp", "icmp", "all"])]
    pub protocol: Option<String>,
    /// tcp/udp: 80 or 8000-8100 (default: every port).
    #[arg(long)]
    pub ports: Option<String>,
    /// icmp: the type (default: every type).
    #[arg(long)]
    pub icmp_type: Option<i64>,
    /// icmp with a type: the code (default: every code).
    #[arg(long)]
    pub icmp_code: Option<i64>,
    /// Remote: a CIDR.
    #[arg(long, required_unless_present_any = ["file", "group"], conflicts_with = "group")]
    pub cidr: Option<String>,
    /// Remote: a security group of the same VPC (its members' addresses).
    #[arg(long)]
    pub group: Option<String>,
    /// What a matching first packet gets (later packets follow the connection).
    #[arg(long, required_unless_present = "file", value_parser = ["allow", "deny"])]
    pub action: Option<String>,
    /// 1 (evaluated first) to 65535; deny wins a tie.
    #[arg(long, required_unless_present = "file")]
    pub priority: Option<i64>,
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    /// Read the BlocklistSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["prefix", "applies_to", "description"])]
    pub file: Option<PathBuf>,
    /// IPv4 prefix, /1 to /32.
    #[arg(long, required_unless_present = "file")]
    pub prefix: Option<String>,
    /// Which address of a packet it is matched against (default both).
    #[arg(long, value_parser = ["source", "destination", "both"])]
    pub applies_to: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
}

/// One resource, as `get` and `delete` name it.
#[derive(Debug, Subcommand)]
pub enum ResourceRef {
    /// A host, by name.
    Host { name: String },
    /// A VPC.
    Vpc {
        /// ID or name.
        vpc: String,
    },
    /// A subnet.
    Subnet {
        /// ID, or name with --vpc.
        subnet: String,
        /// The VPC a subnet name is looked up in.
        #[arg(long)]
        vpc: Option<String>,
    },
    /// A NIC.
    Nic {
        /// ID or name.
        nic: String,
    },
    /// A custom route, by VPC and destination.
    Route {
        /// Destination CIDR.
        destination: String,
        /// VPC ID or name.
        #[arg(long)]
        vpc: String,
    },
    /// A peering.
    Peering {
        /// ID or name.
        peering: String,
    },
    /// A security group (with its rules).
    #[command(name = "security-group", alias = "sg")]
    SecurityGroup {
        /// ID, or name (with --vpc unless unique).
        group: String,
        /// The VPC a group name is looked up in.
        #[arg(long)]
        vpc: Option<String>,
    },
    /// A blocked prefix.
    Block {
        /// The prefix (CIDR).
        prefix: String,
    },
    /// An EIP pool.
    #[command(name = "eip-pool")]
    EipPool {
        /// ID or name.
        pool: String,
    },
    /// An elastic IP.
    Eip {
        /// ID, name or address.
        eip: String,
    },
    /// A NAT gateway (with its EIPs and entries).
    #[command(name = "nat-gateway")]
    NatGateway {
        /// ID or name.
        gateway: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeleteCmd {
    #[command(flatten)]
    One(ResourceRef),
    /// A rule of a security group.
    Rule {
        /// Rule ID (sgr-<n>).
        rule: String,
        /// Its group (ID, or name with --vpc).
        #[arg(long, visible_alias = "sg")]
        security_group: String,
        /// The VPC a group name is looked up in.
        #[arg(long)]
        vpc: Option<String>,
    },
    /// A SNAT entry of a NAT gateway.
    Snat {
        /// Entry ID (snat-<n>).
        entry: String,
        /// Its gateway (ID or name).
        #[arg(long)]
        nat_gateway: String,
    },
    /// A DNAT entry of a NAT gateway.
    Dnat {
        /// Entry ID (dnat-<n>).
        entry: String,
        /// Its gateway (ID or name).
        #[arg(long)]
        nat_gateway: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GetCmd {
    #[command(flatten)]
    One(ResourceRef),
    /// A VPC's whole route table: system routes (one per subnet) and custom routes.
    RouteTable {
        /// VPC ID or name.
        vpc: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ListCmd {
    #[command(alias = "host")]
    Hosts,
    #[command(alias = "vpc")]
    Vpcs,
    #[command(alias = "subnet")]
    Subnets {
        /// Only this VPC's (ID or name).
        #[arg(long)]
        vpc: Option<String>,
    },
    #[command(alias = "nic")]
    Nics {
        /// Only this VPC's (ID or name).
        #[arg(long)]
        vpc: Option<String>,
        /// Only those on this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Custom routes (see `get route-table` for the whole table).
    #[command(alias = "route")]
    Routes {
        /// Only this VPC's (ID or name).
        #[arg(long)]
        vpc: Option<String>,
    },
    #[command(alias = "peering")]
    Peerings,
    #[command(name = "security-groups", aliases = ["security-group", "sgs", "sg"])]
    SecurityGroups {
        /// Only this VPC's (ID or name).
        #[arg(long)]
        vpc: Option<String>,
    },
    /// A security group's rules.
    #[command(alias = "rule")]
    Rules {
        /// The group (ID, or name with --vpc).
        #[arg(long, visible_alias = "sg")]
        security_group: String,
        /// The VPC a group name is looked up in.
        #[arg(long)]
        vpc: Option<String>,
    },
    /// The operator blocklist.
    #[command(aliases = ["blocks", "block"])]
    Blocklist,
    #[command(name = "eip-pools", alias = "eip-pool")]
    EipPools,
    #[command(alias = "eip")]
    Eips,
    #[command(name = "nat-gateways", alias = "nat-gateway")]
    NatGateways {
        /// Only this VPC's (ID or name).
        #[arg(long)]
        vpc: Option<String>,
    },
    /// A NAT gateway's SNAT entries.
    Snat {
        /// The gateway (ID or name).
        #[arg(long)]
        nat_gateway: String,
    },
    /// A NAT gateway's DNAT entries.
    Dnat {
        /// The gateway (ID or name).
        #[arg(long)]
        nat_gateway: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AcceptCmd {
    /// Accept a pending peering: it starts carrying what the routes send into it.
    Peering {
        /// ID or name.
        peering: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UpdateCmd {
    /// Move a NIC to another host or interface, switch its source check, or replace its
    /// security groups.
    Nic {
        /// ID or name.
        nic: String,
        #[command(flatten)]
        change: NicChange,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct NicChange {
    /// The host the VM now runs on.
    #[arg(long)]
    pub host: Option<String>,
    /// The VM's interface on that host.
    #[arg(long)]
    pub ifname: Option<String>,
    #[arg(long, value_name = "BOOL")]
    pub source_check: Option<bool>,
    /// Replace its groups: 1 to 5 of its VPC, comma-separated.
    #[arg(long, value_name = "GROUPS", value_delimiter = ',')]
    pub security_groups: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The topology (YAML): hosts, vpcs (with subnets, routes and security groups), nics,
    /// peerings, blocklist, eip_pools, eips, nat_gateways (with snat and dnat).
    #[arg(short, long, value_name = "FILE")]
    pub file: PathBuf,
}

/// `nic:<nic>`, `peering:<peering>`, `nat-gateway:<gateway>` or `blackhole`.
pub fn parse_next_hop(s: &str) -> Result<NextHop, String> {
    let bad = || {
        format!("{s:?}: expected nic:<nic>, peering:<peering>, nat-gateway:<gateway> or blackhole")
    };
    if s == "blackhole" {
        return Ok(NextHop::Blackhole);
    }
    let (kind, target) = s.split_once(':').ok_or_else(bad)?;
    if target.is_empty() {
        return Err(bad());
    }
    match kind {
        "nic" => Ok(NextHop::Nic { nic: target.into() }),
        "peering" => Ok(NextHop::Peering {
            peering: target.into(),
        }),
        "nat-gateway" => Ok(NextHop::NatGateway {
            nat_gateway: target.into(),
        }),
        _ => Err(bad()),
    }
}

/// How tables show a next hop: the same syntax `--next-hop` takes.
pub fn next_hop_text(h: &NextHop) -> String {
    match h {
        NextHop::Nic { nic } => format!("nic:{nic}"),
        NextHop::Peering { peering } => format!("peering:{peering}"),
        NextHop::Blackhole => "blackhole".into(),
        NextHop::NatGateway { nat_gateway } => format!("nat-gateway:{nat_gateway}"),
    }
}

// ---------------------------------------------------------------------------------------
// Spec files
// ---------------------------------------------------------------------------------------

/// Parses `text` (YAML, so JSON too) as a `T`; errors name the file and, for unknown or
/// missing fields, the field and its path.
pub fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T> {
    serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", file_name(file)))
}

fn file_name(file: &Path) -> String {
    if file == Path::new("-") {
        "<stdin>".into()
    } else {
        file.display().to_string()
    }
}

/// Reads and parses a spec file (`-`: stdin).
pub fn read_yaml<T: DeserializeOwned>(file: &Path) -> Result<T> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the spec from stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    parse_yaml(file, &text)
}

/// A word clap has checked against the enum's spellings, as the enum.
pub(crate) fn word<T: DeserializeOwned>(w: &Option<String>) -> T {
    serde_json::from_value(serde_json::Value::String(w.clone().unwrap_or_default()))
        .expect("clap checked the value")
}

pub(crate) fn json(v: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).context("encoding the request body")
}

/// The spec from `-f`, or from the flags (clap has checked that the required ones are there).
pub(crate) fn spec<T: DeserializeOwned>(
    file: &Option<PathBuf>,
    from_flags: impl FnOnce() -> T,
) -> Result<T> {
    match file {
        Some(f) => read_yaml(f),
        None => Ok(from_flags()),
    }
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub(crate) fn req(
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
    expect: Expect,
) -> ApiRequest {
    ApiRequest {
        method,
        path,
        body,
        expect,
    }
}

// ---------------------------------------------------------------------------------------
// Arguments -> request
// ---------------------------------------------------------------------------------------

pub fn create(cmd: &CreateCmd) -> Result<ApiRequest> {
    let some = |o: &Option<String>| o.clone().unwrap_or_default();
    Ok(match cmd {
        CreateCmd::Host(a) => {
            let s: HostSpec = spec(&a.file, || HostSpec {
                name: some(&a.name),
                underlay_ip: some(&a.underlay_ip),
                underlay_ifname: some(&a.underlay_ifname),
                router_mac: a.router_mac.clone(),
                underlay_mtu: a.underlay_mtu,
                public_gateway: a.public_gateway.clone(),
            })?;
            if a.replace {
                let path = format!("/v1/hosts/{}", encode(&s.name));
                req(Method::PUT, path, Some(json(&s)?), Expect::One(Kind::Host))
            } else {
                let path = "/v1/hosts".into();
                req(Method::POST, path, Some(json(&s)?), Expect::One(Kind::Host))
            }
        }
        CreateCmd::Vpc(a) => {
            let s: VpcSpec = spec(&a.file, || VpcSpec {
                name: a.name.clone(),
                cidr: some(&a.cidr),
            })?;
            req(
                Method::POST,
                "/v1/vpcs".into(),
                Some(json(&s)?),
                Expect::One(Kind::Vpc),
            )
        }
        CreateCmd::Subnet(a) => {
            let s: SubnetSpec = spec(&a.file, || SubnetSpec {
                vpc: some(&a.vpc),
                name: a.name.clone(),
                cidr: some(&a.cidr),
            })?;
            req(
                Method::POST,
                "/v1/subnets".into(),
                Some(json(&s)?),
                Expect::One(Kind::Subnet),
            )
        }
        CreateCmd::Nic(a) => {
            let s: NicSpec = spec(&a.file, || NicSpec {
                name: a.name.clone(),
                vpc: some(&a.vpc),
                subnet: some(&a.subnet),
                host: some(&a.host),
                ifname: some(&a.ifname),
                ip: a.ip.clone(),
                mac: a.mac.clone(),
                source_check: a.source_check,
                security_groups: a.security_groups.clone(),
            })?;
            req(
                Method::POST,
                "/v1/nics".into(),
                Some(json(&s)?),
                Expect::One(Kind::Nic),
            )
        }
        CreateCmd::Route(a) => {
            let s: RouteSpec = spec(&a.file, || RouteSpec {
                vpc: some(&a.vpc),
                destination: some(&a.destination),
                next_hop: a.next_hop.clone().unwrap_or(NextHop::Blackhole),
            })?;
            let method = if a.replace { Method::PUT } else { Method::POST };
            req(
                method,
                "/v1/routes".into(),
                Some(json(&s)?),
                Expect::One(Kind::Route),
            )
        }
        CreateCmd::Peering(a) => {
            let s: PeeringSpec = spec(&a.file, || PeeringSpec {
                name: a.name.clone(),
                vpc: some(&a.vpc),
                peer_vpc: some(&a.peer_vpc),
            })?;
            req(
                Method::POST,
                "/v1/peerings".into(),
                Some(json(&s)?),
                Expect::One(Kind::Peering),
            )
        }
        CreateCmd::SecurityGroup(a) => {
            let s: SecurityGroupSpec = spec(&a.file, || SecurityGroupSpec {
                vpc: some(&a.vpc),
                name: a.name.clone(),
                description: a.description.clone(),
                rules: vec![],
            })?;
            req(
                Method::POST,
                "/v1/security-groups".into(),
                Some(json(&s)?),
                Expect::One(Kind::SecurityGroup),
            )
        }
        CreateCmd::Rule(a) => {
            let s: SgRuleSpec = spec(&a.file, || SgRuleSpec {
                direction: word::<Direction>(&a.direction),
                protocol: word::<Protocol>(&a.protocol),
                ports: a.ports.clone(),
                icmp_type: a.icmp_type,
                icmp_code: a.icmp_code,
                cidr: a.cidr.clone(),
                group: a.group.clone(),
                action: word::<Action>(&a.action),
                priority: a.priority.unwrap_or_default(),
                description: a.description.clone(),
            })?;
            req(
                Method::POST,
                format!(
                    "{}/rules{}",
                    group_path(&a.security_group),
                    query(&[("vpc", &a.vpc)])
                ),
                Some(json(&s)?),
                Expect::One(Kind::Rule),
            )
        }
        CreateCmd::Block(a) => {
            let s: BlocklistSpec = spec(&a.file, || BlocklistSpec {
                prefix: some(&a.prefix),
                applies_to: a
                    .applies_to
                    .as_ref()
                    .map(|_| word::<BlockAppliesTo>(&a.applies_to)),
                description: a.description.clone(),
            })?;
            req(
                Method::POST,
                "/v1/blocklist".into(),
                Some(json(&s)?),
                Expect::One(Kind::Block),
            )
        }
        CreateCmd::EipPool(a) => nat::create_eip_pool(a)?,
        CreateCmd::Eip(a) => nat::create_eip(a)?,
        CreateCmd::NatGateway(a) => nat::create_nat_gateway(a)?,
        CreateCmd::Snat(a) => nat::create_snat(a)?,
        CreateCmd::Dnat(a) => nat::create_dnat(a)?,
    })
}

fn group_path(group: &str) -> String {
    format!("/v1/security-groups/{}", encode(group))
}

/// The path of one resource, its kind, and how `delete` reports it.
fn resource_path(r: &ResourceRef) -> (String, Kind, String) {
    match r {
        ResourceRef::Host { name } => (
            format!("/v1/hosts/{}", encode(name)),
            Kind::Host,
            format!("host/{name}"),
        ),
        ResourceRef::Vpc { vpc } => (
            format!("/v1/vpcs/{}", encode(vpc)),
            Kind::Vpc,
            format!("vpc/{vpc}"),
        ),
        ResourceRef::Subnet { subnet, vpc } => (
            format!("/v1/subnets/{}{}", encode(subnet), query(&[("vpc", vpc)])),
            Kind::Subnet,
            match vpc {
                Some(v) => format!("subnet/{v}/{subnet}"),
                None => format!("subnet/{subnet}"),
            },
        ),
        ResourceRef::Nic { nic } => (
            format!("/v1/nics/{}", encode(nic)),
            Kind::Nic,
            format!("nic/{nic}"),
        ),
        ResourceRef::Route { destination, vpc } => (
            format!("/v1/vpcs/{}/routes/{}", encode(vpc), encode(destination)),
            Kind::Route,
            format!("route/{vpc}:{destination}"),
        ),
        ResourceRef::Peering { peering } => (
            format!("/v1/peerings/{}", encode(peering)),
            Kind::Peering,
            format!("peering/{peering}"),
        ),
        ResourceRef::SecurityGroup { group, vpc } => (
            format!("{}{}", group_path(group), query(&[("vpc", vpc)])),
            Kind::SecurityGroup,
            match vpc {
                Some(v) => format!("security-group/{v}/{group}"),
                None => format!("security-group/{group}"),
            },
        ),
        ResourceRef::Block { prefix } => (
            format!("/v1/blocklist/{}", encode(prefix)),
            Kind::Block,
            format!("block/{prefix}"),
        ),
        ResourceRef::EipPool { pool } => (
            format!("/v1/eip-pools/{}", encode(pool)),
            Kind::EipPool,
            format!("eip-pool/{pool}"),
        ),
        ResourceRef::Eip { eip } => (nat::eip_path(eip), Kind::Eip, format!("eip/{eip}")),
        ResourceRef::NatGateway { gateway } => (
            nat::gateway_path(gateway),
            Kind::NatGateway,
            format!("nat-gateway/{gateway}"),
        ),
    }
}

pub fn get(cmd: &GetCmd) -> ApiRequest {
    match cmd {
        GetCmd::One(r) => {
            let (path, kind, _) = resource_path(r);
            req(Method::GET, path, None, Expect::One(kind))
        }
        GetCmd::RouteTable { vpc } => req(
            Method::GET,
            format!("/v1/vpcs/{}/route-table", encode(vpc)),
            None,
            Expect::RouteTable,
        ),
    }
}

pub fn delete(cmd: &DeleteCmd) -> ApiRequest {
    let (path, what) = match cmd {
        DeleteCmd::One(r) => {
            let (path, _, what) = resource_path(r);
            (path, what)
        }
        DeleteCmd::Rule {
            rule,
            security_group,
            vpc,
        } => (
            format!(
                "{}/rules/{}{}",
                group_path(security_group),
                encode(rule),
                query(&[("vpc", vpc)])
            ),
            format!("rule/{security_group}:{rule}"),
        ),
        DeleteCmd::Snat { entry, nat_gateway } => (
            format!("{}/snat/{}", nat::gateway_path(nat_gateway), encode(entry)),
            format!("snat/{nat_gateway}:{entry}"),
        ),
        DeleteCmd::Dnat { entry, nat_gateway } => (
            format!("{}/dnat/{}", nat::gateway_path(nat_gateway), encode(entry)),
            format!("dnat/{nat_gateway}:{entry}"),
        ),
    };
    req(Method::DELETE, path, None, Expect::Deleted(what))
}

pub fn list(cmd: &ListCmd) -> ApiRequest {
    let (path, kind) = match cmd {
        ListCmd::Hosts => ("/v1/hosts".to_string(), Kind::Host),
        ListCmd::Vpcs => ("/v1/vpcs".to_string(), Kind::Vpc),
        ListCmd::Subnets { vpc } => (
            format!("/v1/subnets{}", query(&[("vpc", vpc)])),
            Kind::Subnet,
        ),
        ListCmd::Nics { vpc, host } => (
            format!("/v1/nics{}", query(&[("vpc", vpc), ("host", host)])),
            Kind::Nic,
        ),
        ListCmd::Routes { vpc } => (format!("/v1/routes{}", query(&[("vpc", vpc)])), Kind::Route),
        ListCmd::Peerings => ("/v1/peerings".to_string(), Kind::Peering),
        ListCmd::SecurityGroups { vpc } => (
            format!("/v1/security-groups{}", query(&[("vpc", vpc)])),
            Kind::SecurityGroup,
        ),
        ListCmd::Rules {
            security_group,
            vpc,
        } => {
            let path = format!("{}{}", group_path(security_group), query(&[("vpc", vpc)]));
            return req(Method::GET, path, None, Expect::Rules);
        }
        ListCmd::Blocklist => ("/v1/blocklist".to_string(), Kind::Block),
        ListCmd::EipPools => ("/v1/eip-pools".to_string(), Kind::EipPool),
        ListCmd::Eips => ("/v1/eips".to_string(), Kind::Eip),
        ListCmd::NatGateways { vpc } => (
            format!("/v1/nat-gateways{}", query(&[("vpc", vpc)])),
            Kind::NatGateway,
        ),
        ListCmd::Snat { nat_gateway } => (
            format!("{}/snat", nat::gateway_path(nat_gateway)),
            Kind::Snat,
        ),
        ListCmd::Dnat { nat_gateway } => (
            format!("{}/dnat", nat::gateway_path(nat_gateway)),
            Kind::Dnat,
        ),
    };
    req(Method::GET, path, None, Expect::List(kind))
}

pub fn accept(cmd: &AcceptCmd) -> ApiRequest {
    let AcceptCmd::Peering { peering } = cmd;
    req(
        Method::POST,
        format!("/v1/peerings/{}/accept", encode(peering)),
        None,
        Expect::One(Kind::Peering),
    )
}

pub fn update(cmd: &UpdateCmd) -> Result<ApiRequest> {
    let UpdateCmd::Nic { nic, change } = cmd;
    let body = NicUpdate {
        host: change.host.clone(),
        ifname: change.ifname.clone(),
        source_check: change.source_check,
        security_groups: change.security_groups.clone(),
    };
    Ok(req(
        Method::PATCH,
        format!("/v1/nics/{}", encode(nic)),
        Some(json(&body)?),
        Expect::One(Kind::Nic),
    ))
}

pub fn apply(a: &ApplyArgs) -> Result<ApiRequest> {
    let topology: Topology = read_yaml(&a.file)?;
    Ok(req(
        Method::POST,
        "/v1/topology".into(),
        Some(json(&topology)?),
        Expect::Apply,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_parse_and_print_the_same_way() {
        for (text, hop) in [
            ("nic:fw0", NextHop::Nic { nic: "fw0".into() }),
            (
                "peering:pcx-1",
                NextHop::Peering {
                    peering: "pcx-1".into(),
                },
            ),
            ("blackhole", NextHop::Blackhole),
            (
                "nat-gateway:gw",
                NextHop::NatGateway {
                    nat_gateway: "gw".into(),
                },
            ),
        ] {
            assert_eq!(parse_next_hop(text), Ok(hop.clone()));
            assert_eq!(next_hop_text(&hop), text);
        }
        for bad in ["", "nic:", "nat:x", "fw0", "blackhole:x"] {
            let e = parse_next_hop(bad).unwrap_err();
            assert!(
                e.contains(
                    "expected nic:<nic>, peering:<peering>, nat-gateway:<gateway> or blackhole"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn query_values_are_encoded_and_absent_ones_left_out() {
        assert_eq!(query(&[("vpc", &None)]), "");
        assert_eq!(
            query(&[
                ("vpc", &Some("a b".into())),
                ("host", &None),
                ("x", &Some("h1".into()))
            ]),
            "?vpc=a%20b&x=h1"
        );
    }

    #[test]
    fn unknown_spec_fields_name_the_file_and_field() {
        let e = parse_yaml::<VpcSpec>(
            Path::new("vpc.yaml"),
            "name: a\ncidr: 10.0.0.0/16\ncdir: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("vpc.yaml: "), "{e}");
        assert!(e.contains("unknown field `cdir`"), "{e}");
        let e = parse_yaml::<Topology>(
            Path::new("t.yaml"),
            "vpcs:\n  - name: a\n    cidr: 10.0.0.0/16\n    subnets:\n      - name: s\n        cidr: 10.0.1.0/24\n        zone: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.yaml: "), "{e}");
        assert!(e.contains("vpcs[0].subnets[0]"), "{e}");
        assert!(e.contains("unknown field `zone`"), "{e}");
    }

    #[test]
    fn json_spec_files_parse_too() {
        let s: RouteSpec = parse_yaml(
            Path::new("r.json"),
            r#"{"vpc": "a", "destination": "0.0.0.0/0", "next_hop": {"type": "nic", "nic": "fw0"}}"#,
        )
        .unwrap();
        assert_eq!(s.next_hop, NextHop::Nic { nic: "fw0".into() });
    }
}
