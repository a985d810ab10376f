//! The daemon's YAML configuration, parsed with serde and then validated so that every
//! mistake is reported with the field it is in and why it is wrong.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::programs::XdpMode;
use serde::Deserialize;

use sluice_common::conntrack::{CtConfig, DEFAULT_MAX_ENTRIES};

use crate::loader::Role;

/// Default API address, shared with `sluicectl`.
pub const DEFAULT_API: &str = "127.0.0.1:9464";

/// Longest interface name the kernel accepts (IFNAMSIZ minus the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML syntax errors, unknown fields, unknown enum values (serde names the field).
    #[error("{0}")]
    Parse(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Where the HTTP API listens (daemon) or connects (client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiAddr {
    /// `unix:/absolute/path`: a Unix socket file, reachable across network namespaces.
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl FromStr for ApiAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: unix: needs a socket path"));
            }
            if !Path::new(path).is_absolute() {
                return Err(format!("{s:?}: the socket path must be absolute"));
            }
            return Ok(ApiAddr::Unix(PathBuf::from(path)));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected host:port or unix:/path"))?;
        if host.is_empty() {
            return Err(format!("{s:?}: missing host before ':'"));
        }
        port.parse::<u16>()
            .map_err(|_| format!("{s:?}: port {port:?} is not a number in 0..=65535"))?;
        Ok(ApiAddr::Tcp(s.to_string()))
    }
}

impl fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ApiAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// How XDP is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpModeConfig {
    /// Let the kernel choose (native when the driver supports it).
    #[default]
    Auto,
    Native,
    Generic,
}

impl From<XdpModeConfig> for XdpMode {
    fn from(m: XdpModeConfig) -> Self {
        match m {
            XdpModeConfig::Auto => XdpMode::default(),
            XdpModeConfig::Native => XdpMode::Driver,
            XdpModeConfig::Generic => XdpMode::Skb,
        }
    }
}

/// What the daemon leaves behind when it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExit {
    /// Leave pinned links and maps: XDP keeps forwarding, a restart is hitless.
    #[default]
    Keep,
    /// Remove every pin, detaching XDP.
    Detach,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    pub role: Role,
}

/// `controller:`: this daemon holds the intent and serves the intent API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// The embedded database file (redb); created if missing.
    pub store: PathBuf,
}

/// `agent:`: this daemon programs its host's maps from the controller's intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// This host's name in the intent.
    pub host: String,
    /// The controller's API; `None`: this daemon's own (it must have `controller:`).
    pub controller: Option<ApiAddr>,
    /// How often the tables are resolved again without an intent change, to pick up
    /// underlay neighbour MACs and interfaces that appeared since.
    pub resync_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentConfig {
    host: String,
    #[serde(default)]
    controller: Option<String>,
    #[serde(default = "default_resync_secs")]
    resync_secs: u64,
}

fn default_resync_secs() -> u64 {
    5
}

/// `conntrack:`: the connection table's admission limit and timeouts (seconds). Anything
/// left out keeps its default ([`CtConfig::DEFAULT`]: 1,048,576 entries; TCP SYN 60 s,
/// established 6 h, FIN 30 s, closed 10 s; UDP 60 s; ICMP 30 s; other 60 s; an SNAT
/// flow's time-wait 60 s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackConfig {
    pub max_entries: Option<u32>,
    pub tcp_syn_secs: Option<u64>,
    pub tcp_established_secs: Option<u64>,
    pub tcp_fin_secs: Option<u64>,
    pub tcp_close_secs: Option<u64>,
    pub udp_secs: Option<u64>,
    pub icmp_secs: Option<u64>,
    pub other_secs: Option<u64>,
    pub nat_time_wait_secs: Option<u64>,
}

impl ConntrackConfig {
    /// The value written to the datapath's configuration slot.
    pub fn ct_config(&self) -> CtConfig {
        let d = CtConfig::DEFAULT;
        let ns = |secs: Option<u64>, default: u64| secs.map_or(default, |s| s * 1_000_000_000);
        CtConfig {
            max_entries: self.max_entries.unwrap_or(d.max_entries),
            flags: d.flags,
            tcp_syn_ns: ns(self.tcp_syn_secs, d.tcp_syn_ns),
            tcp_established_ns: ns(self.tcp_established_secs, d.tcp_established_ns),
            tcp_fin_ns: ns(self.tcp_fin_secs, d.tcp_fin_ns),
            tcp_close_ns: ns(self.tcp_close_secs, d.tcp_close_ns),
            udp_ns: ns(self.udp_secs, d.udp_ns),
            icmp_ns: ns(self.icmp_secs, d.icmp_ns),
            other_ns: ns(self.other_secs, d.other_ns),
            nat_time_wait_ns: ns(self.nat_time_wait_secs, d.nat_time_wait_ns),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.max_entries {
            // The map is sized for the default limit when the programs load; a larger
            // limit would admit flows the map has no room for.
            if n == 0 || n > DEFAULT_MAX_ENTRIES {
                return Err(ConfigError::invalid(
                    "conntrack.max_entries",
                    format!("must be 1 to {DEFAULT_MAX_ENTRIES} (the table's size), got {n}"),
                ));
            }
        }
        let timeouts = [
            ("tcp_syn_secs", self.tcp_syn_secs),
            ("tcp_established_secs", self.tcp_established_secs),
            ("tcp_fin_secs", self.tcp_fin_secs),
            ("tcp_close_secs", self.tcp_close_secs),
            ("udp_secs", self.udp_secs),
            ("icmp_secs", self.icmp_secs),
            ("other_secs", self.other_secs),
            ("nat_time_wait_secs", self.nat_time_wait_secs),
        ];
        for (name, secs) in timeouts {
            // At least a second: the datapath refreshes an entry's timestamp once a second.
            if let Some(s) = secs.filter(|s| !(1..=365 * 24 * 3600).contains(s)) {
                return Err(ConfigError::invalid(
                    format!("conntrack.{name}"),
                    format!("must be 1 to 31536000 seconds, got {s}"),
                ));
            }
        }
        Ok(())
    }
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub pin_dir: PathBuf,
    pub api: ApiAddr,
    pub xdp_mode: XdpModeConfig,
    pub on_exit: OnExit,
    /// Attached at start; an agent attaches its host's NIC and underlay interfaces itself.
    pub interfaces: Vec<InterfaceConfig>,
    pub controller: Option<ControllerConfig>,
    pub agent: Option<AgentConfig>,
    pub conntrack: ConntrackConfig,
}

/// The file as written; `api` stays a string so its error can name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pin_dir: PathBuf,
    #[serde(default = "default_api")]
    api: String,
    #[serde(default)]
    xdp_mode: XdpModeConfig,
    #[serde(default)]
    on_exit: OnExit,
    #[serde(default)]
    interfaces: Vec<InterfaceConfig>,
    #[serde(default)]
    controller: Option<ControllerConfig>,
    #[serde(default)]
    agent: Option<RawAgentConfig>,
    #[serde(default)]
    conntrack: ConntrackConfig,
}

fn default_api() -> String {
    DEFAULT_API.to_string()
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let config =
            Config {
                api: raw
                    .api
                    .parse()
                    .map_err(|reason| ConfigError::invalid("api", reason))?,
                pin_dir: raw.pin_dir,
                xdp_mode: raw.xdp_mode,
                on_exit: raw.on_exit,
                interfaces: raw.interfaces,
                controller: raw.controller,
                agent: raw
                    .agent
                    .map(|a| -> Result<AgentConfig, ConfigError> {
                        Ok(AgentConfig {
                            host: a.host,
                            controller: a.controller.map(|c| c.parse()).transpose().map_err(
                                |reason| ConfigError::invalid("agent.controller", reason),
                            )?,
                            resync_secs: a.resync_secs,
                        })
                    })
                    .transpose()?,
                conntrack: raw.conntrack,
            };
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: paths, emptiness, duplicates, name lengths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.pin_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "pin_dir",
                format!(
                    "must be an absolute path on a bpffs, got {:?}",
                    self.pin_dir.display().to_string()
                ),
            ));
        }
        self.conntrack.validate()?;
        if self.interfaces.is_empty() && self.controller.is_none() && self.agent.is_none() {
            return Err(ConfigError::invalid(
                "interfaces",
                "must list at least one interface (or configure controller: or agent:)",
            ));
        }
        if let Some(c) = &self.controller {
            if !c.store.is_absolute() {
                return Err(ConfigError::invalid(
                    "controller.store",
                    format!(
                        "must be an absolute path, got {:?}",
                        c.store.display().to_string()
                    ),
                ));
            }
        }
        if let Some(a) = &self.agent {
            if a.host.is_empty() {
                return Err(ConfigError::invalid("agent.host", "must not be empty"));
            }
            if a.controller.is_none() && self.controller.is_none() {
                return Err(ConfigError::invalid(
                    "agent.controller",
                    "must name the controller's API (this daemon has no controller: section)",
                ));
            }
            if a.resync_secs == 0 {
                return Err(ConfigError::invalid(
                    "agent.resync_secs",
                    "must be at least 1",
                ));
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let field = format!("interfaces[{i}].name");
            let name = iface.name.as_str();
            if name.is_empty() {
                return Err(ConfigError::invalid(field, "must not be empty"));
            }
            if name.len() > MAX_IFNAME_LEN
                || name.contains(['/', ' ', ':'])
                || name == "."
                || name == ".."
            {
                return Err(ConfigError::invalid(
                    field,
                    format!("{name:?} is not a valid interface name (at most {MAX_IFNAME_LEN} characters, no '/', ':' or spaces)"),
                ));
            }
            if let Some(first) = seen.insert(name, i) {
                return Err(ConfigError::invalid(
                    field,
                    format!("duplicate interface {name:?} (already listed as interfaces[{first}])"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml)
            .expect_err("config should be rejected")
            .to_string()
    }

    const MINIMAL: &str =
        "pin_dir: /run/sluice/bpffs/t\ninterfaces:\n  - { name: veth0, role: vm }\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.pin_dir, PathBuf::from("/run/sluice/bpffs/t"));
        assert_eq!(c.api, ApiAddr::Tcp("127.0.0.1:9464".into()));
        assert_eq!(c.xdp_mode, XdpModeConfig::Auto);
        assert_eq!(c.on_exit, OnExit::Keep);
        assert_eq!(
            c.interfaces,
            vec![InterfaceConfig {
                name: "veth0".into(),
                role: Role::Vm
            }]
        );
    }

    #[test]
    fn conntrack_defaults_and_overrides() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.conntrack.ct_config(), CtConfig::DEFAULT);
        let c = Config::from_yaml(&format!(
            "{MINIMAL}conntrack: {{ max_entries: 1000, udp_secs: 5, tcp_established_secs: 3600, nat_time_wait_secs: 120 }}\n"
        ))
        .unwrap();
        let ct = c.conntrack.ct_config();
        assert_eq!(ct.max_entries, 1000);
        assert_eq!(ct.nat_time_wait_ns, 120_000_000_000);
        assert_eq!(ct.udp_ns, 5_000_000_000);
        assert_eq!(ct.tcp_established_ns, 3_600_000_000_000);
        assert_eq!(ct.tcp_syn_ns, CtConfig::DEFAULT.tcp_syn_ns);
    }

    #[test]
    fn conntrack_limits_are_refused_by_name() {
        for (yaml, field) in [
            ("max_entries: 0", "conntrack.max_entries"),
            ("max_entries: 2000000", "conntrack.max_entries"),
            ("udp_secs: 0", "conntrack.udp_secs"),
            ("nat_time_wait_secs: 0", "conntrack.nat_time_wait_secs"),
        ] {
            let e = err(&format!("{MINIMAL}conntrack: {{ {yaml} }}\n"));
            assert!(e.contains(field), "{yaml}: {e}");
        }
        assert!(err(&format!("{MINIMAL}conntrack: {{ udp: 5 }}\n")).contains("udp"));
    }

    #[test]
    fn full_config_parses_every_field() {
        let c = Config::from_yaml(
            "pin_dir: /run/sluice/bpffs/a\napi: unix:/run/sluice/a/api.sock\nxdp_mode: generic\n\
             on_exit: detach\ninterfaces:\n  - { name: veth-h1, role: vm }\n  - { name: ul0, role: underlay }\n",
        )
        .unwrap();
        assert_eq!(c.api, ApiAddr::Unix("/run/sluice/a/api.sock".into()));
        assert_eq!(XdpMode::from(c.xdp_mode), XdpMode::Skb);
        assert_eq!(c.on_exit, OnExit::Detach);
        assert_eq!(c.interfaces[1].role, Role::Underlay);
    }

    #[test]
    fn xdp_modes_map_to_aya() {
        assert_eq!(XdpMode::from(XdpModeConfig::Auto), XdpMode::default());
        assert_eq!(XdpMode::from(XdpModeConfig::Native), XdpMode::Driver);
        assert_eq!(XdpMode::from(XdpModeConfig::Generic), XdpMode::Skb);
    }

    #[test]
    fn unknown_role_names_the_field_and_the_choices() {
        let e = err("pin_dir: /p\ninterfaces:\n  - { name: veth0, role: router }\n");
        assert!(e.contains("interfaces[0].role"), "{e}");
        assert!(e.contains("router") && e.contains("underlay"), "{e}");
    }

    #[test]
    fn empty_interface_list_is_rejected() {
        let e = err("pin_dir: /p\ninterfaces: []\n");
        assert!(
            e.starts_with("interfaces: must list at least one interface"),
            "{e}"
        );
    }

    #[test]
    fn missing_interfaces_is_rejected_without_controller_or_agent() {
        let e = err("pin_dir: /p\n");
        assert!(e.contains("interfaces"), "{e}");
    }

    #[test]
    fn controller_and_agent_sections_parse() {
        let c = Config::from_yaml(
            "pin_dir: /p\ncontroller: { store: /var/lib/sluice/intent.redb }\n\
             agent: { host: h1 }\n",
        )
        .unwrap();
        assert!(c.interfaces.is_empty());
        assert_eq!(
            c.controller.unwrap().store,
            PathBuf::from("/var/lib/sluice/intent.redb")
        );
        let a = c.agent.unwrap();
        assert_eq!(
            (a.host.as_str(), a.controller, a.resync_secs),
            ("h1", None, 5)
        );

        let c = Config::from_yaml(
            "pin_dir: /p\nagent: { host: h2, controller: \"unix:/run/c.sock\", resync_secs: 2 }\n",
        )
        .unwrap();
        let a = c.agent.unwrap();
        assert_eq!(a.controller, Some(ApiAddr::Unix("/run/c.sock".into())));
        assert_eq!(a.resync_secs, 2);
    }

    #[test]
    fn agent_and_controller_mistakes_name_the_field() {
        let e = err("pin_dir: /p\nagent: { host: h2 }\n");
        assert!(e.starts_with("agent.controller:"), "{e}");
        let e = err("pin_dir: /p\nagent: { host: h2, controller: nonsense }\n");
        assert!(e.starts_with("agent.controller:"), "{e}");
        let e = err("pin_dir: /p\ncontroller: { store: rel.redb }\n");
        assert!(e.starts_with("controller.store:"), "{e}");
        let e = err("pin_dir: /p\ncontroller: { store: /s }\nagent: { host: \"\" }\n");
        assert!(e.starts_with("agent.host:"), "{e}");
        let e = err("pin_dir: /p\ncontroller: { store: /s, stor: /t }\n");
        assert!(e.contains("stor"), "{e}");
    }

    #[test]
    fn duplicate_interface_names_both_entries() {
        let e = err("pin_dir: /p\ninterfaces:\n  - { name: a, role: vm }\n  - { name: b, role: vm }\n  - { name: a, role: underlay }\n");
        assert!(
            e.starts_with("interfaces[2].name: duplicate interface \"a\""),
            "{e}"
        );
        assert!(e.contains("interfaces[0]"), "{e}");
    }

    #[test]
    fn bad_interface_names_are_rejected() {
        for name in ["\"\"", "a-very-long-interface-name", "a/b"] {
            let e = err(&format!(
                "pin_dir: /p\ninterfaces:\n  - {{ name: {name}, role: vm }}\n"
            ));
            assert!(e.starts_with("interfaces[0].name:"), "{name}: {e}");
        }
    }

    #[test]
    fn relative_pin_dir_is_rejected() {
        let e = err("pin_dir: run/sluice\ninterfaces:\n  - { name: a, role: vm }\n");
        assert!(e.starts_with("pin_dir: must be an absolute path"), "{e}");
        assert!(e.contains("run/sluice"), "{e}");
    }

    #[test]
    fn bad_api_addresses_name_the_field() {
        for api in [
            "nonsense",
            "127.0.0.1:99999",
            "unix:",
            "unix:relative.sock",
            ":80",
        ] {
            let e = err(&format!(
                "pin_dir: /p\napi: \"{api}\"\ninterfaces:\n  - {{ name: a, role: vm }}\n"
            ));
            assert!(e.starts_with("api:"), "{api}: {e}");
        }
    }

    #[test]
    fn unknown_fields_and_modes_are_rejected() {
        let e = err("pin_dir: /p\npin_dri: /q\ninterfaces:\n  - { name: a, role: vm }\n");
        assert!(e.contains("pin_dri"), "{e}");
        let e = err("pin_dir: /p\nxdp_mode: turbo\ninterfaces:\n  - { name: a, role: vm }\n");
        assert!(e.contains("xdp_mode") && e.contains("turbo"), "{e}");
        let e = err("pin_dir: /p\non_exit: explode\ninterfaces:\n  - { name: a, role: vm }\n");
        assert!(e.contains("on_exit") && e.contains("explode"), "{e}");
    }

    #[test]
    fn api_addr_round_trips_through_display() {
        for s in ["unix:/run/x.sock", "localhost:9464", "[::1]:80"] {
            assert_eq!(s.parse::<ApiAddr>().unwrap().to_string(), s);
        }
    }
}
