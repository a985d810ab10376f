//! The intent API's OpenAPI 3.0 description, served at `/v1/openapi.json`.
//!
//! Written out here (not derived) so it reads as documentation; the tests keep it honest:
//! every documented operation is routed, every schema's example deserializes into the Rust
//! type it describes, and real responses validate against their schemas.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

/// The document, rendered once.
pub static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string_pretty(&document()).expect("the document renders"));

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn array_of(item: Value) -> Value {
    json!({ "type": "array", "items": item })
}

/// A closed object: `required` fields must be there, nothing outside `properties` may be.
fn object(required: &[&str], properties: Value, example: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
        "example": example,
    })
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn reply(description: &str, schema: Option<Value>) -> Value {
    match schema {
        Some(s) => json!({
            "description": description,
            "content": { "application/json": { "schema": s } },
        }),
        None => json!({ "description": description }),
    }
}

fn errors() -> Value {
    let e = |d: &str| reply(d, Some(schema_ref("Error")));
    json!({
        "400": e("Invalid request: `error.field` names the offending field"),
        "404": e("The resource, or one the request refers to, does not exist"),
        "409": e("Conflicts with existing state; `error.dependents` lists what is in the way"),
        "500": e("The store failed; nothing changed"),
    })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" }, "description": description })
}

fn query_param(name: &str, description: &str, ty: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": { "type": ty }, "description": description })
}

/// One operation; `ok` is the success status with its schema (`None`: no body).
fn op(summary: &str, params: Vec<Value>, body: Option<&str>, ok: (&str, Option<Value>)) -> Value {
    let mut responses = errors();
    responses[ok.0] = reply(summary, ok.1);
    let mut o = json!({ "summary": summary, "parameters": params, "responses": responses });
    if let Some(b) = body {
        o["requestBody"] = json_body(schema_ref(b));
    }
    o
}

fn document() -> Value {
    let vpc = || path_param("vpc", "VPC ID or name");
    let sg = || {
        path_param(
            "sg",
            "Security group ID, or name (with ?vpc= unless unique)",
        )
    };
    let sg_vpc = || query_param("vpc", "The VPC a group name is looked up in", "string");
    let pool = || path_param("pool", "EIP pool ID or name");
    let eip = || path_param("eip", "EIP ID, name or address");
    let gw = || path_param("gw", "NAT gateway ID or name");
    let list = |s: &str| Some(array_of(schema_ref(s)));
    let one = |s: &str| Some(schema_ref(s));
    let paths = json!({
        "/v1/openapi.json": { "get": {
            "summary": "This document",
            "responses": { "200": reply("The OpenAPI document", Some(json!({"type": "object"}))) },
        }},
        "/v1/hosts": {
            "get": op("List hosts", vec![], None, ("200", list("Host"))),
            "post": op("Register a host", vec![], Some("HostSpec"), ("201", one("Host"))),
        },
        "/v1/hosts/{name}": {
            "get": op("Get a host", vec![path_param("name", "Host name")], None, ("200", one("Host"))),
            "put": op("Register or update a host", vec![path_param("name", "Host name (must equal the body's)")], Some("HostSpec"), ("200", one("Host"))),
            "delete": op("Remove a host without NICs", vec![path_param("name", "Host name")], None, ("204", None)),
        },
        "/v1/vpcs": {
            "get": op("List VPCs", vec![], None, ("200", list("Vpc"))),
            "post": op("Create a VPC (allocates its VNI and route table)", vec![], Some("VpcSpec"), ("201", one("Vpc"))),
        },
        "/v1/vpcs/{vpc}": {
            "get": op("Get a VPC", vec![vpc()], None, ("200", one("Vpc"))),
            "delete": op("Delete a VPC without subnets, NICs, routes or peerings", vec![vpc()], None, ("204", None)),
        },
        "/v1/vpcs/{vpc}/route-table": {
            "get": op("A VPC's route table: system routes (one per subnet) and custom routes", vec![vpc()], None, ("200", list("RouteTableEntry"))),
        },
        "/v1/vpcs/{vpc}/routes/{destination}": {
            "get": op("Get a custom route", vec![vpc(), path_param("destination", "Destination CIDR, `/` percent-encoded as %2F")], None, ("200", one("Route"))),
            "delete": op("Delete a custom route", vec![vpc(), path_param("destination", "Destination CIDR, `/` percent-encoded as %2F")], None, ("204", None)),
        },
        "/v1/subnets": {
            "get": op("List subnets", vec![query_param("vpc", "Only this VPC's (ID or name)", "string")], None, ("200", list("Subnet"))),
            "post": op("Create a subnet", vec![], Some("SubnetSpec"), ("201", one("Subnet"))),
        },
        "/v1/subnets/{subnet}": {
            "get": op("Get a subnet", vec![path_param("subnet", "Subnet ID, or name with ?vpc="), query_param("vpc", "The VPC a subnet name is looked up in", "string")], None, ("200", one("Subnet"))),
            "delete": op("Delete a subnet without NICs", vec![path_param("subnet", "Subnet ID, or name with ?vpc="), query_param("vpc", "The VPC a subnet name is looked up in", "string")], None, ("204", None)),
        },
        "/v1/nics": {
            "get": op("List NICs", vec![query_param("vpc", "Only this VPC's (ID or name)", "string"), query_param("host", "Only this host's", "string")], None, ("200", list("Nic"))),
            "post": op("Create a NIC (IP and MAC allocated when absent)", vec![], Some("NicSpec"), ("201", one("Nic"))),
        },
        "/v1/nics/{nic}": {
            "get": op("Get a NIC", vec![path_param("nic", "NIC ID or name")], None, ("200", one("Nic"))),
            "patch": op("Move a NIC, change its source check, or replace its security groups", vec![path_param("nic", "NIC ID or name")], Some("NicUpdate"), ("200", one("Nic"))),
            "delete": op("Delete a NIC and every dataplane entry naming it", vec![path_param("nic", "NIC ID or name")], None, ("204", None)),
        },
        "/v1/routes": {
            "get": op("List custom routes", vec![query_param("vpc", "Only this VPC's (ID or name)", "string")], None, ("200", list("Route"))),
            "post": op("Add a custom route (409 if the destination has one)", vec![], Some("RouteSpec"), ("201", one("Route"))),
            "put": op("Add or replace a custom route", vec![], Some("RouteSpec"), ("200", one("Route"))),
        },
        "/v1/peerings": {
            "get": op("List peerings", vec![], None, ("200", list("Peering"))),
            "post": op("Request a peering (pending until accepted)", vec![], Some("PeeringSpec"), ("201", one("Peering"))),
        },
        "/v1/peerings/{pcx}": {
            "get": op("Get a peering", vec![path_param("pcx", "Peering ID or name")], None, ("200", one("Peering"))),
            "delete": op("Delete a peering no route uses", vec![path_param("pcx", "Peering ID or name")], None, ("204", None)),
        },
        "/v1/security-groups": {
            "get": op("List security groups", vec![query_param("vpc", "Only this VPC's (ID or name)", "string")], None, ("200", list("SecurityGroup"))),
            "post": op("Create a security group, optionally with rules", vec![], Some("SecurityGroupSpec"), ("201", one("SecurityGroup"))),
        },
        "/v1/security-groups/{sg}": {
            "get": op("Get a security group and its rules", vec![sg(), sg_vpc()], None, ("200", one("SecurityGroup"))),
            "delete": op("Delete a security group no NIC uses and no other group's rule names (a VPC's default group goes only with its VPC)", vec![sg(), sg_vpc()], None, ("204", None)),
        },
        "/v1/security-groups/{sg}/rules": {
            "post": op("Add a rule to a security group (409 if it has the same rule, or a NIC would exceed its rule limit)", vec![sg(), sg_vpc()], Some("SgRuleSpec"), ("201", one("SgRule"))),
        },
        "/v1/security-groups/{sg}/rules/{rule}": {
            "delete": op("Remove a rule from a security group", vec![sg(), path_param("rule", "Rule ID (sgr-<n>)"), sg_vpc()], None, ("204", None)),
        },
        "/v1/blocklist": {
            "get": op("The operator blocklist", vec![], None, ("200", list("BlocklistEntry"))),
            "post": op("Block a prefix on every host (409 if blocked already or the list is full)", vec![], Some("BlocklistSpec"), ("201", one("BlocklistEntry"))),
        },
        "/v1/blocklist/{prefix}": {
            "get": op("Get a blocklist entry", vec![path_param("prefix", "The blocked CIDR, `/` percent-encoded as %2F")], None, ("200", one("BlocklistEntry"))),
            "delete": op("Unblock a prefix", vec![path_param("prefix", "The blocked CIDR, `/` percent-encoded as %2F")], None, ("204", None)),
        },
        "/v1/eip-pools": {
            "get": op("List EIP pools", vec![], None, ("200", list("EipPool"))),
            "post": op("Create an EIP pool (409 if a range overlaps another pool's)", vec![], Some("EipPoolSpec"), ("201", one("EipPool"))),
        },
        "/v1/eip-pools/{pool}": {
            "get": op("Get an EIP pool", vec![pool()], None, ("200", one("EipPool"))),
            "delete": op("Delete an EIP pool without allocated EIPs", vec![pool()], None, ("204", None)),
        },
        "/v1/eips": {
            "get": op("List EIPs", vec![], None, ("200", list("Eip"))),
            "post": op("Allocate an EIP from a pool (a given address, or the lowest free), optionally bound to a NIC", vec![], Some("EipSpec"), ("201", one("Eip"))),
        },
        "/v1/eips/{eip}": {
            "get": op("Get an EIP", vec![eip()], None, ("200", one("Eip"))),
            "delete": op("Release a free EIP", vec![eip()], None, ("204", None)),
        },
        "/v1/eips/{eip}/bind": {
            "post": op("Bind a free EIP to a NIC (1:1; a NIC has at most one)", vec![eip()], Some("EipBind"), ("200", one("Eip"))),
        },
        "/v1/eips/{eip}/unbind": {
            "post": op("Unbind a bound EIP (it stays allocated)", vec![eip()], None, ("200", one("Eip"))),
        },
        "/v1/nat-gateways": {
            "get": op("List NAT gateways", vec![query_param("vpc", "Only this VPC's (ID or name)", "string")], None, ("200", list("NatGateway"))),
            "post": op("Create a NAT gateway with its EIPs and SNAT/DNAT entries", vec![], Some("NatGatewaySpec"), ("201", one("NatGateway"))),
        },
        "/v1/nat-gateways/{gw}": {
            "get": op("Get a NAT gateway", vec![gw()], None, ("200", one("NatGateway"))),
            "delete": op("Delete a NAT gateway no route sends to (its entries go with it, its EIPs become free)", vec![gw()], None, ("204", None)),
        },
        "/v1/nat-gateways/{gw}/eips": {
            "post": op("Attach a free EIP to a NAT gateway", vec![gw()], Some("EipAttach"), ("200", one("NatGateway"))),
        },
        "/v1/nat-gateways/{gw}/eips/{eip}": {
            "delete": op("Detach an EIP no SNAT or DNAT entry uses", vec![gw(), eip()], None, ("200", one("NatGateway"))),
        },
        "/v1/nat-gateways/{gw}/snat": {
            "get": op("A NAT gateway's SNAT entries", vec![gw()], None, ("200", list("SnatEntry"))),
            "post": op("Add a SNAT entry: a source inside the VPC to some of the gateway's EIPs (none of them serving DNAT)", vec![gw()], Some("SnatSpec"), ("201", one("SnatEntry"))),
        },
        "/v1/nat-gateways/{gw}/snat/{entry}": {
            "delete": op("Remove a SNAT entry", vec![gw(), path_param("entry", "snat-<n>")], None, ("204", None)),
        },
        "/v1/nat-gateways/{gw}/dnat": {
            "get": op("A NAT gateway's DNAT entries", vec![gw()], None, ("200", list("DnatEntry"))),
            "post": op("Add a DNAT entry (409 if its EIP serves SNAT or another entry has its (EIP, protocol, port); any overlaps tcp and udp)", vec![gw()], Some("DnatSpec"), ("201", one("DnatEntry"))),
        },
        "/v1/nat-gateways/{gw}/dnat/{entry}": {
            "delete": op("Remove a DNAT entry", vec![gw(), path_param("entry", "dnat-<n>")], None, ("204", None)),
        },
        "/v1/peerings/{pcx}/accept": {
            "post": op("Accept a peering", vec![path_param("pcx", "Peering ID or name")], None, ("200", one("Peering"))),
        },
        "/v1/topology": {
            "post": op("Create or update a whole declared topology (idempotent, never deletes)", vec![], Some("Topology"), ("200", one("ApplySummary"))),
        },
        "/v1/agent/hosts/{host}/tables": {
            "get": op(
                "A host's compiled tables (for its agent); long-polls with ?after=",
                vec![
                    path_param("host", "Host name"),
                    query_param("after", "Answer once the intent generation is past this one", "integer"),
                    query_param("wait_ms", "Longest wait with after= (default 30000, at most 300000)", "integer"),
                    query_param("have", "The generation whose tables the agent holds: the answer is the change from them (delta) when the controller still knows them, else the whole tables", "integer"),
                ],
                None,
                ("200", one("AgentTables")),
            ),
        },
    });
    let lb = || path_param("lb", "Load balancer ID or name");
    let listener = || path_param("listener", "Listener ID (lbl-<n>)");
    let backend = || path_param("backend", "Backend ID (lbb-<n>)");
    let lb_paths = json!({
        "/v1/load-balancers": {
            "get": op("List load balancers", vec![query_param("vpc", "Only this VPC's (ID or name)", "string")], None, ("200", list("LoadBalancer"))),
            "post": op("Create a load balancer (VIP given or the subnet's lowest free) with its listeners and backends", vec![], Some("LoadBalancerSpec"), ("201", one("LoadBalancer"))),
        },
        "/v1/load-balancers/{lb}": {
            "get": op("Get a load balancer", vec![lb()], None, ("200", one("LoadBalancer"))),
            "delete": op("Delete a load balancer no DNAT entry forwards to", vec![lb()], None, ("204", None)),
        },
        "/v1/load-balancers/{lb}/status": {
            "get": op("Each backend's health, weight, active connections and last check (unknown until the agents report)", vec![lb()], None, ("200", one("LbStatus"))),
        },
        "/v1/load-balancers/{lb}/listeners": {
            "post": op("Add a listener (409 if the load balancer has one on the protocol and port)", vec![lb()], Some("ListenerSpec"), ("201", one("LbListener"))),
        },
        "/v1/load-balancers/{lb}/listeners/{listener}": {
            "delete": op("Remove a listener and its backends (409 while DNAT entries forward to it)", vec![lb(), listener()], None, ("204", None)),
        },
        "/v1/load-balancers/{lb}/listeners/{listener}/backends": {
            "post": op("Add a backend (a NIC or private IP of the VPC)", vec![lb(), listener()], Some("BackendSpec"), ("201", one("LbBackend"))),
        },
        "/v1/load-balancers/{lb}/listeners/{listener}/backends/{backend}": {
            "patch": op("Change a backend's weight (0 drains: open connections continue, new ones go elsewhere)", vec![lb(), listener(), backend()], Some("BackendUpdate"), ("200", one("LbBackend"))),
            "delete": op("Remove a backend (its flows pick another)", vec![lb(), listener(), backend()], None, ("204", None)),
        },
    });
    let mut paths = paths;
    for (path, item) in lb_paths.as_object().into_iter().flatten() {
        paths[path] = item.clone();
    }

    let next_hop = json!({
        "description": "Where a custom route sends traffic",
        "oneOf": [
            object(&["type", "nic"], json!({"type": {"type": "string", "enum": ["nic"]}, "nic": string("Appliance NIC (ID or name)")}), json!({"type": "nic", "nic": "fw0"})),
            object(&["type", "peering"], json!({"type": {"type": "string", "enum": ["peering"]}, "peering": string("Accepted peering (ID or name)")}), json!({"type": "peering", "peering": "pcx-1"})),
            object(&["type"], json!({"type": {"type": "string", "enum": ["blackhole"]}}), json!({"type": "blackhole"})),
            object(&["type", "nat_gateway"], json!({"type": {"type": "string", "enum": ["nat_gateway"]}, "nat_gateway": string("NAT gateway of the VPC (ID or name); dropped and counted until the NAT datapath exists")}), json!({"type": "nat_gateway", "nat_gateway": "gw"})),
        ],
        "example": {"type": "nic", "nic": "fw0"},
    });
    let route_target = json!({
        "description": "What a route-table line does",
        "oneOf": [
            object(&["type", "subnet"], json!({"type": {"type": "string", "enum": ["local"]}, "subnet": string("Subnet ID")}), json!({"type": "local", "subnet": "subnet-1"})),
            object(&["type", "nic"], json!({"type": {"type": "string", "enum": ["nic"]}, "nic": string("NIC ID")}), json!({"type": "nic", "nic": "nic-1"})),
            object(&["type", "peering"], json!({"type": {"type": "string", "enum": ["peering"]}, "peering": string("Peering ID")}), json!({"type": "peering", "peering": "pcx-1"})),
            object(&["type"], json!({"type": {"type": "string", "enum": ["blackhole"]}}), json!({"type": "blackhole"})),
            object(&["type", "nat_gateway"], json!({"type": {"type": "string", "enum": ["nat_gateway"]}, "nat_gateway": string("NAT gateway ID")}), json!({"type": "nat_gateway", "nat_gateway": "natgw-1"})),
        ],
        "example": {"type": "local", "subnet": "subnet-1"},
    });
    let integer = |d: &str| json!({ "type": "integer", "description": d });
    let boolean = |d: &str| json!({ "type": "boolean", "description": d });
    let names = array_of(json!({"type": "string"}));
    let applies_to = || json!({"type": "string", "enum": ["source", "destination", "both"], "description": "Which address of a packet the prefix is matched against (default both)"});
    let sg_rule_props = |resource: bool| {
        let mut p = json!({
            "direction": {"type": "string", "enum": ["ingress", "egress"]},
            "protocol": {"type": "string", "enum": ["tcp", "udp", "icmp", "all"]},
            "ports": string("tcp/udp: `80` or `8000-8100` (absent: every port)"),
            "icmp_type": integer("icmp: the type (absent: every type)"),
            "icmp_code": integer("icmp with a type: the code (absent: every code)"),
            "cidr": string("Remote: a CIDR (exactly one of cidr and group)"),
            "group": string(if resource { "Remote: a security group ID of the same VPC, meaning its members' addresses" } else { "Remote: a security group of the same VPC (ID or name), meaning its members' addresses" }),
            "action": {"type": "string", "enum": ["allow", "deny"]},
            "priority": integer("1 (evaluated first) to 65535; deny wins a tie"),
            "description": string("Free text"),
        });
        if resource {
            p["id"] = string("sgr-<n>");
        }
        p
    };

    // Security groups and the blocklist (their own json!: one would exceed the macro's
    // recursion limit).
    let sg_schemas = json!({
        "TopologySecurityGroup": object(&["name"], json!({
            "name": string("Name within the VPC (`default`: the VPC's own default group)"),
            "description": string("Free text"),
            "rules": array_of(schema_ref("SgRuleSpec")),
        }), json!({"name": "web", "rules": [{"direction": "ingress", "protocol": "tcp", "ports": "443", "cidr": "0.0.0.0/0", "action": "allow", "priority": 100}]})),
        "SgRuleSpec": object(&["direction", "protocol", "action", "priority"], sg_rule_props(false), json!({"direction": "ingress", "protocol": "tcp", "ports": "8000-8100", "cidr": "10.0.0.0/8", "action": "allow", "priority": 100, "description": "app"})),
        "SgRule": object(&["id", "direction", "protocol", "action", "priority"], sg_rule_props(true), json!({"id": "sgr-7", "direction": "ingress", "protocol": "tcp", "ports": "22", "group": "sg-3", "action": "allow", "priority": 10})),
        "SecurityGroupSpec": object(&["vpc"], json!({
            "vpc": string("VPC ID or name"),
            "name": string("Unique within the VPC (default: the ID); `default` is the VPC's own"),
            "description": string("Free text"),
            "rules": array_of(schema_ref("SgRuleSpec")),
        }), json!({"vpc": "tenant-a", "name": "web", "rules": [{"direction": "ingress", "protocol": "tcp", "ports": "443", "cidr": "0.0.0.0/0", "action": "allow", "priority": 100}]})),
        "SecurityGroup": object(&["id", "name", "vpc", "rules"], json!({
            "id": string("sg-<n>"), "name": string("Name"), "vpc": string("VPC ID"), "description": string("Free text"),
            "rules": array_of(schema_ref("SgRule")),
        }), json!({"id": "sg-1", "name": "default", "vpc": "vpc-1", "description": "members reach each other; all egress allowed", "rules": [
            {"id": "sgr-1", "direction": "ingress", "protocol": "all", "group": "sg-1", "action": "allow", "priority": 65535},
            {"id": "sgr-2", "direction": "egress", "protocol": "all", "cidr": "0.0.0.0/0", "action": "allow", "priority": 65535}]})),
        "BlocklistSpec": object(&["prefix"], json!({
            "prefix": string("IPv4 CIDR, /1 to /32"),
            "applies_to": applies_to(),
            "description": string("Free text"),
        }), json!({"prefix": "203.0.113.0/24", "applies_to": "source", "description": "DDoS source"})),
        "BlocklistEntry": object(&["prefix", "applies_to"], json!({
            "prefix": string("IPv4 CIDR"), "applies_to": applies_to(), "description": string("Free text"),
        }), json!({"prefix": "203.0.113.0/24", "applies_to": "both"})),
    });
    let nat_protocol = || json!({"type": "string", "enum": ["tcp", "udp", "any"], "description": "any: both tcp and udp"});
    let snat_props = |resource: bool| {
        let mut p = json!({
            "subnet": string(if resource { "Source: a subnet ID of the VPC" } else { "Source: a subnet of the VPC (ID or name); exactly one of subnet, cidr and nic" }),
            "cidr": string("Source: a CIDR inside the VPC"),
            "nic": string(if resource { "Source: a NIC ID of the VPC" } else { "Source: a NIC of the VPC (ID or name)" }),
            "eips": array_of(string(if resource { "EIP ID" } else { "One of the gateway's EIPs (ID, name or address)" })),
        });
        if resource {
            p["id"] = string("snat-<n>");
        }
        p
    };
    let nat_schemas = json!({
        "EipPoolSpec": object(&["cidrs"], json!({
            "name": string("Unique name (default: the ID)"),
            "cidrs": array_of(string("Public IPv4 range, /16 to /32, overlapping no other pool's")),
            "description": string("Free text"),
        }), json!({"name": "pub", "cidrs": ["203.0.113.0/24"]})),
        "EipPool": object(&["id", "name", "cidrs"], json!({
            "id": string("eipp-<n>"), "name": string("Name"), "cidrs": array_of(string("IPv4 CIDR")), "description": string("Free text"),
        }), json!({"id": "eipp-1", "name": "pub", "cidrs": ["203.0.113.0/24"]})),
        "EipSpec": object(&[], json!({
            "name": string("Unique name, not an address (default: the ID)"),
            "pool": string("Pool ID or name (default: the pool holding address, or the first with room)"),
            "address": string("An address inside a pool (default: the lowest free)"),
            "nic": string("Bind to this NIC (ID or name) at once"),
        }), json!({"name": "web-ip", "pool": "pub", "nic": "web1"})),
        "Eip": object(&["id", "name", "pool", "address", "state"], json!({
            "id": string("eip-<n>"), "name": string("Name"), "pool": string("Pool ID"), "address": string("The public IPv4 address"),
            "state": {"type": "string", "enum": ["free", "bound", "attached"]},
            "nic": string("bound: the NIC ID"),
            "nat_gateway": string("attached: the NAT gateway ID"),
            "snat_blocks": {"type": "object", "description": "SNAT port blocks (256 ports from 1024 + 256*n) by host, assigned by the controller",
                "additionalProperties": {"type": "array", "items": {"type": "integer"}}},
        }), json!({"id": "eip-1", "name": "web-ip", "pool": "eipp-1", "address": "203.0.113.0", "state": "bound", "nic": "nic-1"})),
        "EipBind": object(&["nic"], json!({"nic": string("NIC ID or name")}), json!({"nic": "web1"})),
        "EipAttach": object(&["eip"], json!({"eip": string("A free EIP (ID, name or address)")}), json!({"eip": "e3"})),
        "SnatSpec": object(&["eips"], snat_props(false), json!({"cidr": "10.0.2.0/24", "eips": ["e1"]})),
        "SnatEntry": object(&["id", "eips"], snat_props(true), json!({"id": "snat-1", "subnet": "subnet-1", "eips": ["eip-1"]})),
        "DnatSpec": object(&["eip", "protocol", "public_port", "private_ip"], json!({
            "eip": string("One of the gateway's EIPs (ID, name or address), serving no SNAT"),
            "protocol": nat_protocol(),
            "public_port": integer("1 to 65535"),
            "private_ip": string("An address in one of the VPC's subnets"),
            "private_port": integer("1 to 65535 (default: the public port)"),
        }), json!({"eip": "e2", "protocol": "tcp", "public_port": 8080, "private_ip": "10.0.1.4", "private_port": 80})),
        "DnatEntry": object(&["id", "eip", "protocol", "public_port", "private_ip", "private_port"], json!({
            "id": string("dnat-<n>"), "eip": string("EIP ID"), "protocol": nat_protocol(),
            "public_port": integer("Port"), "private_ip": string("IPv4"), "private_port": integer("Port"),
        }), json!({"id": "dnat-1", "eip": "eip-2", "protocol": "tcp", "public_port": 8080, "private_ip": "10.0.1.4", "private_port": 80})),
        "NatGatewaySpec": object(&["vpc", "subnet"], json!({
            "name": string("Unique name (default: the ID)"),
            "vpc": string("VPC ID or name"), "subnet": string("Subnet ID or name within the VPC"),
            "eips": array_of(string("A free EIP to attach (ID, name or address)")),
            "snat": array_of(schema_ref("SnatSpec")), "dnat": array_of(schema_ref("DnatSpec")),
        }), json!({"name": "gw", "vpc": "tenant-a", "subnet": "web", "eips": ["e1", "e2"],
                   "snat": [{"subnet": "web", "eips": ["e1"]}],
                   "dnat": [{"eip": "e2", "protocol": "tcp", "public_port": 443, "private_ip": "10.0.1.10"}]})),
        "NatGateway": object(&["id", "name", "vpc", "subnet", "eips", "snat", "dnat"], json!({
            "id": string("natgw-<n>"), "name": string("Name"), "vpc": string("VPC ID"), "subnet": string("Subnet ID"),
            "eips": array_of(string("Attached EIP ID")),
            "snat": array_of(schema_ref("SnatEntry")), "dnat": array_of(schema_ref("DnatEntry")),
        }), json!({"id": "natgw-1", "name": "gw", "vpc": "vpc-1", "subnet": "subnet-1", "eips": ["eip-1"],
                   "snat": [{"id": "snat-1", "cidr": "10.0.0.0/16", "eips": ["eip-1"]}], "dnat": []})),
    });
    let mut schemas = json!({
        "Error": object(&["error"], json!({"error": object(
            &["kind", "field", "reason"],
            json!({
                "kind": {"type": "string", "enum": ["invalid", "not_found", "conflict", "internal"]},
                "field": string("The offending field, e.g. `cidr` or `vpcs[0].subnets[1].cidr`"),
                "reason": string("Why"),
                "dependents": array_of(string("`kind/id` of a resource in the way")),
            }),
            json!({"kind": "invalid", "field": "cidr", "reason": "prefix length 7 is outside /8../28"}),
        )}), json!({"error": {"kind": "conflict", "field": "vpc", "reason": "still in use", "dependents": ["subnet/subnet-1"]}})),
        "HostSpec": object(&["name", "underlay_ip", "underlay_ifname"], json!({
            "name": string("Host name (its ID)"),
            "underlay_ip": string("The host's VTEP (IPv4)"),
            "underlay_ifname": string("The host's interface toward the fabric"),
            "router_mac": string("Virtual router MAC toward VMs (derived from the name when absent)"),
            "underlay_mtu": integer("Fabric MTU (default 1500); VMs get 50 bytes less"),
            "public_gateway": string("The fabric's border router (underlay IPv4): where NATed Internet traffic goes"),
        }), json!({"name": "h1", "underlay_ip": "192.0.2.1", "underlay_ifname": "ul0"})),
        "Host": object(&["name", "underlay_ip", "underlay_ifname", "router_mac", "underlay_mtu"], json!({
            "name": string("Host name"),
            "underlay_ip": string("VTEP address"),
            "underlay_ifname": string("Fabric interface"),
            "router_mac": string("Virtual router MAC"),
            "underlay_mtu": integer("Fabric MTU"),
            "public_gateway": string("Border router for NATed Internet traffic (absent: none)"),
            "health_check_ip": string("Source of this host's load balancer health checks (from 100.64.0.0/10)"),
        }), json!({"name": "h1", "underlay_ip": "192.0.2.1", "underlay_ifname": "ul0", "router_mac": "06:00:00:00:00:01", "underlay_mtu": 1500})),
        "VpcSpec": object(&["cidr"], json!({
            "name": string("Unique name (default: the ID)"),
            "cidr": string("IPv4 CIDR, /8 to /28; may overlap other VPCs'"),
        }), json!({"name": "tenant-a", "cidr": "10.0.0.0/16"})),
        "Vpc": object(&["id", "name", "cidr", "vni"], json!({
            "id": string("vpc-<n>"), "name": string("Name"), "cidr": string("IPv4 CIDR"),
            "vni": integer("VXLAN network identifier, unique, never reused"),
        }), json!({"id": "vpc-1", "name": "tenant-a", "cidr": "10.0.0.0/16", "vni": 1})),
        "SubnetSpec": object(&["vpc", "cidr"], json!({
            "vpc": string("VPC ID or name"), "name": string("Unique within the VPC"),
            "cidr": string("Inside the VPC, overlapping no sibling, at most /28"),
        }), json!({"vpc": "tenant-a", "name": "web", "cidr": "10.0.1.0/24"})),
        "Subnet": object(&["id", "vpc", "name", "cidr", "gateway"], json!({
            "id": string("subnet-<n>"), "vpc": string("VPC ID"), "name": string("Name"), "cidr": string("IPv4 CIDR"),
            "gateway": string("First host address, answered by the virtual router"),
        }), json!({"id": "subnet-1", "vpc": "vpc-1", "name": "web", "cidr": "10.0.1.0/24", "gateway": "10.0.1.1"})),
        "NicSpec": object(&["vpc", "subnet", "host", "ifname"], json!({
            "name": string("Unique name (default: the ID)"), "vpc": string("VPC ID or name"),
            "subnet": string("Subnet ID or name within the VPC"), "host": string("Host name"),
            "ifname": string("Host-side interface of the VM"),
            "ip": string("Fixed IPv4 (lowest free address when absent)"), "mac": string("MAC (allocated when absent)"),
            "source_check": boolean("Drop packets not from the NIC's own IP (default true; off for appliances)"),
            "security_groups": array_of(string("1 to 5 groups of the NIC's VPC (ID or name); default: the VPC's `default` group")),
        }), json!({"name": "web1", "vpc": "tenant-a", "subnet": "web", "host": "h1", "ifname": "vm-web1", "security_groups": ["web"]})),
        "NicUpdate": object(&[], json!({
            "host": string("Move to this host"), "ifname": string("New host-side interface"),
            "source_check": boolean("Source check on or off"),
            "security_groups": array_of(string("Replace the NIC's groups: 1 to 5 of its VPC (ID or name)")),
        }), json!({"host": "h2", "ifname": "vm-web1"})),
        "Nic": object(&["id", "name", "vpc", "subnet", "host", "ifname", "ip", "mac", "source_check"], json!({
            "id": string("nic-<n>"), "name": string("Name"), "vpc": string("VPC ID"), "subnet": string("Subnet ID"),
            "host": string("Host name"), "ifname": string("Host-side interface"), "ip": string("IPv4"), "mac": string("MAC"),
            "source_check": boolean("Source check"),
            "security_groups": array_of(string("Security group ID")),
            "system_rules": array_of(schema_ref("SgRule")),
        }), json!({"id": "nic-1", "name": "web1", "vpc": "vpc-1", "subnet": "subnet-1", "host": "h1", "ifname": "vm-web1", "ip": "10.0.1.4", "mac": "02:73:6c:00:00:01", "source_check": true, "security_groups": ["sg-1"]})),
        "NextHop": next_hop,
        "RouteSpec": object(&["vpc", "destination", "next_hop"], json!({
            "vpc": string("VPC ID or name"), "destination": string("Destination CIDR"), "next_hop": schema_ref("NextHop"),
        }), json!({"vpc": "tenant-a", "destination": "0.0.0.0/0", "next_hop": {"type": "nic", "nic": "fw0"}})),
        "Route": object(&["vpc", "destination", "next_hop"], json!({
            "vpc": string("VPC ID"), "destination": string("Destination CIDR"), "next_hop": schema_ref("NextHop"),
        }), json!({"vpc": "vpc-1", "destination": "0.0.0.0/0", "next_hop": {"type": "nic", "nic": "nic-3"}})),
        "RouteTarget": route_target,
        "RouteTableEntry": object(&["destination", "target", "system"], json!({
            "destination": string("Destination CIDR"), "target": schema_ref("RouteTarget"),
            "system": boolean("A subnet's implicit route"),
        }), json!({"destination": "10.0.1.0/24", "target": {"type": "local", "subnet": "subnet-1"}, "system": true})),
        "PeeringSpec": object(&["vpc", "peer_vpc"], json!({
            "name": string("Unique name (default: the ID)"), "vpc": string("Requester VPC"), "peer_vpc": string("Accepter VPC"),
        }), json!({"name": "a-to-c", "vpc": "tenant-a", "peer_vpc": "tenant-c"})),
        "Peering": object(&["id", "name", "vpc", "peer_vpc", "state"], json!({
            "id": string("pcx-<n>"), "name": string("Name"), "vpc": string("Requester VPC ID"), "peer_vpc": string("Accepter VPC ID"),
            "state": {"type": "string", "enum": ["pending", "active"]},
        }), json!({"id": "pcx-1", "name": "a-to-c", "vpc": "vpc-1", "peer_vpc": "vpc-3", "state": "pending"})),
        "TopologySubnet": object(&["name", "cidr"], json!({"name": string("Name"), "cidr": string("CIDR")}), json!({"name": "web", "cidr": "10.0.1.0/24"})),
        "TopologyRoute": object(&["destination", "next_hop"], json!({"destination": string("CIDR"), "next_hop": schema_ref("NextHop")}), json!({"destination": "0.0.0.0/0", "next_hop": {"type": "blackhole"}})),
        "TopologyVpc": object(&["name", "cidr"], json!({
            "name": string("Name"), "cidr": string("CIDR"),
            "subnets": array_of(schema_ref("TopologySubnet")), "routes": array_of(schema_ref("TopologyRoute")),
            "security_groups": array_of(schema_ref("TopologySecurityGroup")),
        }), json!({"name": "tenant-a", "cidr": "10.0.0.0/16", "subnets": [{"name": "web", "cidr": "10.0.1.0/24"}]})),
        "TopologyNic": object(&["name", "vpc", "subnet", "host", "ifname"], json!({
            "name": string("Name"), "vpc": string("VPC name"), "subnet": string("Subnet name"), "host": string("Host"),
            "ifname": string("Host-side interface"), "ip": string("Fixed IPv4"), "mac": string("MAC"),
            "source_check": boolean("Source check (default true)"),
            "security_groups": array_of(string("Group name in the NIC's VPC; absent: the default group for a new NIC, unchanged for an existing one")),
        }), json!({"name": "web1", "vpc": "tenant-a", "subnet": "web", "host": "h1", "ifname": "vm-web1", "ip": "10.0.1.10"})),
        "TopologyPeering": object(&["name", "vpc", "peer_vpc"], json!({
            "name": string("Name"), "vpc": string("Requester VPC"), "peer_vpc": string("Accepter VPC"),
            "accepted": boolean("Accept it too"),
        }), json!({"name": "a-to-c", "vpc": "tenant-a", "peer_vpc": "tenant-c", "accepted": true})),
        "Topology": object(&[], json!({
            "hosts": array_of(schema_ref("HostSpec")), "vpcs": array_of(schema_ref("TopologyVpc")),
            "nics": array_of(schema_ref("TopologyNic")), "peerings": array_of(schema_ref("TopologyPeering")),
            "blocklist": array_of(schema_ref("BlocklistSpec")),
            "eip_pools": array_of(schema_ref("EipPoolSpec")),
            "eips": array_of(schema_ref("EipSpec")),
            "nat_gateways": array_of(schema_ref("NatGatewaySpec")),
            "load_balancers": array_of(schema_ref("LoadBalancerSpec")),
        }), json!({"hosts": [{"name": "h1", "underlay_ip": "192.0.2.1", "underlay_ifname": "ul0"}], "vpcs": [{"name": "tenant-a", "cidr": "10.0.0.0/16"}]})),
        "ApplySummary": object(&["created", "updated", "unchanged"], json!({
            "created": names.clone(), "updated": names, "unchanged": integer("Resources already as declared"),
        }), json!({"created": ["vpc/tenant-a"], "updated": [], "unchanged": 3})),
        "AgentTables": object(&["generation", "registered"], json!({
            "generation": integer("Intent generation the tables were compiled from"),
            "registered": boolean("Whether the host is in the intent (else the tables are empty)"),
            "tables": {"type": "object", "description": "The host's map entries (HostTables): underlay, ports, endpoints, routes, VNIs, remote VTEPs, security-group tables (NIC policies and the policies' trie entries) and the blocklist. Absent when delta is given"},
            "base": integer("With delta: the generation (the request's have=) it applies to"),
            "delta": {"type": "object", "description": "The change from the tables of generation base (TablesDelta): per table, keys removed and entries added or replaced"},
        }), json!({"generation": 7, "registered": false, "tables": {"underlay": null, "ports": [], "endpoints": [], "routes": [], "vnis": [], "remote_vteps": []}})),
    });
    let protocol = || json!({"type": "string", "enum": ["tcp", "udp"]});
    let scheduler = || json!({"type": "string", "enum": ["maglev", "source_ip", "least_conn"], "description": "maglev: weighted consistent hashing of the 5-tuple; source_ip: of the client address (affinity); least_conn: fewest active connections per weight (at most 64 backends)"});
    let all_down = || json!({"type": "string", "enum": ["fail_open", "fail_closed"], "description": "When every backend is unhealthy: use them all (default) or drop new flows"});
    let hc_props = |resource: bool| {
        json!({
            "type": {"type": "string", "enum": ["tcp", "http"], "description": if resource { "tcp: connect; http: GET path" } else { "tcp (default): connect; http: GET path" }},
            "path": string("http: the path, starting with '/' (default /)"),
            "expected_status": array_of(integer("http: a healthy status, 100 to 599 (default [200])")),
            "port": integer("Checked port (default: each backend's port)"),
            "interval_ms": integer("1000 to 60000 (default 2000)"),
            "timeout_ms": integer("Shorter than the interval (default 1000)"),
            "healthy_threshold": integer("Successes to become healthy, 1 to 10 (default 3)"),
            "unhealthy_threshold": integer("Failures to become unhealthy, 1 to 10 (default 3)"),
        })
    };
    let lb_schemas = json!({
        "HealthCheckSpec": object(&[], hc_props(false), json!({"type": "http", "path": "/healthz", "expected_status": [200, 204], "interval_ms": 2000})),
        "HealthCheck": object(&["type", "interval_ms", "timeout_ms", "healthy_threshold", "unhealthy_threshold"], hc_props(true),
            json!({"type": "tcp", "interval_ms": 2000, "timeout_ms": 1000, "healthy_threshold": 3, "unhealthy_threshold": 3})),
        "BackendSpec": object(&["port"], json!({
            "nic": string("A NIC of the VPC (ID or name); or ip"),
            "ip": string("A private IP inside a subnet of the VPC; or nic"),
            "port": integer("1 to 65535"),
            "weight": integer("0 (drain) to 100 (default 100)"),
        }), json!({"nic": "web1", "port": 8080, "weight": 50})),
        "BackendUpdate": object(&["weight"], json!({"weight": integer("0 (drain) to 100")}), json!({"weight": 0})),
        "LbBackend": object(&["id", "ip", "port", "weight", "slot"], json!({
            "id": string("lbb-<n>"), "nic": string("NIC ID, when given as a NIC"), "ip": string("Backend IPv4"),
            "port": integer("Port"), "weight": integer("0 (drain) to 100"),
            "slot": integer("Datapath backend slot (stable while the backend exists)"),
        }), json!({"id": "lbb-1", "nic": "nic-1", "ip": "10.0.1.4", "port": 8080, "weight": 100, "slot": 0})),
        "ListenerSpec": object(&["protocol", "port"], json!({
            "protocol": protocol(), "port": integer("1 to 65535; one listener per (protocol, port)"),
            "scheduler": scheduler(), "health_check": schema_ref("HealthCheckSpec"), "all_down": all_down(),
            "backends": array_of(schema_ref("BackendSpec")),
        }), json!({"protocol": "tcp", "port": 443, "scheduler": "source_ip", "backends": [{"nic": "web1", "port": 8443}]})),
        "LbListener": object(&["id", "protocol", "port", "scheduler", "health_check", "all_down", "backends", "slot"], json!({
            "id": string("lbl-<n>"), "protocol": protocol(), "port": integer("Port"), "scheduler": scheduler(),
            "health_check": schema_ref("HealthCheck"), "all_down": all_down(),
            "backends": array_of(schema_ref("LbBackend")),
            "slot": integer("Datapath table slot (stable while the listener exists)"),
        }), json!({"id": "lbl-1", "protocol": "tcp", "port": 80, "scheduler": "maglev",
                   "health_check": {"type": "tcp", "interval_ms": 2000, "timeout_ms": 1000, "healthy_threshold": 3, "unhealthy_threshold": 3},
                   "all_down": "fail_open", "backends": [], "slot": 0})),
        "LoadBalancerSpec": object(&["vpc", "subnet"], json!({
            "name": string("Unique name (default: the ID)"), "vpc": string("VPC ID or name"),
            "subnet": string("Subnet ID or name within the VPC: where the VIP is"),
            "vip": string("The VIP (default: the subnet's lowest free address); no NIC or other VIP may have it"),
            "listeners": array_of(schema_ref("ListenerSpec")),
        }), json!({"name": "web", "vpc": "tenant-a", "subnet": "web", "listeners": [{"protocol": "tcp", "port": 80, "backends": [{"nic": "web1", "port": 8080}]}]})),
        "LoadBalancer": object(&["id", "name", "vpc", "subnet", "vip", "listeners"], json!({
            "id": string("lb-<n>"), "name": string("Name"), "vpc": string("VPC ID"), "subnet": string("Subnet ID"),
            "vip": string("The VIP"), "listeners": array_of(schema_ref("LbListener")),
        }), json!({"id": "lb-1", "name": "web", "vpc": "vpc-1", "subnet": "subnet-1", "vip": "10.0.1.5", "listeners": []})),
        "LastCheck": object(&["ok", "latency_ms", "detail", "at"], json!({
            "ok": boolean("The check passed"), "latency_ms": {"type": "number", "description": "How long it took"},
            "detail": string("e.g. connected, HTTP 503, timeout"), "at": integer("When: ms since the Unix epoch"),
        }), json!({"ok": false, "latency_ms": 1000.0, "detail": "timeout after 1000 ms", "at": 1_764_000_000_000u64})),
        "BackendStatus": object(&["id", "ip", "port", "weight", "health", "active_connections"], json!({
            "id": string("lbb-<n>"), "nic": string("NIC ID, when given as a NIC"), "ip": string("Backend IPv4"), "port": integer("Port"),
            "weight": integer("0 (drain) to 100"),
            "health": {"type": "string", "enum": ["healthy", "unhealthy", "unknown"]},
            "active_connections": integer("Flows pinned to it, over all hosts"),
            "last_check": schema_ref("LastCheck"),
        }), json!({"id": "lbb-1", "ip": "10.0.1.4", "port": 8080, "weight": 100, "health": "unknown", "active_connections": 0})),
        "ListenerStatus": object(&["id", "protocol", "port", "scheduler", "backends"], json!({
            "id": string("lbl-<n>"), "protocol": protocol(), "port": integer("Port"), "scheduler": scheduler(),
            "backends": array_of(schema_ref("BackendStatus")),
        }), json!({"id": "lbl-1", "protocol": "tcp", "port": 80, "scheduler": "maglev", "backends": []})),
        "LbStatus": object(&["load_balancer", "name", "vip", "listeners"], json!({
            "load_balancer": string("lb-<n>"), "name": string("Name"), "vip": string("The VIP"),
            "listeners": array_of(schema_ref("ListenerStatus")),
        }), json!({"load_balancer": "lb-1", "name": "web", "vip": "10.0.1.5", "listeners": []})),
    });
    for (name, schema) in sg_schemas
        .as_object()
        .into_iter()
        .chain(nat_schemas.as_object())
        .chain(lb_schemas.as_object())
        .flatten()
    {
        schemas[name] = schema.clone();
    }

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Sluice intent API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "VPCs, subnets, hosts, NICs, routes, peerings, security groups, the operator blocklist, EIP pools, elastic IPs, NAT gateways and load balancers. Every request is all or nothing; every change answers with the header `sluice-generation`, the intent generation it produced.",
        },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

/// Checks `value` against `schema` (the subset this document uses); returns what differs.
pub fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = variants
            .iter()
            .filter(|v| check(doc, v, value, at).is_empty())
            .count();
        return if matching == 1 {
            vec![]
        } else {
            vec![format!("{at}: matches {matching} of the oneOf variants")]
        };
    }
    let mut wrong = vec![];
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                return vec![format!("{at}: not an object")];
            };
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for req in schema["required"].as_array().into_iter().flatten() {
                    let req = req.as_str().unwrap_or_default();
                    if !obj.contains_key(req) {
                        wrong.push(format!("{at}.{req}: required but missing"));
                    }
                }
                check_properties(doc, props, obj, at, &mut wrong);
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (k, item) in items.iter().enumerate() {
                    wrong.extend(check(doc, &schema["items"], item, &format!("{at}[{k}]")));
                }
            }
            None => wrong.push(format!("{at}: not an array")),
        },
        Some("string") => match value.as_str() {
            Some(s) => {
                if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
                    if !allowed.iter().any(|a| a == s) {
                        wrong.push(format!("{at}: {s:?} is not one of {allowed:?}"));
                    }
                }
            }
            None => wrong.push(format!("{at}: not a string")),
        },
        Some("integer") if !value.is_u64() && !value.is_i64() => {
            wrong.push(format!("{at}: not an integer"))
        }
        Some("boolean") if !value.is_boolean() => wrong.push(format!("{at}: not a boolean")),
        _ => {}
    }
    wrong
}

fn check_properties(
    doc: &Value,
    props: &Map<String, Value>,
    obj: &Map<String, Value>,
    at: &str,
    wrong: &mut Vec<String>,
) {
    for (key, v) in obj {
        match props.get(key) {
            Some(p) => wrong.extend(check(doc, p, v, &format!("{at}.{key}"))),
            None => wrong.push(format!("{at}.{key}: not in the schema")),
        }
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{api::router, lb_status as status, tests::TempController};
    use crate::intent::*;
    use axum::{body::Body, http::StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn doc() -> Value {
        serde_json::from_str(&DOCUMENT).unwrap()
    }

    /// Deserializes a schema's example into the Rust type of the same name.
    fn parses_as(name: &str, example: &Value) -> Result<(), String> {
        fn p<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
            serde_json::from_value::<T>(v.clone())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        match name {
            "Error" => p::<crate::controller::api::ErrorBody>(example),
            "HostSpec" => p::<HostSpec>(example),
            "Host" => p::<Host>(example),
            "VpcSpec" => p::<VpcSpec>(example),
            "Vpc" => p::<Vpc>(example),
            "SubnetSpec" => p::<SubnetSpec>(example),
            "Subnet" => p::<Subnet>(example),
            "NicSpec" => p::<NicSpec>(example),
            "NicUpdate" => p::<NicUpdate>(example),
            "Nic" => p::<Nic>(example),
            "NextHop" => p::<NextHop>(example),
            "RouteSpec" => p::<RouteSpec>(example),
            "Route" => p::<Route>(example),
            "RouteTarget" => p::<RouteTarget>(example),
            "RouteTableEntry" => p::<RouteTableEntry>(example),
            "PeeringSpec" => p::<PeeringSpec>(example),
            "Peering" => p::<Peering>(example),
            "TopologySubnet" => p::<TopologySubnet>(example),
            "TopologyRoute" => p::<TopologyRoute>(example),
            "TopologyVpc" => p::<TopologyVpc>(example),
            "TopologyNic" => p::<TopologyNic>(example),
            "TopologyPeering" => p::<TopologyPeering>(example),
            "Topology" => p::<Topology>(example),
            "ApplySummary" => p::<ApplySummary>(example),
            "AgentTables" => p::<crate::controller::api::AgentTables>(example),
            "TopologySecurityGroup" => p::<TopologySecurityGroup>(example),
            "SgRuleSpec" => p::<SgRuleSpec>(example),
            "SgRule" => p::<SgRule>(example),
            "SecurityGroupSpec" => p::<SecurityGroupSpec>(example),
            "SecurityGroup" => p::<SecurityGroup>(example),
            "BlocklistSpec" => p::<BlocklistSpec>(example),
            "BlocklistEntry" => p::<BlocklistEntry>(example),
            "EipPoolSpec" => p::<EipPoolSpec>(example),
            "EipPool" => p::<EipPool>(example),
            "EipSpec" => p::<EipSpec>(example),
            "Eip" => p::<Eip>(example),
            "EipBind" => p::<EipBind>(example),
            "EipAttach" => p::<EipAttach>(example),
            "SnatSpec" => p::<SnatSpec>(example),
            "SnatEntry" => p::<SnatEntry>(example),
            "DnatSpec" => p::<DnatSpec>(example),
            "DnatEntry" => p::<DnatEntry>(example),
            "NatGatewaySpec" => p::<NatGatewaySpec>(example),
            "NatGateway" => p::<NatGateway>(example),
            "HealthCheckSpec" => p::<lb::HealthCheckSpec>(example),
            "HealthCheck" => p::<lb::HealthCheck>(example),
            "BackendSpec" => p::<lb::BackendSpec>(example),
            "BackendUpdate" => p::<lb::BackendUpdate>(example),
            "LbBackend" => p::<lb::LbBackend>(example),
            "ListenerSpec" => p::<lb::ListenerSpec>(example),
            "LbListener" => p::<lb::LbListener>(example),
            "LoadBalancerSpec" => p::<lb::LoadBalancerSpec>(example),
            "LoadBalancer" => p::<lb::LoadBalancer>(example),
            "LastCheck" => p::<status::LastCheck>(example),
            "BackendStatus" => p::<status::BackendStatus>(example),
            "ListenerStatus" => p::<status::ListenerStatus>(example),
            "LbStatus" => p::<status::LbStatus>(example),
            other => Err(format!("no Rust type is known for schema {other}")),
        }
    }

    #[test]
    fn every_example_is_the_rust_type_and_matches_its_schema() {
        let d = doc();
        assert_eq!(d["openapi"], "3.0.3");
        let schemas = d["components"]["schemas"].as_object().unwrap();
        assert!(schemas.len() >= 25, "{}", schemas.len());
        for (name, schema) in schemas {
            let example = &schema["example"];
            assert!(!example.is_null(), "{name} has no example");
            parses_as(name, example).unwrap_or_else(|e| panic!("{name}: {e}"));
            let wrong = check(&d, schema, example, name);
            assert!(wrong.is_empty(), "{name}: {wrong:?}");
        }
    }

    #[test]
    fn every_reference_points_at_a_schema() {
        let d = doc();
        let text = DOCUMENT.as_str();
        for r in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(d["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }

    #[test]
    fn the_checker_catches_missing_extra_and_mistyped_fields() {
        let d = doc();
        let s = schema_ref("Vpc");
        let good = json!({"id": "vpc-1", "name": "a", "cidr": "10.0.0.0/16", "vni": 1});
        assert!(check(&d, &s, &good, "vpc").is_empty());
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("vni");
        assert_eq!(
            check(&d, &s, &missing, "vpc"),
            ["vpc.vni: required but missing"]
        );
        let mut extra = good.clone();
        extra["colour"] = json!("red");
        assert_eq!(
            check(&d, &s, &extra, "vpc"),
            ["vpc.colour: not in the schema"]
        );
        let mut typed = good;
        typed["vni"] = json!("1");
        assert_eq!(check(&d, &s, &typed, "vpc"), ["vpc.vni: not an integer"]);
    }

    fn concrete(path: &str) -> String {
        path.replace("{name}", "h1")
            .replace("{vpc}", "a")
            .replace("{destination}", "0.0.0.0%2F0")
            .replace("{subnet}", "s1")
            .replace("{nic}", "fw0")
            .replace("{pcx}", "ac")
            .replace("{host}", "h1")
            .replace("{sg}", "web")
            // The setup's group's rule: after VPC a's and c's default groups' two each.
            .replace("{rule}", "sgr-5")
            .replace("{prefix}", "203.0.113.0%2F24")
            .replace("{pool}", "pub")
            .replace("{eip}", "e3")
            .replace("{gw}", "gw")
            .replace("{entry}", "snat-1")
            .replace("{lb}", "lb1")
            .replace("{listener}", "lbl-1")
            .replace("{backend}", "lbb-1")
    }

    /// Documented operations are served (answers come from a handler, not the router's
    /// fallback), methods the document does not list are not, and every successful answer
    /// validates against its documented schema.
    #[tokio::test]
    async fn the_router_serves_exactly_what_is_documented() {
        let t = TempController::new("openapi");
        let app = router(t.controller.clone());
        let d = doc();
        let examples = |name: &str| d["components"]["schemas"][name]["example"].to_string();
        // A cloud to talk about: host h1, VPCs a and c, subnet s1, NIC fw0, route, peering ac.
        let setup = [
            ("POST", "/v1/hosts", examples("HostSpec")),
            (
                "POST",
                "/v1/vpcs",
                r#"{"name":"a","cidr":"10.0.0.0/16"}"#.to_string(),
            ),
            (
                "POST",
                "/v1/vpcs",
                r#"{"name":"c","cidr":"10.1.0.0/16"}"#.to_string(),
            ),
            (
                "POST",
                "/v1/subnets",
                r#"{"vpc":"a","name":"s1","cidr":"10.0.1.0/24"}"#.to_string(),
            ),
            (
                "POST",
                "/v1/nics",
                r#"{"name":"fw0","vpc":"a","subnet":"s1","host":"h1","ifname":"vm-fw0"}"#
                    .to_string(),
            ),
            (
                "POST",
                "/v1/routes",
                r#"{"vpc":"a","destination":"0.0.0.0/0","next_hop":{"type":"nic","nic":"fw0"}}"#
                    .to_string(),
            ),
            (
                "POST",
                "/v1/peerings",
                r#"{"name":"ac","vpc":"a","peer_vpc":"c"}"#.to_string(),
            ),
            (
                "POST",
                "/v1/security-groups",
                examples("SecurityGroupSpec").replace("tenant-a", "a"),
            ),
            ("POST", "/v1/blocklist", examples("BlocklistSpec")),
            (
                "POST",
                "/v1/eip-pools",
                r#"{"name":"pub","cidrs":["198.51.100.0/28"]}"#.to_string(),
            ),
            ("POST", "/v1/eips", r#"{"name":"e1"}"#.to_string()),
            ("POST", "/v1/eips", r#"{"name":"e2"}"#.to_string()),
            ("POST", "/v1/eips", r#"{"name":"e3"}"#.to_string()),
            (
                "POST",
                "/v1/nat-gateways",
                examples("NatGatewaySpec")
                    .replace("tenant-a", "a")
                    .replace("web", "s1")
                    .replace("10.0.1.10", "10.0.1.4"),
            ),
            (
                "POST",
                "/v1/load-balancers",
                r#"{"name":"lb1","vpc":"a","subnet":"s1","listeners":[{"protocol":"tcp","port":80,"backends":[{"nic":"fw0","port":8080}]}]}"#
                    .to_string(),
            ),
        ];
        for (method, path, body) in setup {
            let (status, body) = send(&app, method, path, Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
        }

        let all = ["get", "post", "put", "patch", "delete"];
        let paths = d["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 44, "documented paths");
        // Reads and idempotent bodies first; deletes last (in an order dependents allow).
        let mut ops: Vec<(String, String, Value)> = vec![];
        for (path, item) in paths {
            for m in all {
                match item.get(m) {
                    Some(o) => ops.push((m.to_string(), path.clone(), o.clone())),
                    None => {
                        let (status, _) =
                            send(&app, &m.to_uppercase(), &concrete(path), None).await;
                        assert_eq!(
                            status,
                            StatusCode::METHOD_NOT_ALLOWED,
                            "{m} {path} is served but not documented"
                        );
                    }
                }
            }
        }
        let rank = |m: &str, p: &str| match (m, p) {
            ("delete", p) if p.contains("/backends/") => 4,
            ("delete", p) if p.contains("/listeners/") => 5,
            ("delete", p) if p.starts_with("/v1/load-balancers/") => 6,
            ("delete", p) if p.starts_with("/v1/nat-gateways/{gw}/") => 7,
            ("delete", p) if p.contains("rules") => 8,
            ("delete", p) if p.contains("security-groups") => 9,
            ("delete", p) if p.contains("routes") => 10,
            ("delete", p) if p.contains("peerings") => 11,
            ("delete", p) if p.contains("nics") => 12,
            ("delete", p) if p.contains("subnets") => 13,
            ("delete", p) if p.contains("vpcs") => 14,
            ("delete", _) => 15,
            _ => 0,
        };
        ops.sort_by_key(|(m, p, _)| rank(m, p));
        for (method, path, o) in ops {
            let body = o["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .map(|r| examples(r.trim_start_matches("#/components/schemas/")));
            let body = match (method.as_str(), path.as_str()) {
                // Examples that need the setup's names.
                ("patch", p) if p.contains("/backends/") => Some(r#"{"weight":0}"#.to_string()),
                ("patch", _) => Some(r#"{"source_check":false}"#.to_string()),
                ("put", "/v1/routes") | ("post", "/v1/routes") => Some(
                    r#"{"vpc":"a","destination":"10.9.0.0/16","next_hop":{"type":"blackhole"}}"#
                        .to_string(),
                ),
                ("put", _) => Some(examples("HostSpec")),
                ("post", "/v1/nics") => {
                    Some(r#"{"vpc":"a","subnet":"s1","host":"h1","ifname":"vm-x"}"#.to_string())
                }
                ("post", "/v1/subnets") => Some(r#"{"vpc":"a","cidr":"10.0.2.0/24"}"#.to_string()),
                ("post", "/v1/peerings") => Some(r#"{"vpc":"c","peer_vpc":"vpc-9"}"#.to_string()),
                ("post", "/v1/security-groups") => Some(r#"{"vpc":"a","name":"api"}"#.to_string()),
                ("post", "/v1/blocklist") => Some(r#"{"prefix":"198.51.100.0/24"}"#.to_string()),
                ("post", "/v1/eip-pools") => Some(r#"{"cidrs":["192.0.2.0/28"]}"#.to_string()),
                ("post", "/v1/eips") => Some(r#"{"pool":"pub"}"#.to_string()),
                ("post", "/v1/eips/{eip}/bind") => Some(r#"{"nic":"fw0"}"#.to_string()),
                ("post", "/v1/nat-gateways") => Some(r#"{"vpc":"a","subnet":"s1"}"#.to_string()),
                ("post", "/v1/load-balancers") => Some(r#"{"vpc":"a","subnet":"s1"}"#.to_string()),
                ("post", "/v1/load-balancers/{lb}/listeners") => Some(
                    r#"{"protocol":"udp","port":53,"backends":[{"ip":"10.0.1.60","port":53}]}"#
                        .to_string(),
                ),
                ("post", "/v1/load-balancers/{lb}/listeners/{listener}/backends") => {
                    Some(r#"{"ip":"10.0.1.50","port":8080,"weight":10}"#.to_string())
                }
                _ => body,
            };
            let (status, reply) = send(&app, &method.to_uppercase(), &concrete(&path), body).await;
            let documented = o["responses"].get(status.as_str());
            assert!(
                documented.is_some(),
                "{method} {path}: status {status} is not documented: {reply}"
            );
            // The router's own 404/405 have no JSON error body: only handlers answer here.
            assert!(status != StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if let Some(schema) = documented.unwrap()["content"]["application/json"].get("schema") {
                let v: Value = serde_json::from_str(&reply)
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}: {reply}"));
                let wrong = check(&d, schema, &v, &format!("{method} {path}"));
                assert!(wrong.is_empty(), "{wrong:?}");
            } else {
                assert!(
                    reply.is_empty(),
                    "{method} {path}: undocumented body {reply}"
                );
            }
        }
    }

    async fn send(
        app: &axum::Router,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> (StatusCode, String) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map(Body::from).unwrap_or_default())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into())
    }
}
