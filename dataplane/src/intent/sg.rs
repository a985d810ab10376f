//! Security groups in the intent: resources, requests and their validated mutations
//! (pure, all or nothing, like `validate.rs`).
//!
//! A security group belongs to a VPC (ID `sg-<n>`, name unique within the VPC) and holds
//! rules (ID `sgr-<n>`): direction, protocol (`tcp`, `udp`, `icmp`, `all`), a port range
//! for tcp/udp or an ICMP type (and code) for icmp (absent: all), a remote (a CIDR, or a
//! group of the same VPC, meaning its members' current addresses), an action and a
//! priority (1 is evaluated first; on equal priority deny wins). A NIC's groups (1 to 5,
//! IDs in [`Nic::security_groups`]) combine by priority; a first packet no rule matches is
//! denied on ingress and allowed on egress.
//!
//! Default group. Every VPC is created with a group named `default` (as in AWS): it allows
//! ingress from its own members and all egress, both at priority [`MAX_PRIORITY`], so any
//! other rule of a NIC's groups decides first. A NIC created without groups gets it, so
//! VMs of one VPC reach each other out of the box while traffic from outside the VPC
//! (peerings included) needs a rule. Zero-trust tenants give their NICs their own groups
//! instead, or remove the default group's rules (they may edit them like any group's).
//! The default group cannot be deleted: it goes with its VPC.
//!
//! Limits: 5 groups per NIC; at most [`MAX_RULES_PER_NIC`] rules per direction over a
//! NIC's groups combined (and so per group), which is what the datapath's rule bitmaps
//! hold. A group that NICs use or that another group's rules reference cannot be deleted
//! (409 naming them); a VPC's other groups are dependents of the VPC.

use std::{collections::BTreeSet, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    model::*,
    validate::{check_description, check_name, parse_cidr, Change, ValidationError},
};

type Result<T, E = ValidationError> = std::result::Result<T, E>;

/// Groups a NIC may have.
pub const MAX_GROUPS_PER_NIC: usize = 5;
/// Rules per direction over one NIC's groups: the datapath's rule bitmap width.
pub const MAX_RULES_PER_NIC: usize = sluice_common::sg::MAX_RULES;
pub const MIN_PRIORITY: u32 = 1;
pub const MAX_PRIORITY: u32 = 65535;
/// Priority of system rules: before any a user may give (from [`MIN_PRIORITY`]).
pub const SYSTEM_PRIORITY: u32 = 0;
/// What the load balancers' system rule says it is for.
pub const SYSTEM_RULE_DESCRIPTION: &str = "load balancer health checks";

/// [`sluice_common::lb::HEALTH_CHECK_NET`] as a prefix.
pub fn health_check_net() -> Cidr {
    use sluice_common::lb::{HEALTH_CHECK_NET, HEALTH_CHECK_PREFIX};
    Cidr::new(
        std::net::Ipv4Addr::from(HEALTH_CHECK_NET),
        HEALTH_CHECK_PREFIX,
    )
    .expect("the health-check range is a prefix")
}

/// The name of the group every VPC is created with.
pub const DEFAULT_GROUP_NAME: &str = "default";

/// The default group's rules: ingress from its members, all egress; evaluated last.
fn default_group_rules() -> Vec<SgRuleSpec> {
    let all = |direction, cidr: Option<&str>, group: Option<&str>, description: &str| SgRuleSpec {
        direction,
        protocol: Protocol::All,
        ports: None,
        icmp_type: None,
        icmp_code: None,
        cidr: cidr.map(Into::into),
        group: group.map(Into::into),
        action: Action::Allow,
        priority: MAX_PRIORITY as i64,
        description: Some(description.into()),
    };
    vec![
        all(
            Direction::Ingress,
            None,
            Some(DEFAULT_GROUP_NAME),
            "from members of this group",
        ),
        all(Direction::Egress, Some("0.0.0.0/0"), None, "all egress"),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Traffic to the NIC.
    Ingress,
    /// Traffic from the NIC.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// Every IP protocol (ports and ICMP types do not apply).
    All,
}

impl Protocol {
    /// The IP protocol number; `None` for `all`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(sluice_common::proto::IPPROTO_TCP),
            Protocol::Udp => Some(sluice_common::proto::IPPROTO_UDP),
            Protocol::Icmp => Some(sluice_common::proto::IPPROTO_ICMP),
            Protocol::All => None,
        }
    }
}

/// Deny sorts first: on equal priority it wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Deny,
    Allow,
}

/// An inclusive port range, written `80` or `8000-8100`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.from..=self.to).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim().parse::<u16>().map_err(|_| {
                format!("{s:?} is not a port range: expected PORT or FROM-TO, ports 0 to 65535")
            })
        };
        let (from, to) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if from > to {
            return Err(format!("{s:?}: the range starts after it ends"));
        }
        Ok(PortRange { from, to })
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_number(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a rule's traffic comes from (ingress) or goes to (egress): flattened into the
/// rule as `cidr: ...` or `group: <id>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    Cidr(Cidr),
    /// A security group of the same VPC: its members' addresses.
    Group(String),
}

/// A rule of a security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgRule {
    pub id: String,
    pub direction: Direction,
    pub protocol: Protocol,
    /// tcp/udp only; absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// icmp only; absent: every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// icmp with a type only; absent: every code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    #[serde(flatten)]
    pub remote: Remote,
    pub action: Action,
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl SgRule {
    /// Same traffic, action and priority (what makes two rules duplicates).
    pub fn same_as(&self, o: &SgRule) -> bool {
        (
            self.direction,
            self.protocol,
            self.ports,
            self.icmp_type,
            self.icmp_code,
            &self.remote,
            self.action,
            self.priority,
        ) == (
            o.direction,
            o.protocol,
            o.ports,
            o.icmp_type,
            o.icmp_code,
            &o.remote,
            o.action,
            o.priority,
        )
    }
}

/// A security group: a VPC-scoped, named set of rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    /// The VPC's ID.
    pub vpc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// In the order they were added.
    #[serde(default)]
    pub rules: Vec<SgRule>,
}

impl SecurityGroup {
    /// How dependents lists name one of its rules: `rule/<group id>:<rule id>`.
    pub fn rule_reference(&self, rule: &SgRule) -> String {
        format!("rule/{}:{}", self.id, rule.id)
    }

    pub fn rules_in(&self, d: Direction) -> impl Iterator<Item = &SgRule> {
        self.rules.iter().filter(move |r| r.direction == d)
    }
}

/// A rule as requested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgRuleSpec {
    pub direction: Direction,
    pub protocol: Protocol,
    /// `80` or `8000-8100`; tcp/udp only.
    #[serde(
        default,
        deserialize_with = "opt_string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub ports: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<i64>,
    /// The remote: a CIDR, or a group of the same VPC (ID or name); exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub action: Action,
    pub priority: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Create a security group (optionally with its first rules).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupSpec {
    /// VPC ID or name.
    pub vpc: String,
    /// Defaults to the allocated ID; unique within the VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Rules may reference the group being created by its name.
    #[serde(default)]
    pub rules: Vec<SgRuleSpec>,
}

/// A string, or a number taken as its decimal string (YAML writes `ports: 80`).
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Str(String),
        Num(u64),
    }
    Ok(match S::deserialize(d)? {
        S::Str(s) => s,
        S::Num(n) => n.to_string(),
    })
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string_or_number(d).map(Some)
}

/// Serde default of counters added after the first stores were written.
pub(crate) fn first_counter() -> u64 {
    1
}

/// Group names follow the other names' rules and must not look like a group ID.
fn check_group_name(field: &str, name: &str) -> Result<()> {
    check_name(field, name)?;
    if let Some(n) = name.strip_prefix("sg-") {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::invalid(
                field,
                format!("{name:?} looks like an ID (sg-<number>); IDs are allocated"),
            ));
        }
    }
    Ok(())
}

fn byte(field: &str, what: &str, v: i64) -> Result<u8> {
    u8::try_from(v)
        .map_err(|_| ValidationError::invalid(field, format!("{v} is not an {what} (0 to 255)")))
}

impl Intent {
    pub fn security_groups(&self) -> impl Iterator<Item = &SecurityGroup> {
        self.security_groups.values()
    }

    /// Groups of one VPC (by its ID), in name order.
    pub fn security_groups_of<'a>(
        &'a self,
        vpc_id: &'a str,
    ) -> impl Iterator<Item = &'a SecurityGroup> + 'a {
        let from = (NameKind::SecurityGroup, vpc_id.to_string(), String::new());
        self.names
            .range(from..)
            .take_while(move |((kind, scope, _), _)| {
                *kind == NameKind::SecurityGroup && scope == vpc_id
            })
            .filter_map(|(_, id)| self.security_groups.get(id))
    }

    /// A group by ID, or by name within `vpc` (ID or name). Without `vpc`, a bare name
    /// matches only if exactly one VPC has a group of that name.
    pub fn security_group(&self, vpc: Option<&str>, key: &str) -> Option<&SecurityGroup> {
        match vpc {
            Some(v) => {
                let vpc = self.vpc(v)?;
                match self.security_groups.get(key) {
                    Some(g) if g.vpc == vpc.id => Some(g),
                    Some(_) => None,
                    None => self
                        .lookup_name(NameKind::SecurityGroup, &vpc.id, key)
                        .and_then(|id| self.security_groups.get(id)),
                }
            }
            None => self.security_groups.get(key).or_else(|| {
                let mut hits = self.security_groups.values().filter(|g| g.name == key);
                match (hits.next(), hits.next()) {
                    (Some(g), None) => Some(g),
                    _ => None,
                }
            }),
        }
    }

    /// NICs that have group `id` (its members).
    pub fn security_group_members<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Nic> {
        self.nics
            .values()
            .filter(move |n| n.security_groups.iter().any(|g| g == id))
    }

    /// The default group of a VPC (by its ID).
    pub fn default_security_group(&self, vpc_id: &str) -> Option<&SecurityGroup> {
        self.lookup_name(NameKind::SecurityGroup, vpc_id, DEFAULT_GROUP_NAME)
            .and_then(|id| self.security_groups.get(id))
    }

    /// The same intent with a default group in every VPC and every NIC in at least one
    /// group: what stores written before default groups existed are brought to on open.
    pub fn with_default_security_groups(&self) -> Intent {
        let mut i = self.clone();
        let vpcs: Vec<String> = i.vpcs.keys().cloned().collect();
        for vpc in vpcs {
            if i.default_security_group(&vpc).is_none() {
                i.create_default_security_group_mut(&vpc)
                    .expect("a default group is valid in any VPC");
            }
        }
        let bare: Vec<String> = i
            .nics
            .values()
            .filter(|n| n.security_groups.is_empty())
            .map(|n| n.id.clone())
            .collect();
        for id in bare {
            let vpc = i.nics[&id].vpc.clone();
            let g = i.default_security_group(&vpc).map(|g| g.id.clone());
            if let (Some(g), Some(n)) = (g, i.nics.get_mut(&id)) {
                n.security_groups = vec![g];
            }
        }
        i
    }

    pub(super) fn create_default_security_group_mut(
        &mut self,
        vpc_id: &str,
    ) -> Result<SecurityGroup> {
        self.create_security_group_mut(SecurityGroupSpec {
            vpc: vpc_id.to_string(),
            name: Some(DEFAULT_GROUP_NAME.into()),
            description: Some("members reach each other; all egress allowed".into()),
            rules: default_group_rules(),
        })
    }

    /// The groups a new NIC of `vpc_id` gets: those requested (checked), or the default.
    pub(super) fn new_nic_security_groups(
        &self,
        field: &str,
        vpc_id: &str,
        requested: Option<&[String]>,
    ) -> Result<Vec<String>> {
        match requested {
            Some(groups) => self.check_nic_security_groups(field, vpc_id, groups),
            None => {
                let g = self.default_security_group(vpc_id).ok_or_else(|| {
                    ValidationError::invalid(
                        field,
                        format!(
                            "VPC {vpc_id} has no default security group; name the NIC's groups"
                        ),
                    )
                })?;
                // The default group may have been given more rules than a NIC can hold.
                self.check_nic_security_groups(field, vpc_id, std::slice::from_ref(&g.id))
            }
        }
    }

    /// Create a group, allocating its ID and its rules' IDs.
    pub fn create_security_group(
        &self,
        spec: SecurityGroupSpec,
    ) -> Result<(Intent, SecurityGroup)> {
        self.mutate(|i| i.create_security_group_mut(spec))
    }

    /// Delete a group (ID, or name within `vpc`); 409 naming the NICs that have it and the
    /// other groups' rules that reference it.
    pub fn delete_security_group(&self, vpc: Option<&str>, key: &str) -> Result<Intent> {
        self.mutate(|i| i.delete_security_group_mut(vpc, key))
            .map(|(i, ())| i)
    }

    /// Add a rule to a group; 409 if the group has the same rule already, or if a NIC
    /// would exceed [`MAX_RULES_PER_NIC`] in that direction.
    pub fn add_security_group_rule(
        &self,
        vpc: Option<&str>,
        group: &str,
        spec: SgRuleSpec,
    ) -> Result<(Intent, SgRule)> {
        self.mutate(|i| {
            let g = i.resolve_security_group("security_group", vpc, group)?;
            i.add_rule_mut(&g.id, spec)
        })
    }

    /// Remove a rule (by ID) from a group; returns the group as it is now.
    pub fn remove_security_group_rule(
        &self,
        vpc: Option<&str>,
        group: &str,
        rule: &str,
    ) -> Result<(Intent, SecurityGroup)> {
        self.mutate(|i| {
            let mut g = i.resolve_security_group("security_group", vpc, group)?;
            let before = g.rules.len();
            g.rules.retain(|r| r.id != rule);
            if g.rules.len() == before {
                return Err(ValidationError::not_found(
                    "rule",
                    format!("security group {} has no rule {rule:?}", g.id),
                ));
            }
            i.security_groups.insert(g.id.clone(), g.clone());
            Ok(g)
        })
    }

    /// Replace a NIC's groups (1 to 5, of the NIC's VPC, by ID or name).
    pub fn set_nic_security_groups(&self, nic: &str, groups: Vec<String>) -> Result<(Intent, Nic)> {
        self.mutate(|i| {
            let mut n = i.resolve_nic("nic", nic)?;
            n.security_groups = i.check_nic_security_groups("security_groups", &n.vpc, &groups)?;
            i.check_system_rule_room("security_groups", &n)?;
            i.nics.insert(n.id.clone(), n.clone());
            Ok(n)
        })
    }

    // ---- in-place forms ----

    fn resolve_security_group(
        &self,
        field: &str,
        vpc: Option<&str>,
        key: &str,
    ) -> Result<SecurityGroup> {
        if let Some(v) = vpc {
            self.resolve_vpc("vpc", v)?;
        }
        self.security_group(vpc, key).cloned().ok_or_else(|| {
            let where_ = vpc.map(|v| format!(" in VPC {v:?}")).unwrap_or_default();
            ValidationError::not_found(field, format!("no security group {key:?}{where_}"))
        })
    }

    fn create_security_group_mut(&mut self, spec: SecurityGroupSpec) -> Result<SecurityGroup> {
        let vpc = self.resolve_vpc("vpc", &spec.vpc)?;
        if let Some(name) = &spec.name {
            check_group_name("name", name)?;
            if let Some(id) = self.lookup_name(NameKind::SecurityGroup, &vpc.id, name) {
                return Err(ValidationError::conflict(
                    "name",
                    format!("VPC {} already has a security group named {name:?}", vpc.id),
                    vec![format!("security-group/{id}")],
                ));
            }
        }
        check_description("description", &spec.description)?;
        let id = format!("sg-{}", self.counters.next_sg);
        self.counters.next_sg += 1;
        let group = SecurityGroup {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            vpc: vpc.id,
            description: spec.description,
            rules: vec![],
        };
        // Indexed first, so its own rules may name it.
        self.index_name(NameKind::SecurityGroup, &group.vpc, &group.name, &id);
        self.security_groups.insert(id.clone(), group);
        for (k, rule) in spec.rules.into_iter().enumerate() {
            self.add_rule_mut(&id, rule)
                .map_err(|e| e.at(&format!("rules[{k}]")))?;
        }
        Ok(self.security_groups[&id].clone())
    }

    fn delete_security_group_mut(&mut self, vpc: Option<&str>, key: &str) -> Result<()> {
        let g = self.resolve_security_group("security_group", vpc, key)?;
        if g.name == DEFAULT_GROUP_NAME {
            return Err(ValidationError::conflict(
                "security_group",
                format!(
                    "security group {} is VPC {}'s default group; it goes with its VPC",
                    g.id, g.vpc
                ),
                vec![format!("vpc/{}", g.vpc)],
            ));
        }
        self.remove_security_group_mut(g)
    }

    /// Remove a group nothing uses; 409 naming its members and the rules that reference it.
    pub(super) fn remove_security_group_mut(&mut self, g: SecurityGroup) -> Result<()> {
        let mut deps: Vec<String> = self
            .security_group_members(&g.id)
            .map(|n| format!("nic/{}", n.id))
            .collect();
        for other in self.security_groups_of(&g.vpc).filter(|o| o.id != g.id) {
            deps.extend(
                other
                    .rules
                    .iter()
                    .filter(|r| r.remote == Remote::Group(g.id.clone()))
                    .map(|r| other.rule_reference(r)),
            );
        }
        if !deps.is_empty() {
            return Err(ValidationError::conflict(
                "security_group",
                format!(
                    "security group {} is used by NICs or referenced by other groups' rules",
                    g.id
                ),
                deps,
            ));
        }
        self.unindex_name(NameKind::SecurityGroup, &g.vpc, &g.name);
        self.security_groups.remove(&g.id);
        Ok(())
    }

    /// A rule spec checked against its group's VPC; fields are named as in the spec.
    fn resolve_rule(&self, group: &SecurityGroup, spec: SgRuleSpec) -> Result<SgRule> {
        let priority = u32::try_from(spec.priority)
            .ok()
            .filter(|p| (MIN_PRIORITY..=MAX_PRIORITY).contains(p))
            .ok_or_else(|| {
                ValidationError::invalid(
                    "priority",
                    format!(
                        "{} is not a priority ({MIN_PRIORITY} to {MAX_PRIORITY}; {MIN_PRIORITY} is evaluated first)",
                        spec.priority
                    ),
                )
            })?;
        let ports = match (&spec.ports, spec.protocol) {
            (None, _) => None,
            (Some(p), Protocol::Tcp | Protocol::Udp) => {
                let range: PortRange = p
                    .parse()
                    .map_err(|e: String| ValidationError::invalid("ports", e))?;
                // The whole range is the same as no range: one canonical form.
                (range != PortRange { from: 0, to: 65535 }).then_some(range)
            }
            (Some(_), p) => {
                return Err(ValidationError::invalid(
                    "ports",
                    format!("ports apply to tcp and udp rules, not {}", proto_name(p)),
                ))
            }
        };
        let icmp_type = spec
            .icmp_type
            .map(|t| byte("icmp_type", "ICMP type", t))
            .transpose()?;
        let icmp_code = spec
            .icmp_code
            .map(|c| byte("icmp_code", "ICMP code", c))
            .transpose()?;
        if spec.protocol != Protocol::Icmp {
            let field = if icmp_type.is_some() {
                Some("icmp_type")
            } else if icmp_code.is_some() {
                Some("icmp_code")
            } else {
                None
            };
            if let Some(f) = field {
                return Err(ValidationError::invalid(
                    f,
                    format!("applies to icmp rules, not {}", proto_name(spec.protocol)),
                ));
            }
        }
        if icmp_code.is_some() && icmp_type.is_none() {
            return Err(ValidationError::invalid(
                "icmp_code",
                "a code needs an icmp_type",
            ));
        }
        let remote = match (&spec.cidr, &spec.group) {
            (None, None) => {
                return Err(ValidationError::invalid(
                    "cidr",
                    "a rule needs a remote: cidr or group",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ValidationError::invalid(
                    "group",
                    "a rule has one remote: cidr or group, not both",
                ))
            }
            (Some(c), None) => Remote::Cidr(parse_cidr("cidr", c)?),
            (None, Some(key)) => {
                let other = match self.security_group(Some(&group.vpc), key) {
                    Some(g) => g,
                    None => match self.security_groups.get(key.as_str()) {
                        Some(g) => {
                            return Err(ValidationError::invalid(
                                "group",
                                format!(
                                    "security group {} is in VPC {}, not {}: remote groups must be of the same VPC",
                                    g.id, g.vpc, group.vpc
                                ),
                            ))
                        }
                        None => {
                            return Err(ValidationError::not_found(
                                "group",
                                format!("no security group {key:?} in VPC {}", group.vpc),
                            ))
                        }
                    },
                };
                Remote::Group(other.id.clone())
            }
        };
        check_description("description", &spec.description)?;
        Ok(SgRule {
            id: String::new(),
            direction: spec.direction,
            protocol: spec.protocol,
            ports,
            icmp_type,
            icmp_code,
            remote,
            action: spec.action,
            priority,
            description: spec.description,
        })
    }

    fn add_rule_mut(&mut self, group_id: &str, spec: SgRuleSpec) -> Result<SgRule> {
        let group = &self.security_groups[group_id];
        let mut rule = self.resolve_rule(group, spec)?;
        if let Some(dup) = group.rules.iter().find(|r| r.same_as(&rule)) {
            return Err(ValidationError::conflict(
                "",
                format!(
                    "security group {} already has this rule ({})",
                    group.id, dup.id
                ),
                vec![group.rule_reference(dup)],
            ));
        }
        let d = rule.direction;
        if group.rules_in(d).count() >= MAX_RULES_PER_NIC {
            return Err(ValidationError::conflict(
                "direction",
                format!(
                    "security group {} has {MAX_RULES_PER_NIC} {d} rules, the most a NIC can have",
                    group.id
                ),
                vec![],
            ));
        }
        let full: Vec<String> = self
            .security_group_members(group_id)
            .filter(|n| {
                self.nic_rule_count(&n.security_groups, d) + self.system_rules(n, d).len()
                    >= MAX_RULES_PER_NIC
            })
            .map(|n| format!("nic/{}", n.id))
            .collect();
        if !full.is_empty() {
            return Err(ValidationError::conflict(
                "direction",
                format!(
                    "NICs with security group {} have {MAX_RULES_PER_NIC} {d} rules over their groups, the most a NIC can have",
                    group.id
                ),
                full,
            ));
        }
        rule.id = format!("sgr-{}", self.counters.next_sg_rule);
        self.counters.next_sg_rule += 1;
        if let Some(g) = self.security_groups.get_mut(group_id) {
            g.rules.push(rule.clone());
        }
        Ok(rule)
    }

    /// `apply -f`, first pass: the declared group exists (created without rules when
    /// missing) with the declared description.
    pub(super) fn apply_security_group_mut(
        &mut self,
        vpc_id: &str,
        t: &TopologySecurityGroup,
    ) -> Result<Change> {
        check_group_name("name", &t.name)?;
        check_description("description", &t.description)?;
        let Some(id) = self
            .lookup_name(NameKind::SecurityGroup, vpc_id, &t.name)
            .map(str::to_string)
        else {
            self.create_security_group_mut(SecurityGroupSpec {
                vpc: vpc_id.to_string(),
                name: Some(t.name.clone()),
                description: t.description.clone(),
                rules: vec![],
            })?;
            return Ok(Change::Created);
        };
        let g = self.security_groups.get_mut(&id).expect("indexed");
        if t.description.is_some() && g.description != t.description {
            g.description = t.description.clone();
            return Ok(Change::Updated);
        }
        Ok(Change::Unchanged)
    }

    /// `apply -f`, second pass: make a group's rules exactly `rules`. Rules already there
    /// keep their IDs; the others are removed first, so replacing a full set fits the
    /// limits. Returns whether anything changed.
    pub(super) fn sync_security_group_rules_mut(
        &mut self,
        group_id: &str,
        rules: &[SgRuleSpec],
    ) -> Result<bool> {
        let group = self.security_groups[group_id].clone();
        let mut wanted: Vec<SgRule> = Vec::with_capacity(rules.len());
        for (k, spec) in rules.iter().enumerate() {
            let at = format!("rules[{k}]");
            let r = self
                .resolve_rule(&group, spec.clone())
                .map_err(|e| e.at(&at))?;
            if let Some(first) = wanted.iter().position(|w| w.same_as(&r)) {
                return Err(ValidationError::invalid(
                    at,
                    format!("the same rule as rules[{first}]"),
                ));
            }
            wanted.push(r);
        }
        let mut changed = false;
        let mut kept = Vec::with_capacity(group.rules.len());
        for r in &group.rules {
            match wanted.iter().find(|w| w.same_as(r)) {
                Some(w) => {
                    let mut r = r.clone();
                    if r.description != w.description {
                        r.description = w.description.clone();
                        changed = true;
                    }
                    kept.push(r);
                }
                None => changed = true,
            }
        }
        let missing: Vec<usize> = (0..wanted.len())
            .filter(|k| !kept.iter().any(|r| r.same_as(&wanted[*k])))
            .collect();
        if let Some(g) = self.security_groups.get_mut(group_id) {
            g.rules = kept;
        }
        for k in missing {
            self.add_rule_mut(group_id, rules[k].clone())
                .map_err(|e| e.at(&format!("rules[{k}]")))?;
            changed = true;
        }
        Ok(changed)
    }

    /// The system rules of NIC `nic` in direction `d`, which users see but do not edit:
    /// for a load balancer backend, ingress tcp from the health checkers' range
    /// ([`sluice_common::lb::HEALTH_CHECK_NET`]) to its health-check ports, at priority
    /// [`SYSTEM_PRIORITY`] (before every user rule).
    pub fn system_rules(&self, nic: &Nic, d: Direction) -> Vec<SgRule> {
        if d != Direction::Ingress {
            return vec![];
        }
        let net = health_check_net();
        // Adjacent ports merge into one range: fewer of the NIC's rule slots.
        let mut ranges: Vec<PortRange> = vec![];
        for (_, p) in self.health_check_ports(nic) {
            match ranges.last_mut() {
                Some(r) if r.to.checked_add(1) == Some(p) => r.to = p,
                _ => ranges.push(PortRange { from: p, to: p }),
            }
        }
        ranges
            .into_iter()
            .map(|ports| SgRule {
                id: format!("system-lb-health-check-{ports}"),
                direction: Direction::Ingress,
                protocol: Protocol::Tcp,
                ports: Some(ports),
                icmp_type: None,
                icmp_code: None,
                remote: Remote::Cidr(net),
                action: Action::Allow,
                priority: SYSTEM_PRIORITY,
                description: Some(SYSTEM_RULE_DESCRIPTION.into()),
            })
            .collect()
    }

    /// NIC `n`'s ingress rules over its groups with its system rules fit the datapath's
    /// rule slots (`field` names what would overflow them).
    pub(super) fn check_system_rule_room(&self, field: &str, n: &Nic) -> Result<()> {
        let d = Direction::Ingress;
        let count = self.nic_rule_count(&n.security_groups, d) + self.system_rules(n, d).len();
        if count > MAX_RULES_PER_NIC {
            return Err(ValidationError::conflict(
                field,
                format!(
                    "NIC {} would have {count} ingress rules with its load balancer health-check system rules; a NIC can have at most {MAX_RULES_PER_NIC}",
                    n.id
                ),
                vec![format!("nic/{}", n.id)],
            ));
        }
        Ok(())
    }

    /// Rules in direction `d` over `groups` (IDs), counted as the datapath does.
    pub(super) fn nic_rule_count(&self, groups: &[String], d: Direction) -> usize {
        groups
            .iter()
            .filter_map(|g| self.security_groups.get(g))
            .map(|g| g.rules_in(d).count())
            .sum()
    }

    /// Check a NIC's requested groups and return their IDs (in the order given). The
    /// form `create_nic`/`update_nic` use once their requests carry groups.
    pub(crate) fn check_nic_security_groups(
        &self,
        field: &str,
        vpc_id: &str,
        groups: &[String],
    ) -> Result<Vec<String>> {
        if groups.is_empty() || groups.len() > MAX_GROUPS_PER_NIC {
            return Err(ValidationError::invalid(
                field,
                format!(
                    "a NIC has 1 to {MAX_GROUPS_PER_NIC} security groups, not {}",
                    groups.len()
                ),
            ));
        }
        let mut ids = Vec::with_capacity(groups.len());
        let mut seen = BTreeSet::new();
        for (k, key) in groups.iter().enumerate() {
            let f = format!("{field}[{k}]");
            let g = match self.security_group(Some(vpc_id), key) {
                Some(g) => g,
                None => match self.security_groups.get(key.as_str()) {
                    Some(g) => {
                        return Err(ValidationError::invalid(
                            f,
                            format!(
                                "security group {} is in VPC {}, not the NIC's {vpc_id}",
                                g.id, g.vpc
                            ),
                        ))
                    }
                    None => {
                        return Err(ValidationError::not_found(
                            f,
                            format!("no security group {key:?} in VPC {vpc_id}"),
                        ))
                    }
                },
            };
            if !seen.insert(g.id.clone()) {
                return Err(ValidationError::invalid(
                    f,
                    format!("security group {} is listed twice", g.id),
                ));
            }
            ids.push(g.id.clone());
        }
        for d in [Direction::Ingress, Direction::Egress] {
            let n = self.nic_rule_count(&ids, d);
            if n > MAX_RULES_PER_NIC {
                return Err(ValidationError::invalid(
                    field,
                    format!(
                        "these groups have {n} {d} rules together; a NIC can have at most {MAX_RULES_PER_NIC}"
                    ),
                ));
            }
        }
        Ok(ids)
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::All => "all",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::intent::{validate::tests::lab, ErrorKind};

    /// A rule's remote, for the helpers.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Rm<'a> {
        Cidr(&'a str),
        Group(&'a str),
    }

    pub(crate) fn rule(
        direction: Direction,
        protocol: Protocol,
        ports: Option<&str>,
        remote: Rm,
        action: Action,
        priority: i64,
    ) -> SgRuleSpec {
        let (cidr, group) = match remote {
            Rm::Cidr(c) => (Some(c.to_string()), None),
            Rm::Group(g) => (None, Some(g.to_string())),
        };
        SgRuleSpec {
            direction,
            protocol,
            ports: ports.map(Into::into),
            icmp_type: None,
            icmp_code: None,
            cidr,
            group,
            action,
            priority,
            description: None,
        }
    }

    pub(crate) fn cidr(c: &str) -> Rm<'_> {
        Rm::Cidr(c)
    }

    pub(crate) fn group(name: &str, vpc: &str, rules: Vec<SgRuleSpec>) -> SecurityGroupSpec {
        SecurityGroupSpec {
            vpc: vpc.into(),
            name: Some(name.into()),
            description: None,
            rules,
        }
    }

    fn allow_tcp_in(ports: &str, from: Rm) -> SgRuleSpec {
        rule(
            Direction::Ingress,
            Protocol::Tcp,
            Some(ports),
            from,
            Action::Allow,
            100,
        )
    }

    #[track_caller]
    fn refused<T: fmt::Debug>(r: Result<T>, kind: ErrorKind, field: &str) -> ValidationError {
        let e = r.expect_err("the change was accepted");
        assert_eq!((e.kind, e.field.as_str()), (kind, field), "{e}");
        e
    }

    #[test]
    fn groups_get_ids_names_scoped_by_vpc_and_rules_get_ids() {
        let i = lab();
        let (i, web) = i
            .create_security_group(group(
                "web",
                "tenant-a",
                vec![allow_tcp_in("443", cidr("0.0.0.0/0"))],
            ))
            .unwrap();
        assert_eq!((web.id.as_str(), web.vpc.as_str()), ("sg-4", "vpc-1"));
        // After the lab VPCs' default groups (sg-1 to sg-3, two rules each).
        assert_eq!(web.rules[0].id, "sgr-7");
        assert_eq!(web.rules[0].ports, Some(PortRange { from: 443, to: 443 }));
        // The same name in another VPC is another group; in the same VPC a conflict.
        let (i, b_web) = i
            .create_security_group(group("web", "tenant-b", vec![]))
            .unwrap();
        assert_eq!(b_web.id, "sg-5");
        let e = refused(
            i.create_security_group(group("web", "tenant-a", vec![])),
            ErrorKind::Conflict,
            "name",
        );
        assert_eq!(e.dependents, vec!["security-group/sg-4"]);
        assert_eq!(
            i.security_group(Some("tenant-b"), "web").unwrap().id,
            "sg-5"
        );
        assert!(
            i.security_group(None, "web").is_none(),
            "ambiguous bare name"
        );
        assert_eq!(i.security_group(None, "sg-4").unwrap().name, "web");
        let names: Vec<&str> = i
            .security_groups_of("vpc-1")
            .map(|g| g.id.as_str())
            .collect();
        assert_eq!(names, ["sg-1", "sg-4"], "default, then web");
        refused(
            i.create_security_group(group("sg-7", "tenant-a", vec![])),
            ErrorKind::Invalid,
            "name",
        );
        refused(
            i.create_security_group(group("x", "nope", vec![])),
            ErrorKind::NotFound,
            "vpc",
        );
        // Unnamed: named by its ID.
        let (_, g) = i
            .create_security_group(SecurityGroupSpec {
                vpc: "tenant-a".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(g.name, "sg-6");
    }

    #[test]
    fn each_rule_field_is_checked_and_named() {
        let (i, _) = lab()
            .create_security_group(group("web", "tenant-a", vec![]))
            .unwrap();
        let add = |spec: SgRuleSpec| i.add_security_group_rule(Some("tenant-a"), "web", spec);
        let ok = allow_tcp_in("80", cidr("10.0.0.0/8"));
        refused(
            add(SgRuleSpec {
                priority: 0,
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "priority",
        );
        refused(
            add(SgRuleSpec {
                priority: 65536,
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "priority",
        );
        for bad in ["90-80", "70000", "x", "1-2-3"] {
            refused(
                add(SgRuleSpec {
                    ports: Some(bad.into()),
                    ..ok.clone()
                }),
                ErrorKind::Invalid,
                "ports",
            );
        }
        refused(
            add(SgRuleSpec {
                protocol: Protocol::Icmp,
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "ports",
        );
        refused(
            add(SgRuleSpec {
                icmp_type: Some(8),
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "icmp_type",
        );
        let icmp = SgRuleSpec {
            protocol: Protocol::Icmp,
            ports: None,
            ..ok.clone()
        };
        refused(
            add(SgRuleSpec {
                icmp_code: Some(0),
                ..icmp.clone()
            }),
            ErrorKind::Invalid,
            "icmp_code",
        );
        refused(
            add(SgRuleSpec {
                icmp_type: Some(256),
                ..icmp.clone()
            }),
            ErrorKind::Invalid,
            "icmp_type",
        );
        let (_, r) = add(SgRuleSpec {
            icmp_type: Some(8),
            icmp_code: Some(0),
            ..icmp
        })
        .unwrap();
        assert_eq!((r.icmp_type, r.icmp_code), (Some(8), Some(0)));
        refused(
            add(SgRuleSpec {
                cidr: Some("10.0.0.1/8".into()),
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "cidr",
        );
        refused(
            add(SgRuleSpec {
                cidr: None,
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "cidr",
        );
        refused(
            add(SgRuleSpec {
                group: Some("web".into()),
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "group",
        );
        refused(
            add(SgRuleSpec {
                cidr: None,
                group: Some("nope".into()),
                ..ok.clone()
            }),
            ErrorKind::NotFound,
            "group",
        );
        refused(
            add(SgRuleSpec {
                description: Some("x".repeat(256)),
                ..ok.clone()
            }),
            ErrorKind::Invalid,
            "description",
        );
        // The whole port range is the same as no range.
        let (_, r) = add(SgRuleSpec {
            ports: Some("0-65535".into()),
            ..ok.clone()
        })
        .unwrap();
        assert_eq!(r.ports, None);
        refused(
            i.add_security_group_rule(Some("tenant-b"), "web", ok),
            ErrorKind::NotFound,
            "security_group",
        );
    }

    #[test]
    fn remote_groups_must_be_of_the_same_vpc_and_may_be_the_group_itself() {
        let (i, _) = lab()
            .create_security_group(group("b-web", "tenant-b", vec![]))
            .unwrap();
        // A group's own rules may name it while it is created.
        let (i, g) = i
            .create_security_group(group(
                "app",
                "tenant-a",
                vec![allow_tcp_in("8080", Rm::Group("app"))],
            ))
            .unwrap();
        assert_eq!(g.rules[0].remote, Remote::Group(g.id.clone()));
        let e = refused(
            i.add_security_group_rule(
                Some("tenant-a"),
                "app",
                allow_tcp_in("22", Rm::Group("sg-4")),
            ),
            ErrorKind::Invalid,
            "group",
        );
        assert!(e.reason.contains("same VPC"), "{e}");
    }

    #[test]
    fn a_bad_rule_refuses_the_whole_group_and_names_its_index() {
        let i = lab();
        let e = refused(
            i.create_security_group(group(
                "web",
                "tenant-a",
                vec![
                    allow_tcp_in("80", cidr("0.0.0.0/0")),
                    allow_tcp_in("80", cidr("0.0.0.0/0")),
                ],
            )),
            ErrorKind::Conflict,
            "rules[1]",
        );
        assert_eq!(e.dependents, vec!["rule/sg-4:sgr-7"]);
        refused(
            i.create_security_group(group(
                "web",
                "tenant-a",
                vec![
                    allow_tcp_in("80", cidr("0.0.0.0/0")),
                    allow_tcp_in("80", cidr("10.0.0.0/33")),
                ],
            )),
            ErrorKind::Invalid,
            "rules[1].cidr",
        );
        // Nothing was kept: the name and the counters are unchanged.
        assert!(i.security_group(Some("tenant-a"), "web").is_none());
        let (_, g) = i
            .create_security_group(group("web", "tenant-a", vec![]))
            .unwrap();
        assert_eq!(g.id, "sg-4");
    }

    #[test]
    fn nics_take_one_to_five_groups_of_their_vpc() {
        let mut i = lab();
        for n in 0..6 {
            i = i
                .create_security_group(group(&format!("g{n}"), "tenant-a", vec![]))
                .unwrap()
                .0;
        }
        let (i, b) = i
            .create_security_group(group("b", "tenant-b", vec![]))
            .unwrap();
        let names = |n: usize| (0..n).map(|k| format!("g{k}")).collect::<Vec<_>>();
        let (j, nic) = i.set_nic_security_groups("a-vm1", names(5)).unwrap();
        assert_eq!(
            nic.security_groups,
            ["sg-4", "sg-5", "sg-6", "sg-7", "sg-8"]
        );
        assert_eq!(j.nic("a-vm1").unwrap().security_groups.len(), 5);
        assert_eq!(j.security_group_members("sg-5").count(), 1);
        refused(
            i.set_nic_security_groups("a-vm1", names(6)),
            ErrorKind::Invalid,
            "security_groups",
        );
        refused(
            i.set_nic_security_groups("a-vm1", vec![]),
            ErrorKind::Invalid,
            "security_groups",
        );
        refused(
            i.set_nic_security_groups("a-vm1", vec!["g0".into(), "sg-4".into()]),
            ErrorKind::Invalid,
            "security_groups[1]",
        );
        refused(
            i.set_nic_security_groups("a-vm1", vec!["g0".into(), b.id.clone()]),
            ErrorKind::Invalid,
            "security_groups[1]",
        );
        refused(
            i.set_nic_security_groups("a-vm1", vec!["nope".into()]),
            ErrorKind::NotFound,
            "security_groups[0]",
        );
        refused(
            i.set_nic_security_groups("nope", vec!["g0".into()]),
            ErrorKind::NotFound,
            "nic",
        );
        // A NIC created without groups has its VPC's default group.
        assert_eq!(i.nic("a-vm2").unwrap().security_groups, ["sg-1"]);
    }

    #[test]
    fn a_group_in_use_or_referenced_cannot_be_deleted() {
        let (i, db) = lab()
            .create_security_group(group("db", "tenant-a", vec![]))
            .unwrap();
        // Self-references do not block deletion; another group's rule does.
        let (i, own) = i
            .add_security_group_rule(
                Some("tenant-a"),
                "db",
                allow_tcp_in("5432", Rm::Group("db")),
            )
            .unwrap();
        assert_eq!(own.remote, Remote::Group(db.id.clone()));
        let (i, web) = i
            .create_security_group(group(
                "web",
                "tenant-a",
                vec![rule(
                    Direction::Egress,
                    Protocol::Tcp,
                    Some("5432"),
                    Rm::Group("db"),
                    Action::Allow,
                    10,
                )],
            ))
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-vm2", vec!["db".into()])
            .unwrap();
        let e = refused(
            i.delete_security_group(Some("tenant-a"), "db"),
            ErrorKind::Conflict,
            "security_group",
        );
        assert_eq!(
            e.dependents,
            vec!["nic/nic-2".to_string(), web.rule_reference(&web.rules[0])]
        );
        // The VPC lists its groups among its dependents.
        let e = refused(i.delete_vpc("tenant-a"), ErrorKind::Conflict, "vpc");
        assert!(
            e.dependents.contains(&format!("security-group/{}", db.id)),
            "{e}"
        );
        // Remove the references and it goes.
        let rule = web.rules[0].id.clone();
        let (i, web) = i
            .remove_security_group_rule(Some("tenant-a"), "web", &rule)
            .unwrap();
        assert!(web.rules.is_empty());
        refused(
            i.remove_security_group_rule(Some("tenant-a"), "web", &rule),
            ErrorKind::NotFound,
            "rule",
        );
        let (i, _) = i
            .set_nic_security_groups("a-vm2", vec!["web".into()])
            .unwrap();
        let i = i.delete_security_group(Some("tenant-a"), "db").unwrap();
        assert!(i.security_group(None, "db").is_none());
        // Deleting a NIC releases its groups.
        let i = i.delete_nic("a-vm2").unwrap();
        let i = i.delete_security_group(None, "web").unwrap();
        // Only the VPCs' default groups are left.
        assert!(
            i.security_groups().all(|g| g.name == DEFAULT_GROUP_NAME),
            "{:?}",
            i.security_groups().collect::<Vec<_>>()
        );
    }

    #[test]
    fn rule_limits_count_every_group_of_a_nic() {
        let many = |n: usize, port0: usize| -> Vec<SgRuleSpec> {
            (0..n)
                .map(|k| allow_tcp_in(&(port0 + k).to_string(), cidr("10.0.0.0/8")))
                .collect()
        };
        let (i, _) = lab()
            .create_security_group(group("a", "tenant-a", many(600, 1)))
            .unwrap();
        let (i, _) = i
            .create_security_group(group("b", "tenant-a", many(424, 1)))
            .unwrap();
        let (i, _) = i
            .set_nic_security_groups("a-vm1", vec!["a".into(), "b".into()])
            .unwrap();
        // The NIC is full in ingress: no more ingress rules in either group...
        let e = refused(
            i.add_security_group_rule(
                Some("tenant-a"),
                "b",
                allow_tcp_in("9999", cidr("10.0.0.0/8")),
            ),
            ErrorKind::Conflict,
            "direction",
        );
        assert_eq!(e.dependents, vec!["nic/nic-1"]);
        // ...but egress is separate.
        let egress = SgRuleSpec {
            direction: Direction::Egress,
            ..allow_tcp_in("9999", cidr("10.0.0.0/8"))
        };
        let (i, _) = i
            .add_security_group_rule(Some("tenant-a"), "b", egress)
            .unwrap();
        let (i, _) = i
            .create_security_group(group("c", "tenant-a", many(1, 1)))
            .unwrap();
        refused(
            i.set_nic_security_groups("a-vm1", vec!["a".into(), "b".into(), "c".into()]),
            ErrorKind::Invalid,
            "security_groups",
        );
        // One group alone holds at most a NIC's worth.
        refused(
            lab().create_security_group(group("big", "tenant-a", many(MAX_RULES_PER_NIC + 1, 1))),
            ErrorKind::Conflict,
            &format!("rules[{MAX_RULES_PER_NIC}].direction"),
        );
    }

    #[test]
    fn every_vpc_has_a_default_group_its_nics_get_and_that_goes_with_it() {
        let i = lab();
        let a = i.vpc("tenant-a").unwrap().id.clone();
        let d = i.default_security_group(&a).unwrap().clone();
        assert_eq!((d.id.as_str(), d.name.as_str()), ("sg-1", "default"));
        // Ingress from its own members and all egress, evaluated after any other rule.
        assert_eq!(d.rules.len(), 2);
        assert_eq!(d.rules[0].direction, Direction::Ingress);
        assert_eq!(d.rules[0].remote, Remote::Group(d.id.clone()));
        assert_eq!(d.rules[1].direction, Direction::Egress);
        assert_eq!(
            d.rules[1].remote,
            Remote::Cidr("0.0.0.0/0".parse().unwrap())
        );
        for r in &d.rules {
            assert_eq!(
                (r.protocol, r.action, r.priority),
                (Protocol::All, Action::Allow, MAX_PRIORITY)
            );
        }
        for n in i.nics() {
            let own = i.default_security_group(&n.vpc).unwrap();
            assert_eq!(
                n.security_groups,
                std::slice::from_ref(&own.id),
                "{}",
                n.name
            );
        }
        // Not deletable on its own, and its name is taken.
        let e = refused(
            i.delete_security_group(Some("tenant-a"), "default"),
            ErrorKind::Conflict,
            "security_group",
        );
        assert_eq!(e.dependents, [format!("vpc/{a}")]);
        refused(
            i.create_security_group(group("default", "tenant-a", vec![])),
            ErrorKind::Conflict,
            "name",
        );
        // Its rules are the tenant's to change, like any group's.
        let (i, _) = i
            .remove_security_group_rule(Some("tenant-a"), "default", &d.rules[1].id)
            .unwrap();
        assert_eq!(i.default_security_group(&a).unwrap().rules.len(), 1);

        // A NIC may name its groups instead; a bad list refuses the NIC.
        let (i, web) = i
            .create_security_group(group("web", "tenant-a", vec![]))
            .unwrap();
        let spec = |groups: Option<Vec<&str>>| NicSpec {
            security_groups: groups.map(|g| g.into_iter().map(String::from).collect()),
            ..crate::intent::validate::tests::nic("x", "tenant-a", "web", "h1")
        };
        let (_, n) = i.create_nic(spec(Some(vec!["web", "default"]))).unwrap();
        assert_eq!(n.security_groups, [web.id.clone(), d.id.clone()]);
        refused(
            i.create_nic(spec(Some(vec![]))),
            ErrorKind::Invalid,
            "security_groups",
        );
        refused(
            i.create_nic(spec(Some(vec!["nope"]))),
            ErrorKind::NotFound,
            "security_groups[0]",
        );
        // PATCH replaces them; the rest of the NIC stays.
        let (j, n) = i
            .update_nic(
                "a-vm1",
                NicUpdate {
                    security_groups: Some(vec!["web".into()]),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(n.security_groups, std::slice::from_ref(&web.id));
        assert_eq!(n.host, i.nic("a-vm1").unwrap().host);
        assert_eq!(j.security_group_members(&d.id).count(), 2);
        let e = refused(
            i.update_nic(
                "a-vm1",
                NicUpdate {
                    security_groups: Some(vec!["web".into(), "web".into()]),
                    ..Default::default()
                },
            ),
            ErrorKind::Invalid,
            "security_groups[1]",
        );
        assert!(e.reason.contains("twice"), "{e}");

        // An empty VPC goes with its default group.
        let (i, v) = i
            .create_vpc(crate::intent::validate::tests::vpc("empty", "10.7.0.0/16"))
            .unwrap();
        let g = i.default_security_group(&v.id).unwrap().id.clone();
        let i = i.delete_vpc("empty").unwrap();
        assert!(i.security_group(None, &g).is_none());
        assert!(i.default_security_group(&v.id).is_none());
        // One with another group lists it (and not its default group).
        let (i, v) = i
            .create_vpc(crate::intent::validate::tests::vpc("other", "10.8.0.0/16"))
            .unwrap();
        let (i, extra) = i
            .create_security_group(group("extra", "other", vec![]))
            .unwrap();
        let e = refused(i.delete_vpc(&v.id), ErrorKind::Conflict, "vpc");
        assert_eq!(e.dependents, [format!("security-group/{}", extra.id)]);
    }

    #[test]
    fn old_intents_get_default_groups_once() {
        // What a store written before default groups holds: no groups, NICs without.
        let mut r = lab().to_records();
        r.security_groups.clear();
        for n in &mut r.nics {
            n.security_groups.clear();
        }
        r.counters.next_sg = 1;
        r.counters.next_sg_rule = 1;
        let old = Intent::from_records(r);
        let new = old.with_default_security_groups();
        assert_eq!(new.security_groups().count(), 3);
        for n in new.nics() {
            let d = new.default_security_group(&n.vpc).unwrap();
            assert_eq!(n.security_groups, std::slice::from_ref(&d.id));
        }
        assert_eq!(new.with_default_security_groups(), new, "idempotent");
        assert_eq!(lab().with_default_security_groups(), lab());
    }

    #[test]
    fn topology_groups_are_created_synced_and_then_left_alone() {
        let yaml = r#"
vpcs:
  - name: tenant-a
    cidr: 10.0.0.0/16
    security_groups:
      - name: web
        description: front ends
        rules:
          - { direction: ingress, protocol: tcp, ports: 443, cidr: 0.0.0.0/0, action: allow, priority: 10 }
          - { direction: egress, protocol: tcp, ports: 5432, group: db, action: allow, priority: 10 }
      - name: db
        rules:
          - { direction: ingress, protocol: tcp, ports: 5432, group: web, action: allow, priority: 10 }
      - name: default
        rules: []
nics:
  - { name: a-vm1, vpc: tenant-a, subnet: web, host: h1, ifname: a-vm1, ip: 10.0.1.10, security_groups: [web] }
  - { name: a-vm2, vpc: tenant-a, subnet: db, host: h2, ifname: a-vm2, ip: 10.0.2.10, security_groups: [db, default] }
blocklist:
  - { prefix: 203.0.113.0/24, applies_to: source }
"#;
        let extra: Topology = serde_yaml::from_str(yaml).unwrap();
        let mut t = crate::intent::validate::tests::lab_topology();
        t.vpcs[0].security_groups = extra.vpcs[0].security_groups.clone();
        t.nics[0].security_groups = extra.nics[0].security_groups.clone();
        t.nics[1].security_groups = extra.nics[1].security_groups.clone();
        t.blocklist = extra.blocklist.clone();
        let (i, sum) = Intent::default().apply(t.clone()).unwrap();
        for c in [
            "security-group/tenant-a/web",
            "security-group/tenant-a/db",
            "block/203.0.113.0/24",
        ] {
            assert!(sum.created.contains(&c.to_string()), "{c}: {sum:?}");
        }
        // The default group existed (with the VPC): emptied, so updated.
        assert_eq!(sum.updated, ["security-group/tenant-a/default"], "{sum:?}");
        let web = i.security_group(Some("tenant-a"), "web").unwrap();
        let db = i.security_group(Some("tenant-a"), "db").unwrap();
        assert_eq!(
            web.rules[1].remote,
            Remote::Group(db.id.clone()),
            "named before declared"
        );
        assert_eq!(web.description.as_deref(), Some("front ends"));
        assert!(i
            .security_group(Some("tenant-a"), "default")
            .unwrap()
            .rules
            .is_empty());
        assert_eq!(
            i.nic("a-vm1").unwrap().security_groups,
            std::slice::from_ref(&web.id)
        );
        assert_eq!(
            i.nic("a-fw").unwrap().security_groups,
            ["sg-1"],
            "undeclared: default"
        );

        // Idempotent.
        let (again, sum) = i.apply(t.clone()).unwrap();
        assert_eq!(sum.changes(), 0, "{sum:?}");
        assert_eq!(again, i);

        // A changed rule set: the kept rule keeps its ID, the other is replaced.
        let kept = web.rules[0].id.clone();
        let mut t2 = t.clone();
        let rules = t2.vpcs[0].security_groups[0].rules.as_mut().unwrap();
        rules[1].ports = Some("6432".into());
        // Groups whose rules are not declared, and NICs whose groups are not, stay.
        t2.vpcs[0].security_groups[1].rules = None;
        t2.nics[0].security_groups = None;
        let (j, sum) = i.apply(t2.clone()).unwrap();
        assert_eq!(sum.updated, ["security-group/tenant-a/web"], "{sum:?}");
        let web2 = j.security_group(Some("tenant-a"), "web").unwrap();
        assert_eq!(web2.rules[0].id, kept);
        assert_eq!(
            web2.rules[1].ports,
            Some(PortRange {
                from: 6432,
                to: 6432
            })
        );
        assert_ne!(web2.rules[1].id, web.rules[1].id);
        assert_eq!(
            j.security_group(Some("tenant-a"), "db")
                .unwrap()
                .rules
                .len(),
            1
        );
        assert_eq!(
            j.nic("a-vm1").unwrap().security_groups,
            std::slice::from_ref(&web.id)
        );

        // Mistakes name their place; nothing is applied.
        let mut bad = t.clone();
        bad.vpcs[0].security_groups[1].rules.as_mut().unwrap()[0].group = Some("nope".into());
        refused(
            i.apply(bad),
            ErrorKind::NotFound,
            "vpcs[0].security_groups[1].rules[0].group",
        );
        let mut bad = t.clone();
        let r = bad.vpcs[0].security_groups[0].rules.as_ref().unwrap()[0].clone();
        bad.vpcs[0].security_groups[0]
            .rules
            .as_mut()
            .unwrap()
            .push(r);
        refused(
            i.apply(bad),
            ErrorKind::Invalid,
            "vpcs[0].security_groups[0].rules[2]",
        );
        let mut bad = t.clone();
        let web_decl = bad.vpcs[0].security_groups[0].clone();
        bad.vpcs[0].security_groups.push(web_decl);
        refused(
            i.apply(bad),
            ErrorKind::Invalid,
            "vpcs[0].security_groups[3]",
        );
        let mut bad = t.clone();
        bad.nics[0].security_groups = Some(vec!["db".into(), "nope".into()]);
        refused(
            i.apply(bad),
            ErrorKind::NotFound,
            "nics[0].security_groups[1]",
        );
        let mut bad = t;
        bad.blocklist[0].prefix = "203.0.113.1/24".into();
        refused(i.apply(bad), ErrorKind::Invalid, "blocklist[0].prefix");
    }

    #[test]
    fn counters_written_before_security_groups_still_load() {
        let old = r#"{"next_vpc":3,"next_subnet":2,"next_nic":5,"next_peering":1,"next_vni":3,"next_mac":5}"#;
        let c: Counters = serde_json::from_str(old).unwrap();
        assert_eq!((c.next_vpc, c.next_sg, c.next_sg_rule), (3, 1, 1));
        let nic = r#"{"id":"nic-1","name":"n","vpc":"vpc-1","subnet":"subnet-1","host":"h1",
            "ifname":"n","ip":"10.0.1.4","mac":"02:73:6c:00:00:01","source_check":true}"#;
        let n: Nic = serde_json::from_str(nic).unwrap();
        assert!(n.security_groups.is_empty());
        // And a NIC without groups serializes as before.
        assert!(serde_json::to_value(&n)
            .unwrap()
            .get("security_groups")
            .is_none());
    }

    #[test]
    fn rules_parse_from_yaml_with_numeric_ports_and_reject_unknown_fields() {
        let spec: SecurityGroupSpec = serde_yaml::from_str(
            r#"
vpc: tenant-a
name: web
rules:
  - { direction: ingress, protocol: tcp, ports: 443, cidr: 0.0.0.0/0, action: allow, priority: 10 }
  - { direction: ingress, protocol: tcp, ports: 8000-8100, group: web, action: deny, priority: 10 }
  - { direction: egress, protocol: icmp, icmp_type: 8, cidr: 10.0.0.0/8, action: allow, priority: 1 }
"#,
        )
        .unwrap();
        let (i, g) = lab().create_security_group(spec).unwrap();
        assert_eq!(g.rules.len(), 3);
        assert_eq!(
            g.rules[1].ports,
            Some(PortRange {
                from: 8000,
                to: 8100
            })
        );
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["rules"][0]["ports"], "443");
        assert_eq!(json["rules"][1]["group"], "sg-4");
        assert_eq!(json["rules"][0]["cidr"], "0.0.0.0/0");
        let back: SecurityGroup = serde_json::from_value(json).unwrap();
        assert_eq!(back, g);
        assert!(serde_yaml::from_str::<SgRuleSpec>(
            "{ direction: ingress, protocol: sctp, cidr: 0.0.0.0/0, action: allow, priority: 1 }"
        )
        .is_err());
        assert!(serde_yaml::from_str::<SgRuleSpec>(
            "{ direction: ingress, protocol: tcp, cidr: 0.0.0.0/0, action: allow, priority: 1, port: 80 }"
        )
        .is_err());
        // Groups and the NICs' groups survive the records round trip.
        let (i, _) = i
            .set_nic_security_groups("a-vm1", vec!["web".into()])
            .unwrap();
        let back = Intent::from_records(i.to_records());
        assert_eq!(back, i);
        assert_eq!(
            back.security_group(Some("tenant-a"), "web").unwrap().id,
            "sg-4"
        );
    }
}
