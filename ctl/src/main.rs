//! `sluicectl`: the operator CLI for a running `sluiced`, speaking its HTTP API: the
//! daemon's status and counters, and the controller's intent (hosts, VPCs, subnets, NICs,
//! routes, peerings, security groups and their rules, the blocklist, EIP pools, EIPs, NAT
//! gateways and their SNAT/DNAT entries, load balancers with `sluicectl lb ...`), one
//! resource at a time or a whole topology with `apply -f`.
//!
//! Exit status: 0 done, 1 the request failed (the API's `field: reason` is printed, or
//! the address that could not be reached), 2 usage error.

mod lb;
mod nat;
mod render;
mod resource;
mod table;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_dataplane::{
    api::{StatsJson, StatusJson},
    client::{self, ApiAddr, JSON},
    config::DEFAULT_API,
};

use render::Output;
use resource::{
    AcceptCmd, ApiRequest, ApplyArgs, CreateCmd, DeleteCmd, Expect, GetCmd, ListCmd, UpdateCmd,
};

#[derive(Parser)]
#[command(
    name = "sluicectl",
    version,
    about = "Operate sluiced: its status and counters, and the cloud's intent"
)]
struct Cli {
    /// The daemon's API: unix:/path/to/api.sock or host:port.
    #[arg(long, global = true, env = "SLUICE_API", default_value = DEFAULT_API)]
    api: ApiAddr,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, pin directory, uptime and attached interfaces.
    Status,
    /// Packet and byte counters by reason.
    Stats,
    /// Create a resource from flags, or from a spec file with -f.
    #[command(subcommand)]
    Create(CreateCmd),
    /// Show one resource (by ID or name), or a VPC's route table.
    #[command(subcommand)]
    Get(GetCmd),
    /// List resources of one kind.
    #[command(subcommand, alias = "ls")]
    List(ListCmd),
    /// Delete a resource; refused, with the dependents, while others depend on it.
    #[command(subcommand)]
    Delete(DeleteCmd),
    /// Accept a pending peering.
    #[command(subcommand)]
    Accept(AcceptCmd),
    /// Change what may change on a resource.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// Create or update everything a topology file declares (never deletes); idempotent.
    Apply(ApplyArgs),
    /// Bind an EIP to a NIC.
    #[command(subcommand)]
    Bind(nat::BindCmd),
    /// Unbind an EIP from its NIC.
    #[command(subcommand)]
    Unbind(nat::UnbindCmd),
    /// Attach an EIP to a NAT gateway.
    #[command(subcommand)]
    Attach(nat::AttachCmd),
    /// Detach an EIP from a NAT gateway.
    #[command(subcommand)]
    Detach(nat::DetachCmd),
    /// Load balancers, their listeners and backends, and their backends' status.
    #[command(subcommand, name = "lb", alias = "load-balancer")]
    Lb(lb::LbCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicectl: error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluicectl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The intent request a command makes; `None` for the daemon's own status and stats.
fn intent_request(command: &Command) -> Result<Option<ApiRequest>> {
    Ok(Some(match command {
        Command::Status | Command::Stats => return Ok(None),
        Command::Create(c) => resource::create(c)?,
        Command::Get(c) => resource::get(c),
        Command::List(c) => resource::list(c),
        Command::Delete(r) => resource::delete(r),
        Command::Accept(c) => resource::accept(c),
        Command::Update(c) => resource::update(c)?,
        Command::Apply(a) => resource::apply(a)?,
        Command::Bind(c) => nat::bind(c)?,
        Command::Unbind(c) => nat::unbind(c),
        Command::Attach(c) => nat::attach(c)?,
        Command::Detach(c) => nat::detach(c),
        Command::Lb(c) => lb::request(c)?,
    }))
}

async fn run(cli: &Cli) -> Result<String> {
    if let Some(req) = intent_request(&cli.command)? {
        return call(&cli.api, &req, cli.output).await;
    }
    let path = match cli.command {
        Command::Status => "/v1/status",
        _ => "/v1/stats",
    };
    if cli.output != Output::Table {
        let value: serde_json::Value = client::get_json(&cli.api, path).await?;
        return Ok(render::document(&value, cli.output)?.unwrap_or_default());
    }
    Ok(match cli.command {
        Command::Status => table::status(&client::get_json::<StatusJson>(&cli.api, path).await?),
        _ => table::stats(&client::get_json::<StatsJson>(&cli.api, path).await?),
    })
}

/// Sends one intent request; an API error becomes the error (`field: reason`).
async fn call(api: &ApiAddr, req: &ApiRequest, output: Output) -> Result<String> {
    let body = match &req.body {
        Some(b) => Some((JSON, serde_json::to_vec(b)?)),
        None => None,
    };
    let resp = client::request(api, req.method.clone(), &req.path, body)
        .await?
        .error_for_status()?;
    let value = if matches!(req.expect, Expect::Deleted(_)) || resp.body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        resp.json()
            .with_context(|| format!("{} {}", req.method, req.path))?
    };
    render::answer(&req.expect, &value, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn api_and_output_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "sluicectl",
            "stats",
            "--api",
            "unix:/run/sluice/a/api.sock",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.api, ApiAddr::Unix("/run/sluice/a/api.sock".into()));
        assert!(cli.output == Output::Json);
        assert!(matches!(cli.command, Command::Stats));
    }

    #[test]
    fn bad_api_is_a_usage_error_naming_it() {
        let e = Cli::try_parse_from(["sluicectl", "--api", "nonsense", "status"])
            .err()
            .expect("rejected")
            .to_string();
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn unreachable_daemon_error_names_the_address() {
        let cli = Cli::try_parse_from([
            "sluicectl",
            "--api",
            "unix:/nonexistent/sluicectl-test.sock",
            "status",
        ])
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = format!("{:#}", rt.block_on(run(&cli)).unwrap_err());
        assert!(e.contains("unix:/nonexistent/sluicectl-test.sock"), "{e}");
    }

    use resource::Kind;
    use serde_json::json;
    use sluice_dataplane::client::Method;

    fn request(args: &[&str]) -> ApiRequest {
        let mut argv = vec!["sluicectl"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        intent_request(&cli.command)
            .unwrap()
            .expect("an intent request")
    }

    fn usage_error(args: &[&str]) -> String {
        let mut argv = vec!["sluicectl"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => {
                // clap exits 2 for these.
                assert_eq!(e.exit_code(), 2, "{args:?}");
                e.to_string()
            }
        }
    }

    fn check(
        args: &[&str],
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        expect: Expect,
    ) {
        let r = request(args);
        assert_eq!(
            r,
            ApiRequest {
                method,
                path: path.into(),
                body,
                expect
            },
            "{args:?}"
        );
    }

    #[test]
    fn create_flags_become_the_spec_body() {
        check(
            &["create", "vpc", "--name", "a", "--cidr", "10.0.0.0/16"],
            Method::POST,
            "/v1/vpcs",
            Some(json!({"name": "a", "cidr": "10.0.0.0/16"})),
            Expect::One(Kind::Vpc),
        );
        check(
            &["create", "vpc", "--cidr", "10.0.0.0/16"],
            Method::POST,
            "/v1/vpcs",
            Some(json!({"cidr": "10.0.0.0/16"})),
            Expect::One(Kind::Vpc),
        );
        check(
            &[
                "create",
                "host",
                "--name",
                "h1",
                "--underlay-ip",
                "192.0.2.1",
                "--underlay-ifname",
                "ul0",
                "--underlay-mtu",
                "9000",
            ],
            Method::POST,
            "/v1/hosts",
            Some(
                json!({"name": "h1", "underlay_ip": "192.0.2.1", "underlay_ifname": "ul0", "underlay_mtu": 9000}),
            ),
            Expect::One(Kind::Host),
        );
        check(
            &[
                "create",
                "host",
                "--replace",
                "--name",
                "h 1",
                "--underlay-ip",
                "192.0.2.1",
                "--underlay-ifname",
                "ul0",
            ],
            Method::PUT,
            "/v1/hosts/h%201",
            Some(json!({"name": "h 1", "underlay_ip": "192.0.2.1", "underlay_ifname": "ul0"})),
            Expect::One(Kind::Host),
        );
        check(
            &[
                "create",
                "subnet",
                "--vpc",
                "a",
                "--name",
                "web",
                "--cidr",
                "10.0.1.0/24",
            ],
            Method::POST,
            "/v1/subnets",
            Some(json!({"vpc": "a", "name": "web", "cidr": "10.0.1.0/24"})),
            Expect::One(Kind::Subnet),
        );
        check(
            &[
                "create",
                "nic",
                "--name",
                "fw0",
                "--vpc",
                "a",
                "--subnet",
                "web",
                "--host",
                "h1",
                "--ifname",
                "vfw0",
                "--ip",
                "10.0.1.10",
                "--source-check",
                "false",
            ],
            Method::POST,
            "/v1/nics",
            Some(
                json!({"name": "fw0", "vpc": "a", "subnet": "web", "host": "h1", "ifname": "vfw0", "ip": "10.0.1.10", "source_check": false}),
            ),
            Expect::One(Kind::Nic),
        );
        check(
            &["create", "peering", "--vpc", "a", "--peer-vpc", "b"],
            Method::POST,
            "/v1/peerings",
            Some(json!({"vpc": "a", "peer_vpc": "b"})),
            Expect::One(Kind::Peering),
        );
    }

    #[test]
    fn lb_commands_map_to_their_requests() {
        check(
            &[
                "lb", "create", "--name", "web", "--vpc", "a", "--subnet", "s1",
            ],
            Method::POST,
            "/v1/load-balancers",
            Some(json!({"name": "web", "vpc": "a", "subnet": "s1", "listeners": []})),
            Expect::One(Kind::LoadBalancer),
        );
        check(
            &["lb", "list", "--vpc", "a b"],
            Method::GET,
            "/v1/load-balancers?vpc=a%20b",
            None,
            Expect::List(Kind::LoadBalancer),
        );
        check(
            &["lb", "get", "web"],
            Method::GET,
            "/v1/load-balancers/web",
            None,
            Expect::One(Kind::LoadBalancer),
        );
        check(
            &["lb", "status", "lb-1"],
            Method::GET,
            "/v1/load-balancers/lb-1/status",
            None,
            Expect::LbStatus,
        );
        check(
            &["lb", "delete", "web"],
            Method::DELETE,
            "/v1/load-balancers/web",
            None,
            Expect::Deleted("load-balancer/web".into()),
        );
        check(
            &[
                "lb",
                "listener",
                "add",
                "web",
                "--protocol",
                "tcp",
                "--port",
                "80",
                "--scheduler",
                "source_ip",
                "--backend",
                "vm1:8080",
                "--backend",
                "10.0.1.9:8080:0",
                "--check",
                "http",
                "--check-path",
                "/healthz",
                "--check-status",
                "200,204",
                "--interval-ms",
                "5000",
            ],
            Method::POST,
            "/v1/load-balancers/web/listeners",
            Some(json!({
                "protocol": "tcp", "port": 80, "scheduler": "source_ip",
                "health_check": {"type": "http", "path": "/healthz", "expected_status": [200, 204], "interval_ms": 5000},
                "backends": [{"nic": "vm1", "port": 8080}, {"ip": "10.0.1.9", "port": 8080, "weight": 0}],
            })),
            Expect::One(Kind::LbListener),
        );
        check(
            &[
                "lb",
                "listener",
                "add",
                "web",
                "--protocol",
                "udp",
                "--port",
                "53",
            ],
            Method::POST,
            "/v1/load-balancers/web/listeners",
            Some(json!({"protocol": "udp", "port": 53, "backends": []})),
            Expect::One(Kind::LbListener),
        );
        check(
            &["lb", "listener", "remove", "web", "lbl-1"],
            Method::DELETE,
            "/v1/load-balancers/web/listeners/lbl-1",
            None,
            Expect::Deleted("listener/web:lbl-1".into()),
        );
        check(
            &[
                "lb", "backend", "add", "web", "lbl-1", "--nic", "vm2", "--port", "8080",
                "--weight", "50",
            ],
            Method::POST,
            "/v1/load-balancers/web/listeners/lbl-1/backends",
            Some(json!({"nic": "vm2", "port": 8080, "weight": 50})),
            Expect::One(Kind::LbBackend),
        );
        check(
            &["lb", "backend", "weight", "web", "lbl-1", "lbb-2", "0"],
            Method::PATCH,
            "/v1/load-balancers/web/listeners/lbl-1/backends/lbb-2",
            Some(json!({"weight": 0})),
            Expect::One(Kind::LbBackend),
        );
        check(
            &["lb", "backend", "remove", "web", "lbl-1", "lbb-2"],
            Method::DELETE,
            "/v1/load-balancers/web/listeners/lbl-1/backends/lbb-2",
            None,
            Expect::Deleted("backend/web:lbl-1:lbb-2".into()),
        );
        // Usage errors: a bad backend, a scheduler that does not exist, nic and ip both.
        let e = usage_error(&[
            "lb",
            "listener",
            "add",
            "web",
            "--protocol",
            "tcp",
            "--port",
            "80",
            "--backend",
            "vm1",
        ]);
        assert!(e.contains("<nic or ip>:<port>"), "{e}");
        usage_error(&[
            "lb",
            "listener",
            "add",
            "web",
            "--protocol",
            "tcp",
            "--port",
            "80",
            "--scheduler",
            "random",
        ]);
        usage_error(&[
            "lb", "backend", "add", "web", "lbl-1", "--nic", "a", "--ip", "10.0.0.9", "--port", "1",
        ]);
        usage_error(&["lb", "create", "--name", "web"]);
    }

    #[test]
    fn nat_commands_map_to_their_requests() {
        check(
            &[
                "create",
                "eip-pool",
                "--cidrs",
                "203.0.113.0/28,198.51.100.0/30",
            ],
            Method::POST,
            "/v1/eip-pools",
            Some(json!({"cidrs": ["203.0.113.0/28", "198.51.100.0/30"]})),
            Expect::One(Kind::EipPool),
        );
        check(
            &["create", "eip", "--name", "e1", "--nic", "vm1"],
            Method::POST,
            "/v1/eips",
            Some(json!({"name": "e1", "nic": "vm1"})),
            Expect::One(Kind::Eip),
        );
        check(
            &["bind", "eip", "203.0.113.5", "--nic", "vm1"],
            Method::POST,
            "/v1/eips/203.0.113.5/bind",
            Some(json!({"nic": "vm1"})),
            Expect::One(Kind::Eip),
        );
        check(
            &["unbind", "eip", "e1"],
            Method::POST,
            "/v1/eips/e1/unbind",
            None,
            Expect::One(Kind::Eip),
        );
        check(
            &["detach", "eip", "e1", "--nat-gateway", "gw"],
            Method::DELETE,
            "/v1/nat-gateways/gw/eips/e1",
            None,
            Expect::One(Kind::NatGateway),
        );
        check(
            &[
                "create",
                "snat",
                "--nat-gateway",
                "gw",
                "--nic",
                "vm1",
                "--eips",
                "e1,e2",
            ],
            Method::POST,
            "/v1/nat-gateways/gw/snat",
            Some(json!({"nic": "vm1", "eips": ["e1", "e2"]})),
            Expect::One(Kind::Snat),
        );
        check(
            &[
                "create",
                "dnat",
                "--nat-gateway",
                "gw",
                "--eip",
                "e2",
                "--protocol",
                "any",
                "--public-port",
                "53",
                "--private-ip",
                "10.0.1.4",
            ],
            Method::POST,
            "/v1/nat-gateways/gw/dnat",
            Some(
                json!({"eip": "e2", "protocol": "any", "public_port": 53, "private_ip": "10.0.1.4"}),
            ),
            Expect::One(Kind::Dnat),
        );
        check(
            &["delete", "dnat", "dnat-1", "--nat-gateway", "gw"],
            Method::DELETE,
            "/v1/nat-gateways/gw/dnat/dnat-1",
            None,
            Expect::Deleted("dnat/gw:dnat-1".into()),
        );
        check(
            &["list", "nat-gateways", "--vpc", "a"],
            Method::GET,
            "/v1/nat-gateways?vpc=a",
            None,
            Expect::List(Kind::NatGateway),
        );
        // One source only; a protocol the API does not have.
        usage_error(&[
            "create",
            "snat",
            "--nat-gateway",
            "gw",
            "--subnet",
            "s",
            "--nic",
            "n",
            "--eips",
            "e",
        ]);
        usage_error(&[
            "create",
            "dnat",
            "--nat-gateway",
            "gw",
            "--eip",
            "e",
            "--protocol",
            "icmp",
            "--public-port",
            "1",
            "--private-ip",
            "10.0.0.4",
        ]);
    }

    #[test]
    fn route_next_hops_map_to_the_tagged_json() {
        for (flag, hop) in [
            ("nic:fw0", json!({"type": "nic", "nic": "fw0"})),
            (
                "peering:pcx-1",
                json!({"type": "peering", "peering": "pcx-1"}),
            ),
            ("blackhole", json!({"type": "blackhole"})),
            (
                "nat-gateway:gw",
                json!({"type": "nat_gateway", "nat_gateway": "gw"}),
            ),
        ] {
            check(
                &[
                    "create",
                    "route",
                    "--vpc",
                    "a",
                    "--destination",
                    "0.0.0.0/0",
                    "--next-hop",
                    flag,
                ],
                Method::POST,
                "/v1/routes",
                Some(json!({"vpc": "a", "destination": "0.0.0.0/0", "next_hop": hop})),
                Expect::One(Kind::Route),
            );
        }
        let r = request(&[
            "create",
            "route",
            "--replace",
            "--vpc",
            "a",
            "--destination",
            "10.1.0.0/16",
            "--next-hop",
            "blackhole",
        ]);
        assert_eq!((r.method, r.path.as_str()), (Method::PUT, "/v1/routes"));
        let e = usage_error(&[
            "create",
            "route",
            "--vpc",
            "a",
            "--destination",
            "0.0.0.0/0",
            "--next-hop",
            "nat:x",
        ]);
        assert!(
            e.contains("expected nic:<nic>, peering:<peering>, nat-gateway:<gateway> or blackhole"),
            "{e}"
        );
    }

    #[test]
    fn missing_flags_and_flags_with_a_file_are_usage_errors() {
        let e = usage_error(&["create", "vpc", "--name", "a"]);
        assert!(e.contains("--cidr"), "{e}");
        let e = usage_error(&["create", "subnet", "--vpc", "a"]);
        assert!(e.contains("--cidr"), "{e}");
        let e = usage_error(&["create", "vpc", "-f", "vpc.yaml", "--cidr", "10.0.0.0/16"]);
        assert!(e.contains("--cidr"), "{e}");
        usage_error(&[
            "create", "nic", "--vpc", "a", "--subnet", "s", "--host", "h1",
        ]);
        usage_error(&["update", "nic", "nic-1"]);
        usage_error(&["get", "route", "0.0.0.0/0"]);
        usage_error(&[
            "create",
            "nic",
            "--vpc",
            "a",
            "--subnet",
            "s",
            "--host",
            "h1",
            "--ifname",
            "v",
            "--source-check",
            "maybe",
        ]);
        usage_error(&["frobnicate"]);
    }

    #[test]
    fn create_from_a_spec_file_sends_the_file_s_object() {
        let dir = std::env::temp_dir().join(format!("sluicectl-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("route.yaml");
        std::fs::write(
            &f,
            "vpc: a\ndestination: 10.2.0.0/16\nnext_hop:\n  type: peering\n  peering: a-b\n",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        check(
            &["create", "route", "-f", path],
            Method::POST,
            "/v1/routes",
            Some(
                json!({"vpc": "a", "destination": "10.2.0.0/16", "next_hop": {"type": "peering", "peering": "a-b"}}),
            ),
            Expect::One(Kind::Route),
        );
        std::fs::write(&f, "vpc: a\ncidr: 10.0.0.0/16\nzone: x\n").unwrap();
        let cli = Cli::try_parse_from(["sluicectl", "create", "subnet", "-f", path]).unwrap();
        let e = format!("{:#}", intent_request(&cli.command).unwrap_err());
        assert!(
            e.contains(path) && e.contains("unknown field `zone`"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn get_list_and_delete_paths() {
        check(
            &["get", "host", "h1"],
            Method::GET,
            "/v1/hosts/h1",
            None,
            Expect::One(Kind::Host),
        );
        check(
            &["get", "vpc", "a"],
            Method::GET,
            "/v1/vpcs/a",
            None,
            Expect::One(Kind::Vpc),
        );
        check(
            &["get", "subnet", "web", "--vpc", "a"],
            Method::GET,
            "/v1/subnets/web?vpc=a",
            None,
            Expect::One(Kind::Subnet),
        );
        check(
            &["get", "subnet", "subnet-1"],
            Method::GET,
            "/v1/subnets/subnet-1",
            None,
            Expect::One(Kind::Subnet),
        );
        check(
            &["get", "nic", "vm1"],
            Method::GET,
            "/v1/nics/vm1",
            None,
            Expect::One(Kind::Nic),
        );
        check(
            &["get", "route", "--vpc", "a", "10.0.0.0/24"],
            Method::GET,
            "/v1/vpcs/a/routes/10.0.0.0%2F24",
            None,
            Expect::One(Kind::Route),
        );
        check(
            &["get", "peering", "pcx-1"],
            Method::GET,
            "/v1/peerings/pcx-1",
            None,
            Expect::One(Kind::Peering),
        );
        check(
            &["get", "route-table", "a"],
            Method::GET,
            "/v1/vpcs/a/route-table",
            None,
            Expect::RouteTable,
        );

        check(
            &["list", "hosts"],
            Method::GET,
            "/v1/hosts",
            None,
            Expect::List(Kind::Host),
        );
        check(
            &["list", "vpc"],
            Method::GET,
            "/v1/vpcs",
            None,
            Expect::List(Kind::Vpc),
        );
        check(
            &["ls", "subnets", "--vpc", "a"],
            Method::GET,
            "/v1/subnets?vpc=a",
            None,
            Expect::List(Kind::Subnet),
        );
        check(
            &["list", "nics", "--vpc", "a", "--host", "h1"],
            Method::GET,
            "/v1/nics?vpc=a&host=h1",
            None,
            Expect::List(Kind::Nic),
        );
        check(
            &["list", "nics", "--host", "h1"],
            Method::GET,
            "/v1/nics?host=h1",
            None,
            Expect::List(Kind::Nic),
        );
        check(
            &["list", "routes"],
            Method::GET,
            "/v1/routes",
            None,
            Expect::List(Kind::Route),
        );
        check(
            &["list", "peerings"],
            Method::GET,
            "/v1/peerings",
            None,
            Expect::List(Kind::Peering),
        );

        check(
            &["delete", "host", "h1"],
            Method::DELETE,
            "/v1/hosts/h1",
            None,
            Expect::Deleted("host/h1".into()),
        );
        check(
            &["delete", "vpc", "a"],
            Method::DELETE,
            "/v1/vpcs/a",
            None,
            Expect::Deleted("vpc/a".into()),
        );
        check(
            &["delete", "subnet", "web", "--vpc", "a"],
            Method::DELETE,
            "/v1/subnets/web?vpc=a",
            None,
            Expect::Deleted("subnet/a/web".into()),
        );
        check(
            &["delete", "nic", "vm1"],
            Method::DELETE,
            "/v1/nics/vm1",
            None,
            Expect::Deleted("nic/vm1".into()),
        );
        check(
            &["delete", "route", "--vpc", "a", "0.0.0.0/0"],
            Method::DELETE,
            "/v1/vpcs/a/routes/0.0.0.0%2F0",
            None,
            Expect::Deleted("route/a:0.0.0.0/0".into()),
        );
        check(
            &["delete", "peering", "pcx-1"],
            Method::DELETE,
            "/v1/peerings/pcx-1",
            None,
            Expect::Deleted("peering/pcx-1".into()),
        );
    }

    #[test]
    fn accept_update_and_apply() {
        check(
            &["accept", "peering", "pcx-1"],
            Method::POST,
            "/v1/peerings/pcx-1/accept",
            None,
            Expect::One(Kind::Peering),
        );
        check(
            &["update", "nic", "vm1", "--host", "h2", "--ifname", "vm1b"],
            Method::PATCH,
            "/v1/nics/vm1",
            Some(json!({"host": "h2", "ifname": "vm1b"})),
            Expect::One(Kind::Nic),
        );
        check(
            &["update", "nic", "fw0", "--source-check", "false"],
            Method::PATCH,
            "/v1/nics/fw0",
            Some(json!({"source_check": false})),
            Expect::One(Kind::Nic),
        );
        let dir = std::env::temp_dir().join(format!("sluicectl-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("topology.yaml");
        std::fs::write(
            &f,
            "vpcs:\n  - name: a\n    cidr: 10.0.0.0/16\n    subnets: [{name: web, cidr: 10.0.1.0/24}]\n    routes:\n      - destination: 0.0.0.0/0\n        next_hop: {type: blackhole}\n",
        )
        .unwrap();
        let r = request(&["apply", "-f", f.to_str().unwrap()]);
        assert_eq!(
            (r.method, r.path.as_str(), r.expect),
            (Method::POST, "/v1/topology", Expect::Apply)
        );
        assert_eq!(
            r.body.unwrap(),
            json!({"hosts": [], "nics": [], "peerings": [], "vpcs": [{"name": "a", "cidr": "10.0.0.0/16",
                "subnets": [{"name": "web", "cidr": "10.0.1.0/24"}],
                "routes": [{"destination": "0.0.0.0/0", "next_hop": {"type": "blackhole"}}]}]})
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn security_groups_rules_and_blocks() {
        let w = |line: &'static str| line.split_whitespace().collect::<Vec<_>>();
        check(
            &w("create security-group --vpc a --name web"),
            Method::POST,
            "/v1/security-groups",
            Some(json!({"vpc": "a", "name": "web", "rules": []})),
            Expect::One(Kind::SecurityGroup),
        );
        check(
            &w(
                "create rule --sg web --vpc a --direction ingress --protocol tcp \
                --ports 8000-8100 --cidr 10.0.0.0/8 --action allow --priority 10",
            ),
            Method::POST,
            "/v1/security-groups/web/rules?vpc=a",
            Some(
                json!({"direction": "ingress", "protocol": "tcp", "ports": "8000-8100",
                "cidr": "10.0.0.0/8", "action": "allow", "priority": 10}),
            ),
            Expect::One(Kind::Rule),
        );
        check(
            &w(
                "create rule --security-group sg-3 --direction egress --protocol icmp \
                --icmp-type 8 --group db --action deny --priority 1",
            ),
            Method::POST,
            "/v1/security-groups/sg-3/rules",
            Some(
                json!({"direction": "egress", "protocol": "icmp", "icmp_type": 8,
                "group": "db", "action": "deny", "priority": 1}),
            ),
            Expect::One(Kind::Rule),
        );
        check(
            &w("delete rule sgr-4 --sg web --vpc a"),
            Method::DELETE,
            "/v1/security-groups/web/rules/sgr-4?vpc=a",
            None,
            Expect::Deleted("rule/web:sgr-4".into()),
        );
        check(
            &w("list rules --sg web --vpc a"),
            Method::GET,
            "/v1/security-groups/web?vpc=a",
            None,
            Expect::Rules,
        );
        check(
            &w("get sg web --vpc a"),
            Method::GET,
            "/v1/security-groups/web?vpc=a",
            None,
            Expect::One(Kind::SecurityGroup),
        );
        check(
            &w("list security-groups --vpc a"),
            Method::GET,
            "/v1/security-groups?vpc=a",
            None,
            Expect::List(Kind::SecurityGroup),
        );
        check(
            &w("delete security-group web --vpc a"),
            Method::DELETE,
            "/v1/security-groups/web?vpc=a",
            None,
            Expect::Deleted("security-group/a/web".into()),
        );
        check(
            &w("update nic vm1 --security-groups web,db"),
            Method::PATCH,
            "/v1/nics/vm1",
            Some(json!({"security_groups": ["web", "db"]})),
            Expect::One(Kind::Nic),
        );
        check(
            &w("create block --prefix 203.0.113.0/24 --applies-to source"),
            Method::POST,
            "/v1/blocklist",
            Some(json!({"prefix": "203.0.113.0/24", "applies_to": "source"})),
            Expect::One(Kind::Block),
        );
        check(
            &w("delete block 203.0.113.0/24"),
            Method::DELETE,
            "/v1/blocklist/203.0.113.0%2F24",
            None,
            Expect::Deleted("block/203.0.113.0/24".into()),
        );
        check(
            &w("list blocklist"),
            Method::GET,
            "/v1/blocklist",
            None,
            Expect::List(Kind::Block),
        );
        // A rule needs exactly one remote, and known words.
        let base = "create rule --sg web --direction ingress --protocol tcp --action allow \
                    --priority 1";
        let e = usage_error(&w(base));
        assert!(e.contains("--cidr"), "{e}");
        usage_error(&[w(base), w("--cidr 10.0.0.0/8 --group db")].concat());
        let e = usage_error(&w(
            "create rule --sg web --direction sideways --protocol tcp --action allow \
             --priority 1 --cidr 10.0.0.0/8",
        ));
        assert!(e.contains("ingress") && e.contains("egress"), "{e}");
        usage_error(&w("create block --prefix 203.0.113.0/24 --applies-to up"));
    }

    #[test]
    fn status_and_stats_are_not_intent_requests() {
        for c in ["status", "stats"] {
            let cli = Cli::try_parse_from(["sluicectl", c]).unwrap();
            assert!(intent_request(&cli.command).unwrap().is_none());
        }
    }
}
