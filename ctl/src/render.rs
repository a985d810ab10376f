//! From an API answer to what `sluicectl` prints, in the chosen output format.

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::de::DeserializeOwned;
use sluice_dataplane::controller::lb_status::LbStatus;
use sluice_dataplane::intent::lb::{LbBackend, LbListener, LoadBalancer};
use sluice_dataplane::intent::{
    ApplySummary, BlocklistEntry, DnatEntry, Eip, EipPool, Host, NatGateway, Nic, Peering, Route,
    RouteTableEntry, SecurityGroup, SgRule, SnatEntry, Subnet, Vpc,
};

use crate::{
    resource::{Expect, Kind},
    table,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// The daemon's JSON as is, pretty JSON or YAML; `None` for tables.
pub fn document(value: &serde_json::Value, output: Output) -> Result<Option<String>> {
    Ok(match output {
        Output::Table => None,
        Output::Json => Some(format!("{}\n", serde_json::to_string_pretty(value)?)),
        Output::Yaml => Some(serde_yaml::to_string(value)?),
    })
}

fn typed<T: DeserializeOwned>(value: &serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(value.clone())
        .with_context(|| format!("the daemon's answer is not {what}: {value}"))
}

/// A single resource or a list of them; a single one is shown as a one-row table.
fn rows<T: DeserializeOwned>(value: &serde_json::Value, list: bool, what: &str) -> Result<Vec<T>> {
    if list {
        typed(value, &format!("a list of {what}s"))
    } else {
        Ok(vec![typed(value, &format!("a {what}"))?])
    }
}

/// The text for an answer. `value` is the body (`Null` for a 204).
pub fn answer(expect: &Expect, value: &serde_json::Value, output: Output) -> Result<String> {
    if let Expect::Deleted(what) = expect {
        // 204 has no body; the confirmation is the same in every format.
        return Ok(format!("deleted {what}\n"));
    }
    // `list rules` asks for a group: its rules are the answer, in every format.
    let rules;
    let value = match expect {
        Expect::Rules => {
            let g: SecurityGroup = typed(value, "a security group")?;
            rules = serde_json::to_value(&g.rules)?;
            &rules
        }
        _ => value,
    };
    if let Some(doc) = document(value, output)? {
        return Ok(doc);
    }
    let (kind, list) = match expect {
        Expect::One(k) => (*k, false),
        Expect::List(k) => (*k, true),
        Expect::RouteTable => {
            return Ok(table::route_table(&typed::<Vec<RouteTableEntry>>(
                value,
                "a route table",
            )?))
        }
        Expect::Rules => return Ok(table::rules(&typed::<Vec<SgRule>>(value, "rules")?)),
        Expect::Apply => {
            return Ok(table::apply_summary(&typed::<ApplySummary>(
                value,
                "an apply summary",
            )?))
        }
        Expect::LbStatus => {
            return Ok(table::lb_status(&typed::<LbStatus>(
                value,
                "a load balancer's status",
            )?))
        }
        Expect::Deleted(_) => unreachable!("handled above"),
    };
    Ok(match kind {
        Kind::Host => table::hosts(&rows::<Host>(value, list, "host")?),
        Kind::Vpc => table::vpcs(&rows::<Vpc>(value, list, "VPC")?),
        Kind::Subnet => table::subnets(&rows::<Subnet>(value, list, "subnet")?),
        Kind::Nic => table::nics(&rows::<Nic>(value, list, "NIC")?),
        Kind::Route => table::routes(&rows::<Route>(value, list, "route")?),
        Kind::Peering => table::peerings(&rows::<Peering>(value, list, "peering")?),
        Kind::SecurityGroup if list => {
            table::security_groups(&rows::<SecurityGroup>(value, list, "security group")?)
        }
        Kind::SecurityGroup => {
            table::security_group(&typed::<SecurityGroup>(value, "a security group")?)
        }
        Kind::Rule => table::rules(&rows::<SgRule>(value, list, "rule")?),
        Kind::Block => table::blocklist(&rows::<BlocklistEntry>(value, list, "blocklist entry")?),
        Kind::EipPool => table::eip_pools(&rows::<EipPool>(value, list, "EIP pool")?),
        Kind::Eip => table::eips(&rows::<Eip>(value, list, "EIP")?),
        Kind::NatGateway if list => {
            table::nat_gateways(&rows::<NatGateway>(value, list, "NAT gateway")?)
        }
        Kind::NatGateway => table::nat_gateway(&typed::<NatGateway>(value, "a NAT gateway")?),
        Kind::Snat => table::snat(&rows::<SnatEntry>(value, list, "SNAT entry")?),
        Kind::Dnat => table::dnat(&rows::<DnatEntry>(value, list, "DNAT entry")?),
        Kind::LoadBalancer if list => {
            table::load_balancers(&rows::<LoadBalancer>(value, list, "load balancer")?)
        }
        Kind::LoadBalancer => {
            table::load_balancer(&typed::<LoadBalancer>(value, "a load balancer")?)
        }
        Kind::LbListener => table::lb_listeners(&rows::<LbListener>(value, list, "listener")?),
        Kind::LbBackend => table::lb_backends(&rows::<LbBackend>(value, list, "backend")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vpc() -> serde_json::Value {
        json!({"id": "vpc-1", "name": "a", "cidr": "10.0.0.0/16", "vni": 1})
    }

    #[test]
    fn one_resource_is_a_one_row_table_and_a_list_many() {
        let one = answer(&Expect::One(Kind::Vpc), &vpc(), Output::Table).unwrap();
        assert_eq!(
            one,
            "ID     NAME  CIDR         VNI\nvpc-1  a     10.0.0.0/16    1\n"
        );
        let list = answer(
            &Expect::List(Kind::Vpc),
            &json!([vpc(), vpc()]),
            Output::Table,
        )
        .unwrap();
        assert_eq!(list.lines().count(), 3);
        let none = answer(&Expect::List(Kind::Vpc), &json!([]), Output::Table).unwrap();
        assert_eq!(none, "ID  NAME  CIDR  VNI\n");
    }

    #[test]
    fn json_and_yaml_show_the_answer_as_is() {
        let j = answer(&Expect::One(Kind::Vpc), &vpc(), Output::Json).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&j).unwrap(),
            vpc()
        );
        let y = answer(&Expect::One(Kind::Vpc), &vpc(), Output::Yaml).unwrap();
        assert_eq!(
            serde_yaml::from_str::<serde_json::Value>(&y).unwrap(),
            vpc()
        );
        assert!(y.contains("cidr: 10.0.0.0/16"), "{y}");
    }

    #[test]
    fn deleted_says_what_went_in_every_format() {
        for o in [Output::Table, Output::Json, Output::Yaml] {
            let t = answer(
                &Expect::Deleted("vpc/a".into()),
                &serde_json::Value::Null,
                o,
            );
            assert_eq!(t.unwrap(), "deleted vpc/a\n");
        }
    }

    #[test]
    fn an_answer_of_the_wrong_shape_is_an_error_not_a_panic() {
        let e = answer(&Expect::One(Kind::Nic), &vpc(), Output::Table).unwrap_err();
        assert!(format!("{e:#}").contains("is not a NIC"), "{e:#}");
    }
}
