//! EIP pools, elastic IPs and NAT gateways: their `create` arguments and the verbs only
//! they have (`bind|unbind eip`, `attach|detach eip`), mapped to one API request each.
//! SNAT and DNAT entries are resources of their gateway: `create snat|dnat --nat-gateway G
//! ...`, `list snat|dnat --nat-gateway G`, `delete snat|dnat <id> --nat-gateway G`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use sluice_dataplane::{
    client::{encode, Method},
    intent::{DnatSpec, EipAttach, EipBind, EipPoolSpec, EipSpec, NatGatewaySpec, SnatSpec},
};

use crate::resource::{json, req, spec, word, ApiRequest, Expect, Kind};

#[derive(Debug, Args)]
pub struct EipPoolArgs {
    /// Read the EipPoolSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["name", "cidrs", "description"])]
    pub file: Option<PathBuf>,
    /// Default: the allocated ID.
    #[arg(long)]
    pub name: Option<String>,
    /// Public IPv4 ranges, /16 to /32, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "file")]
    pub cidrs: Vec<String>,
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct EipArgs {
    /// Read the EipSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["name", "pool", "address", "nic"])]
    pub file: Option<PathBuf>,
    /// Default: the allocated ID.
    #[arg(long)]
    pub name: Option<String>,
    /// Pool ID or name (default: the pool holding --address, or the first with room).
    #[arg(long)]
    pub pool: Option<String>,
    /// An address inside a pool (default: the lowest free).
    #[arg(long)]
    pub address: Option<String>,
    /// Bind it to this NIC at once.
    #[arg(long)]
    pub nic: Option<String>,
}

#[derive(Debug, Args)]
pub struct NatGatewayArgs {
    /// Read the NatGatewaySpec (with SNAT/DNAT entries) from this YAML/JSON file.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["name", "vpc", "subnet", "eips"])]
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
    /// Free EIPs to attach (ID, name or address), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub eips: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SnatArgs {
    /// The gateway (ID or name).
    #[arg(long)]
    pub nat_gateway: String,
    /// Read the SnatSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["subnet", "cidr", "nic", "eips"])]
    pub file: Option<PathBuf>,
    /// Source: a subnet of the gateway's VPC.
    #[arg(long, conflicts_with_all = ["cidr", "nic"], required_unless_present_any = ["file", "cidr", "nic"])]
    pub subnet: Option<String>,
    /// Source: a CIDR inside the gateway's VPC.
    #[arg(long, conflicts_with = "nic")]
    pub cidr: Option<String>,
    /// Source: a NIC of the gateway's VPC.
    #[arg(long)]
    pub nic: Option<String>,
    /// The gateway's EIPs the source leaves from, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "file")]
    pub eips: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DnatArgs {
    /// The gateway (ID or name).
    #[arg(long)]
    pub nat_gateway: String,
    /// Read the DnatSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE",
          conflicts_with_all = ["eip", "protocol", "public_port", "private_ip", "private_port"])]
    pub file: Option<PathBuf>,
    /// One of the gateway's EIPs (ID, name or address).
    #[arg(long, required_unless_present = "file")]
    pub eip: Option<String>,
    /// `any`: tcp and udp.
    #[arg(long, required_unless_present = "file", value_parser = ["tcp", "udp", "any"])]
    pub protocol: Option<String>,
    #[arg(long, required_unless_present = "file")]
    pub public_port: Option<i64>,
    /// An address in one of the VPC's subnets.
    #[arg(long, required_unless_present = "file")]
    pub private_ip: Option<String>,
    /// Default: the public port.
    #[arg(long)]
    pub private_port: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum BindCmd {
    /// Bind a free EIP to a NIC (1:1, every port); the VM keeps running.
    Eip {
        /// ID, name or address.
        eip: String,
        /// NIC ID or name.
        #[arg(long)]
        nic: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UnbindCmd {
    /// Unbind an EIP from its NIC (it stays allocated, free).
    Eip {
        /// ID, name or address.
        eip: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AttachCmd {
    /// Attach a free EIP to a NAT gateway.
    Eip {
        /// ID, name or address.
        eip: String,
        /// Gateway ID or name.
        #[arg(long)]
        nat_gateway: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DetachCmd {
    /// Detach an EIP no SNAT or DNAT entry uses from its NAT gateway.
    Eip {
        /// ID, name or address.
        eip: String,
        /// Gateway ID or name.
        #[arg(long)]
        nat_gateway: String,
    },
}

pub fn eip_path(eip: &str) -> String {
    format!("/v1/eips/{}", encode(eip))
}

pub fn gateway_path(gw: &str) -> String {
    format!("/v1/nat-gateways/{}", encode(gw))
}

fn post(path: String, body: serde_json::Value, kind: Kind) -> ApiRequest {
    req(Method::POST, path, Some(body), Expect::One(kind))
}

pub fn create_eip_pool(a: &EipPoolArgs) -> Result<ApiRequest> {
    let s: EipPoolSpec = spec(&a.file, || EipPoolSpec {
        name: a.name.clone(),
        cidrs: a.cidrs.clone(),
        description: a.description.clone(),
    })?;
    Ok(post("/v1/eip-pools".into(), json(&s)?, Kind::EipPool))
}

pub fn create_eip(a: &EipArgs) -> Result<ApiRequest> {
    let s: EipSpec = spec(&a.file, || EipSpec {
        name: a.name.clone(),
        pool: a.pool.clone(),
        address: a.address.clone(),
        nic: a.nic.clone(),
    })?;
    Ok(post("/v1/eips".into(), json(&s)?, Kind::Eip))
}

pub fn create_nat_gateway(a: &NatGatewayArgs) -> Result<ApiRequest> {
    let s: NatGatewaySpec = spec(&a.file, || NatGatewaySpec {
        name: a.name.clone(),
        vpc: a.vpc.clone().unwrap_or_default(),
        subnet: a.subnet.clone().unwrap_or_default(),
        eips: a.eips.clone(),
        snat: vec![],
        dnat: vec![],
    })?;
    Ok(post("/v1/nat-gateways".into(), json(&s)?, Kind::NatGateway))
}

pub fn create_snat(a: &SnatArgs) -> Result<ApiRequest> {
    let s: SnatSpec = spec(&a.file, || SnatSpec {
        subnet: a.subnet.clone(),
        cidr: a.cidr.clone(),
        nic: a.nic.clone(),
        eips: a.eips.clone(),
    })?;
    let path = format!("{}/snat", gateway_path(&a.nat_gateway));
    Ok(post(path, json(&s)?, Kind::Snat))
}

pub fn create_dnat(a: &DnatArgs) -> Result<ApiRequest> {
    let s: DnatSpec = spec(&a.file, || DnatSpec {
        eip: a.eip.clone().unwrap_or_default(),
        protocol: word(&a.protocol),
        public_port: a.public_port.unwrap_or_default(),
        private_ip: a.private_ip.clone().unwrap_or_default(),
        private_port: a.private_port,
    })?;
    let path = format!("{}/dnat", gateway_path(&a.nat_gateway));
    Ok(post(path, json(&s)?, Kind::Dnat))
}

pub fn bind(cmd: &BindCmd) -> Result<ApiRequest> {
    let BindCmd::Eip { eip, nic } = cmd;
    let body = json(&EipBind { nic: nic.clone() })?;
    Ok(post(format!("{}/bind", eip_path(eip)), body, Kind::Eip))
}

pub fn unbind(cmd: &UnbindCmd) -> ApiRequest {
    let UnbindCmd::Eip { eip } = cmd;
    let path = format!("{}/unbind", eip_path(eip));
    req(Method::POST, path, None, Expect::One(Kind::Eip))
}

pub fn attach(cmd: &AttachCmd) -> Result<ApiRequest> {
    let AttachCmd::Eip { eip, nat_gateway } = cmd;
    let body = json(&EipAttach { eip: eip.clone() })?;
    let path = format!("{}/eips", gateway_path(nat_gateway));
    Ok(post(path, body, Kind::NatGateway))
}

pub fn detach(cmd: &DetachCmd) -> ApiRequest {
    let DetachCmd::Eip { eip, nat_gateway } = cmd;
    let path = format!("{}/eips/{}", gateway_path(nat_gateway), encode(eip));
    req(Method::DELETE, path, None, Expect::One(Kind::NatGateway))
}
